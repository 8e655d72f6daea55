"""Congruence: embedded and server stores hold and answer the same, and match exact search."""

import numpy as np
import pytest

from embedder import read_catalog
from ingest.runner import ensure_collection, run_ingest
from search.store import StoreError, open_store


def _stores(tmp_path):
    return {
        "embedded": open_store(store_dir=str(tmp_path / "edge"), collection="c"),
        "server": open_store(url=f"file:{tmp_path / 'local'}", collection="c"),
    }


@pytest.fixture()
def filled(sample_root, encoder, tmp_path):
    stores = _stores(tmp_path)
    for store in stores.values():
        ensure_collection(store, encoder.spec, root=str(sample_root))
        run_ingest(store, encoder, sample_root, batch_size=16, workers=0, progress=False)
    yield stores
    for store in stores.values():
        store.close()


def _everything(store):
    return {
        pid: (payload, vec)
        for points in store.scroll(50)
        for pid, payload, vec in zip(points.ids, points.payloads, points.vectors, strict=True)
    }


def test_both_stores_hold_the_same_points(filled, sample_root):
    edge, server = (_everything(s) for s in filled.values())
    assert len(edge) == len(read_catalog(sample_root)) == filled["server"].count()
    assert edge.keys() == server.keys()
    for pid, (payload, vector) in edge.items():
        assert server[pid][0] == payload
        np.testing.assert_allclose(server[pid][1], vector, atol=1e-6)
    assert filled["embedded"].metadata() == filled["server"].metadata()


def test_both_stores_answer_like_exact_search(filled, encoder):
    everything = _everything(filled["embedded"])
    ids = list(everything)
    matrix = np.stack([everything[i][1] for i in ids])
    queries = matrix[:5] * 0.9 + matrix[5:10] * 0.1
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ matrix.T
    best = -np.sort(-scores, axis=1)[:, :5]
    for store in filled.values():
        for row, hits in enumerate(store.search(queries, 5)):
            # the same neighbours as brute force (ids may swap only within float ties)
            exact = [scores[row, ids.index(h.id)] for h in hits]
            np.testing.assert_allclose(exact, best[row], atol=1e-5, err_msg=store.kind)
            np.testing.assert_allclose([h.score for h in hits], best[row], atol=1e-4)


def test_category_filter_returns_only_that_category(filled):
    query = next(filled["embedded"].scroll(1)).vectors
    for store in filled.values():
        hits = store.search(query, 50, {"category": "TOPS"})[0]
        assert hits and {h.payload["category"] for h in hits} == {"TOPS"}
        assert len(hits) == store.count({"category": "TOPS"})
        both = store.search(query, 50, {"category": "TOPS", "source": "shop"})[0]
        assert both and all(h.payload["source"] == "shop" for h in both)


def test_embedded_collection_cannot_be_opened_twice(filled, tmp_path):
    other = open_store(store_dir=str(tmp_path / "edge"), collection="c")
    with pytest.raises(StoreError, match="in use by another process"):
        other.count()


def test_missing_collection_is_a_clear_error(tmp_path):
    for store in _stores(tmp_path).values():
        with pytest.raises(StoreError, match="does not exist"):
            store.require()


def test_store_options_conflict(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        open_store(store_dir=str(tmp_path), url=":memory:")
