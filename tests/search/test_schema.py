"""The one payload schema: the collection's indexes, ingest's payloads, the service's filters and
the web API's photo fields all come from search.store.schema."""

import pytest

from search.service import Query
from search.store import open_store
from search.store.schema import CHANGE, FIELDS, FILTERS, INDEXED, LABELS, SHOWN


def test_the_schema_names_each_field_once():
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    assert set(FILTERS) <= set(INDEXED) <= set(LABELS)  # every filter is an indexed label
    assert set(CHANGE) <= set(names) and not set(CHANGE) & set(SHOWN)


def test_indexes_and_payloads_of_a_collection_come_from_the_schema(db):
    with open_store(store_dir=str(db)) as store:
        assert store.indexes() == sorted(INDEXED) == sorted(f.name for f in FIELDS if f.indexed)
        payloads = [p for points in store.scroll(64, vectors=False) for p in points.payloads]
    assert payloads
    for payload in payloads:
        assert set(LABELS) | set(CHANGE) <= set(payload) <= {f.name for f in FIELDS}
        assert all(isinstance(payload[name], str) for name in LABELS)


def test_the_service_filters_are_the_schema_filters():
    for name in FILTERS:
        assert Query(filters={name: "x"}).filters == {name: "x"}
    for name in set(INDEXED) - set(FILTERS):
        with pytest.raises(ValueError, match="unknown filter"):
            Query(filters={name: "x"})
    assert Query.make(20, category="TOPS", source=None).filters == {"category": "TOPS"}


def test_the_web_fields_are_the_schema_fields():
    from search.web import create_app
    from search.web.models import Photo

    assert set(Photo.model_fields) == {"id", "score", "image_url", "thumb_url", *SHOWN}
    for name in SHOWN:
        assert Photo.model_fields[name].description == next(
            f.description for f in FIELDS if f.name == name
        )
    spec = create_app().openapi()
    form = spec["components"]["schemas"]["Body_search_api_search_post"]["properties"]
    similar = spec["paths"]["/api/points/{point_id}/similar"]["get"]["parameters"]
    assert set(FILTERS) <= set(form) and set(FILTERS) <= {p["name"] for p in similar}


ADD_A_FIELD = r"""
import json, sys
from search.store import schema

schema.FIELDS += (
    schema.PayloadField(
        "colour", str, "The garment's main colour.", label=True, indexed=True, filter=True,
        choices=("red", "blue"), column=True,
    ),
)
schema.derive()
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from search.cli import app
from search.web import Settings, create_app

shown = CliRunner().invoke(app, ["--help"], terminal_width=200).output
with TestClient(create_app(Settings(store=sys.argv[1], allowed_hosts=("testserver",)))) as web:
    info, spec = web.get("/api/info").json(), web.get("/openapi.json").json()
print(json.dumps({"help": shown, "info": info, "openapi": spec}))
"""


def test_a_filter_field_added_to_the_schema_reaches_the_cli_the_api_and_the_page(ingested):
    """Adding a filter field touches the schema (and the catalog column it is copied from),
    nothing else: the CLI option, the API's parameters and /api/info follow."""
    import json
    import subprocess
    import sys

    db, _ = ingested
    run = subprocess.run(
        [sys.executable, "-c", ADD_A_FIELD, str(db)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert "--colour" in found["help"] and "main colour" in found["help"]
    assert {"name": "colour", "description": "The garment's main colour.",
            "choices": ["red", "blue"]} in found["info"]["filters"]  # fmt: skip
    names = [f["name"] for f in found["info"]["filters"]]
    assert names == [*FILTERS, "colour"]
    paths, schemas = found["openapi"]["paths"], found["openapi"]["components"]["schemas"]
    similar = paths["/api/points/{point_id}/similar"]["get"]["parameters"]
    assert "colour" in {p["name"] for p in similar}
    form = paths["/api/search"]["post"]["requestBody"]["content"]["multipart/form-data"]
    form_schema = schemas[form["schema"]["$ref"].rsplit("/", 1)[1]]
    assert "colour" in form_schema["properties"]
    assert "colour" in schemas["RecommendIn"]["properties"]


def test_without_an_added_field_the_api_lists_the_schema_filters(ingested):
    from fastapi.testclient import TestClient

    from search.web import Settings, create_app

    db, _ = ingested
    with TestClient(create_app(Settings(store=str(db), allowed_hosts=("testserver",)))) as web:
        info, spec = web.get("/api/info").json(), web.get("/openapi.json").json()
    assert [f["name"] for f in info["filters"]] == list(FILTERS)
    assert "colour" not in spec["components"]["schemas"]["RecommendIn"]["properties"]
