"""Congruence: embedded and server stores hold and answer the same, and match exact search."""

import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedder import read_catalog
from ingest.cli import app as ingest_app
from ingest.runner import ensure_collection
from search.store import SearchParams, StoreError, open_store, search, search_groups


def _stores(tmp_path):
    return {
        "embedded": open_store(store_dir=str(tmp_path / "edge"), collection="c"),
        "server": open_store(url=f"file:{tmp_path / 'local'}", collection="c"),
    }


@pytest.fixture()
def filled(sample_root, encoder, tmp_path, ingest_into):
    stores = _stores(tmp_path)
    for store in stores.values():
        ensure_collection(store, encoder.spec, root=str(sample_root))
        ingest_into(store, encoder, sample_root, batch_size=16, workers=0)
    yield stores
    for store in stores.values():
        store.close()


def test_both_stores_hold_the_same_points(filled, sample_root, store_contents):
    edge, server = (store_contents(s) for s in filled.values())
    assert len(edge) == len(read_catalog(sample_root)) == filled["server"].count()
    assert edge.keys() == server.keys()
    for pid, (payload, vector) in edge.items():
        assert server[pid][0] == payload
        np.testing.assert_allclose(server[pid][1], vector, atol=1e-6)
    assert filled["embedded"].metadata() == filled["server"].metadata()


def test_both_stores_answer_like_exact_search(filled, encoder, store_contents):
    everything = store_contents(filled["embedded"])
    ids = list(everything)
    matrix = np.stack([everything[i][1] for i in ids])
    queries = matrix[:5] * 0.9 + matrix[5:10] * 0.1
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ matrix.T
    best = -np.sort(-scores, axis=1)[:, :5]
    for store in filled.values():
        for row, hits in enumerate(search(store, queries, 5)):
            # the same neighbours as brute force (ids may swap only within float ties)
            exact = [scores[row, ids.index(h.id)] for h in hits]
            np.testing.assert_allclose(exact, best[row], atol=1e-5, err_msg=store.kind)
            np.testing.assert_allclose([h.score for h in hits], best[row], atol=1e-4)


def test_category_filter_returns_only_that_category(filled):
    query = next(filled["embedded"].scroll(1)).vectors
    for store in filled.values():
        hits = search(store, query, 50, {"category": "TOPS"})[0]
        assert hits and {h.payload["category"] for h in hits} == {"TOPS"}
        assert len(hits) == store.count({"category": "TOPS"})
        both = search(store, query, 50, {"category": "TOPS", "source": "shop"})[0]
        assert both and all(h.payload["source"] == "shop" for h in both)


def test_embedded_collection_cannot_be_opened_twice(filled, tmp_path):
    other = open_store(store_dir=str(tmp_path / "edge"), collection="c")
    with pytest.raises(StoreError, match="in use by another process"):
        other.count()


def test_missing_collection_is_a_clear_error(tmp_path):
    for store in _stores(tmp_path).values():
        with pytest.raises(StoreError, match="does not exist"):
            store.require_metadata()


def test_store_options_conflict(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        open_store(store_dir=str(tmp_path), url=":memory:")


def _brute_groups(everything, query, top, size, filters=None, exclude=()):
    """Grouped answer by a slow, obvious loop: every point scored, best photo ranks its item."""
    scored = sorted(
        (
            (float(vec @ query), pid, payload)
            for pid, (payload, vec) in everything.items()
            if pid not in exclude and all(payload.get(k) == v for k, v in (filters or {}).items())
        ),
        reverse=True,
    )
    groups: dict[str, list[str]] = {}
    for _, pid, payload in scored:
        groups.setdefault(payload["item_id"], []).append(pid)
    return [(item, pids[:size]) for item, pids in list(groups.items())[:top]]


@pytest.mark.parametrize("filters", [None, {"category": "TOPS"}, {"source": "shop"}])
def test_both_stores_group_by_garment_like_a_slow_loop(filled, filters, store_contents):
    everything = store_contents(filled["embedded"])
    ids = list(everything)
    queries = np.stack([everything[i][1] for i in ids[:4]])
    exclude = [ids[0]]
    for store in filled.values():
        answers = search_groups(store, queries, 5, filters, exclude=exclude, group_size=3)
        for row, groups in enumerate(answers):
            expected = _brute_groups(everything, queries[row], 5, 3, filters, exclude)
            assert [g.id for g in groups] == [item for item, _ in expected], store.kind
            for group, (_, pids) in zip(groups, expected, strict=True):
                assert {h.id for h in group.hits} == set(pids), store.kind
                assert [h.score for h in group.hits] == sorted(
                    (h.score for h in group.hits), reverse=True
                )
                assert all(h.payload["item_id"] == group.id for h in group.hits)
                assert ids[0] not in {h.id for h in group.hits}


def test_both_stores_leave_out_excluded_points_and_read_vectors(filled, store_contents):
    everything = store_contents(filled["embedded"])
    first = next(iter(everything))
    for store in filled.values():
        vec = store.vectors([first])[first]
        np.testing.assert_allclose(vec, everything[first][1], atol=1e-6)
        hits = search(store, vec[None], 5, exclude=[first])[0]
        assert len(hits) == 5 and first not in {h.id for h in hits}
        filtered = search(store, vec[None], 5, {"category": "TOPS"}, exclude=[first])[0]
        assert first not in {h.id for h in filtered}


def test_both_stores_scroll_and_count_values_under_a_filter(filled):
    for store in filled.values():
        item = next(store.scroll(1, vectors=False)).payloads[0]["item_id"]
        photos = [p for pts in store.scroll(8, False, {"item_id": item}) for p in pts.payloads]
        assert photos and {p["item_id"] for p in photos} == {item}
        assert len(photos) == store.count({"item_id": item})
        subs = store.facet("subcategory", filters={"category": "TOPS"})
        assert sum(subs.values()) == store.count({"category": "TOPS"})


def test_grouped_search_widens_until_every_garment_is_seen(filled, store_contents):
    everything = store_contents(filled["embedded"])
    query = next(iter(everything.values()))[1][None]
    items = {payload["item_id"] for payload, _ in everything.values()}
    for store in filled.values():
        (groups,) = search_groups(store, query, 100, group_size=20)
        expected = _brute_groups(everything, query[0], 100, 20)
        assert len(groups) == len(items) == len(expected), store.kind
        assert [g.id for g in groups] == [item for item, _ in expected]
        for group, (_, photos) in zip(groups, expected, strict=True):
            assert {h.id for h in group.hits} == set(photos), store.kind


def test_grouped_search_widens_its_candidates_for_garments_with_many_photos(tmp_path):
    """10 garments of 10 photos each, the query nearest to every photo of the first ones: the
    first 12 candidates hold only two garments, so the store must widen to find three."""
    from search.store import IndexSettings, Points

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(10, 16))
    vectors = np.repeat(centres, 10, axis=0) + 0.05 * rng.normal(size=(100, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [str(uuid.uuid5(uuid.NAMESPACE_OID, str(n))) for n in range(100)]
    payloads = [{"item_id": f"id_{n // 10:02d}", "path": f"p{n}.jpg"} for n in range(100)]
    query = centres[0] / np.linalg.norm(centres[0])
    for store in _stores(tmp_path).values():
        with store:
            store.create(16, {}, IndexSettings())
            store.upsert(Points(ids, vectors, payloads))
            everything = {i: (p, v) for i, p, v in zip(ids, payloads, vectors, strict=True)}
            (groups,) = search_groups(
                store, query[None], 3, params=SearchParams(exact=True), group_size=10
            )
            expected = _brute_groups(everything, query, 3, 10)
            assert [g.id for g in groups] == [item for item, _ in expected], store.kind
            for group, (_, photos) in zip(groups, expected, strict=True):
                assert len(group.hits) == 10 and {h.id for h in group.hits} == set(photos)


runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


def test_an_explicit_store_wins_over_qdrant_url(
    db, sample_root, monkeypatch, tmp_path, one_line_error, search_cli, query_photo
):
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")
    assert search_cli(db, query_photo).exit_code == 0
    target = f"file:{tmp_path / 'server'}"
    published = runner.invoke(ingest_app, ["publish", "--to", target, "--store", str(db)])
    assert published.exit_code == 0, published.output
    empty = runner.invoke(ingest_app, ["publish", "--to", "", "--store", str(db)])
    one_line_error(empty, "empty")
    assert not Path("qdrant_data").exists()


def test_grouping_joins_a_garment_in_two_folders_in_both_stores(filled, split_garment):
    item, consumer_folder, shop_folder = split_garment
    answers = {}
    for kind, store in filled.items():
        vec = next(store.scroll(1024, filters={"item_id": item})).vectors[:1]
        (groups,) = search_groups(store, vec, 100, group_size=10)
        assert len({g.id for g in groups}) == len(groups), kind
        mine = next(g for g in groups if g.id == item)
        folders = {h.payload["subcategory"] for h in mine.hits}
        assert folders == {consumer_folder.parent.name, shop_folder.parent.name}, kind
        answers[kind] = sorted(h.id for h in mine.hits)
    assert answers["embedded"] == answers["server"]


def _recommend_slow(contents, positive, negative, exclude):
    """Qdrant's best-score recommendation, the obvious way: a point scores its best cosine to a
    positive when that beats its best cosine to a negative, else minus its best negative one."""
    out = []
    for pid, (_payload, vec) in contents.items():
        if pid in exclude:
            continue
        best_pos = max(float(vec @ p) for p in positive)
        best_neg = max((float(vec @ n) for n in negative), default=-np.inf)
        out.append((best_pos if best_pos > best_neg else -best_neg, pid))
    return [pid for _, pid in sorted(out, reverse=True)]


def test_both_stores_recommend_alike_and_as_the_rule_says(filled, store_contents):
    from search.store import Exclude, Recommend, SearchParams

    contents = store_contents(filled["embedded"])
    ids = sorted(contents)
    positive = np.stack([contents[i][1] for i in ids[:2]])
    negative = np.stack([contents[ids[2]][1]])
    query = Recommend(positive, negative)
    exclude = Exclude(ids=tuple(ids[:3]))
    expected = _recommend_slow(contents, positive, negative, set(ids[:3]))[:10]
    answers = {}
    for kind, store in filled.items():
        hits = search(store, query, 10, params=SearchParams(exact=True), exclude=exclude)[0]
        answers[kind] = [h.id for h in hits]
        assert answers[kind] == expected, kind
        approximate = search(store, query, 10, exclude=exclude)[0]
        assert [h.id for h in approximate][:5] == expected[:5], kind
    disliked = contents[ids[2]][0]["item_id"]
    for kind, store in filled.items():
        hits = search(store, query, 20, {"category": "TOPS"}, exclude=Exclude(items=(disliked,)))[0]
        assert hits and all(h.payload["category"] == "TOPS" for h in hits), kind
        assert disliked not in {h.payload["item_id"] for h in hits}, kind
        (groups,) = search_groups(store, query, 5, exclude=Exclude(items=(disliked,)))
        assert disliked not in {g.id for g in groups}, kind


def test_a_bulk_load_indexes_its_segments_as_they_fill(tmp_path):
    """Through ingest's writer, an embedded collection indexes each segment of
    `segment_points` as it fills, so the step after the last batch indexes one segment; it
    answers as a collection indexed once at the end does. A server indexes by itself."""
    from ingest.writer import Writer
    from search.store import IndexSettings, Points

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(400, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(uuid.uuid5(uuid.NAMESPACE_OID, str(n))) for n in range(400)]
    payloads = [{"item_id": f"id_{n:03d}", "category": "TOPS"} for n in range(400)]
    answers, segments = {}, {}
    for every in (0, 100):
        with open_store(store_dir=str(tmp_path / f"every-{every}"), collection="c") as store:
            store.create(32, {}, IndexSettings(segment_points=every))
            assert store.segment_points() == every
            writer = Writer(store)
            for s in range(0, 400, 25):
                writer(Points(ids[s : s + 25], vectors[s : s + 25], payloads[s : s + 25]))
            writer.close()
            assert (writer.indexing > 0) == (every > 0)
            assert ("segments" in writer.stages()) == (every > 0)
            store.finish()
            segments[every] = store._open().info().segments_count
            answers[every] = [[h.id for h in hits] for hits in search(store, vectors[:20], 10)]
    assert segments[100] >= 4 > segments[0]
    assert answers[100] == answers[0]
    assert [a[0] for a in answers[100]] == ids[:20]  # each vector finds itself first
    with open_store(url=f"file:{tmp_path / 'local'}", collection="c") as server:
        server.create(32, {}, IndexSettings(segment_points=100))
        assert server.segment_points() == 0
