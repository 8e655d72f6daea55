"""Against a real Qdrant server (QDRANT_TEST_URL, e.g. from deploy/qdrant.yaml); skipped without.

QDRANT_TEST_URL=http://localhost:6333 QDRANT_API_KEY=... pytest tests/search/test_server_live.py
"""

import os
import threading
import uuid

import pytest

from ingest.runner import ensure_collection, run_ingest
from search.stores import open_store

URL = os.environ.get("QDRANT_TEST_URL")
pytestmark = pytest.mark.skipif(not URL, reason="needs a Qdrant server: set QDRANT_TEST_URL")


def test_search_works_while_an_ingest_writes(sample_root, encoder):
    name = f"test-{uuid.uuid4().hex[:8]}"
    writer = open_store(url=URL, collection=name)
    ensure_collection(writer, encoder.spec)
    done, errors, answers = threading.Event(), [], []

    def ingest():
        try:
            run_ingest(writer, encoder, sample_root, batch_size=4, workers=0, progress=False)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=ingest)
    thread.start()
    reader = open_store(url=URL, collection=name)
    try:
        query = None
        while not done.is_set() or query is None:
            points = next(reader.scroll(1), None)
            if points is not None:
                query = points.vectors
                answers.append(len(reader.search(query, 5)[0]))
        thread.join()
        assert not errors and answers and all(n >= 1 for n in answers)
        assert reader.count() == len(list(sample_root.rglob("*.jpg")))
    finally:
        reader.drop()
        reader.close()
        writer.close()
