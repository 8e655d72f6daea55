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
