"""Against a real Qdrant server (QDRANT_TEST_URL, e.g. from deploy/qdrant.yaml); skipped without.

QDRANT_TEST_URL=http://localhost:6333 QDRANT_API_KEY=... pytest tests/search/test_server_live.py
"""

import os
import threading
import uuid

import pytest

from embedder.recipe import Built
from ingest.control import IngestSettings
from ingest.plan import read_work
from ingest.runner import ensure_collection, run_ingest
from search.store import open_store, search

URL = os.environ.get("QDRANT_TEST_URL")
pytestmark = pytest.mark.skipif(not URL, reason="needs a Qdrant server: set QDRANT_TEST_URL")


def _ingest_in_background(writer, encoder, root) -> tuple[threading.Thread, threading.Event, list]:
    """A thread (not started) ingesting `root` into `writer`; the event is set when it ends,
    the list collects what it raised."""
    done, errors = threading.Event(), []

    def ingest():
        try:
            settings = IngestSettings(batch_size=4, workers=0, progress=False)
            run_ingest(writer, Built(encoder), read_work(root), settings)
        except Exception as exc:  # surfaced by the test
            errors.append(exc)
        finally:
            done.set()

    return threading.Thread(target=ingest), done, errors


def test_search_works_while_an_ingest_writes(sample_root, encoder):
    name = f"test-{uuid.uuid4().hex[:8]}"
    writer = open_store(url=URL, collection=name)
    ensure_collection(writer, encoder.spec)
    thread, done, errors = _ingest_in_background(writer, encoder, sample_root)
    answers = []
    thread.start()
    reader = open_store(url=URL, collection=name)
    try:
        query = None
        while not done.is_set() or query is None:
            points = next(reader.scroll(1), None)
            if points is not None:
                query = points.vectors
                answers.append(len(search(reader, query, 5)[0]))
        thread.join()
        assert not errors and answers and all(n >= 1 for n in answers)
        assert reader.count() == len(list(sample_root.rglob("*.jpg")))
    finally:
        reader.drop()
        reader.close()
        writer.close()


def test_the_web_app_keeps_serving_while_an_ingest_writes(sample_root, tiny_model, tmp_path):
    """`search serve` on a server collection while another writer fills it."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from embedder import Encoder, save_checkpoint
    from search.web import Settings, create_app

    weights = tmp_path / "w.safetensors"
    spec = save_checkpoint(tiny_model, weights)
    name = f"test-{uuid.uuid4().hex[:8]}"
    writer = open_store(url=URL, collection=name)
    from embedder import load_checkpoint

    encoder = Encoder(load_checkpoint(weights), "cpu", "fp32")
    assert encoder.spec.weights == spec.weights
    ensure_collection(writer, encoder.spec, weights_file=str(weights), root=str(sample_root))
    settings = IngestSettings(workers=0, progress=False)
    run_ingest(writer, Built(encoder), read_work(sample_root, limit=8), settings)
    thread, done, errors = _ingest_in_background(writer, encoder, sample_root)
    settings = Settings(url=URL, collection=name, weights=str(weights))
    photo = io.BytesIO()
    Image.new("RGB", (80, 80), "blue").save(photo, "JPEG")
    try:
        with TestClient(create_app(settings)) as client:
            thread.start()
            statuses = []
            while not done.is_set() or not statuses:
                files = {"file": ("q.jpg", photo.getvalue(), "image/jpeg")}
                statuses.append(client.post("/api/search", files=files).status_code)
                statuses.append(client.get("/api/facets").status_code)
            thread.join()
            assert not errors and set(statuses) == {200}
    finally:
        writer.drop()
        writer.close()
