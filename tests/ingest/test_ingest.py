import numpy as np
import pytest

from embedder import Encoder, build_model, embed_files, read_catalog
from embedder.recipe import Built, ModelRecipe
from ingest.control import IngestSettings
from ingest.plan import read_work
from ingest.runner import ensure_collection, run_ingest
from search.store import StoreError, open_store


@pytest.fixture()
def store(tmp_path):
    with open_store(store_dir=str(tmp_path / "db"), collection="c") as db:
        yield db


def _ingest(store, encoder, root, limit=None, shard=None):
    ensure_collection(store, encoder.spec, root=str(root))
    settings = IngestSettings(batch_size=16, workers=1, progress=False)
    work = read_work(root, limit=limit, shard=shard)
    return run_ingest(store, Built(encoder), work, settings)


def test_second_run_embeds_nothing_and_changes_no_count(store, encoder, sample_root):
    first = _ingest(store, encoder, sample_root)
    assert first.embedded == first.seen == len(read_catalog(sample_root)) and not first.failures
    before = {p for points in store.scroll() for p in points.ids}
    second = _ingest(store, encoder, sample_root)
    assert (second.embedded, second.present, second.failed) == (0, first.seen, 0)
    assert {p for points in store.scroll() for p in points.ids} == before
    assert store.count() == first.seen


def test_interrupted_run_is_completed_by_the_next(store, encoder, sample_root):
    part = _ingest(store, encoder, sample_root, limit=10)
    assert store.count() == part.embedded == 10
    rest = _ingest(store, encoder, sample_root)
    assert rest.present == 10 and rest.embedded == rest.seen - 10
    assert store.count() == rest.seen


def test_a_dataset_image_finds_itself_first(store, encoder, sample_root, tmp_path, search_files):
    _ingest(store, encoder, sample_root)
    table = read_catalog(sample_root)
    shop = table[table.source == "shop"].iloc[3]
    consumer = table[table.source == "consumer"].iloc[5]  # cropped to its bbox at ingest
    queries = [sample_root / shop.path, sample_root / consumer.path]
    for row, hits in zip(
        [shop, consumer], search_files(store, encoder, queries, top=5), strict=True
    ):
        assert hits[0].payload["path"] == row.path
        assert hits[0].score == pytest.approx(1.0, abs=0.01)
    copy = tmp_path / "outside.jpg"  # the same photo outside the dataset is used whole
    copy.write_bytes((sample_root / consumer.path).read_bytes())
    whole = search_files(store, encoder, [copy], top=5)[0]
    assert whole[0].score < hits[0].score
    boxed = search_files(
        store, encoder, [copy], top=5, boxes=[(consumer.x1, consumer.y1, consumer.x2, consumer.y2)]
    )[0]
    assert boxed[0].payload["path"] == consumer.path


def test_collection_records_the_model_and_refuses_another(store, encoder, sample_root):
    _ingest(store, encoder, sample_root, limit=4)
    rebuilt = ModelRecipe.for_collection(store.metadata()).model()
    assert rebuilt.spec.identity() == encoder.spec.identity()
    paths = [str(sample_root / p) for p in read_catalog(sample_root).path[:3]]
    fp32 = [embed_files(Encoder(m, "cpu", "fp32"), paths) for m in (rebuilt, encoder.model)]
    assert (fp32[0] == fp32[1]).all()
    other = build_model("test_resnet", img_size=64, dim=128, pretrained="none")
    with pytest.raises(StoreError, match="another model"):
        ensure_collection(store, other.spec)
    ensure_collection(store, other.spec, recreate=True)
    assert store.count() == 0 and store.metadata()["model"]["dim"] == 128


def test_shards_one_after_another_equal_one_full_ingest(
    tiny_model, sample_root, tmp_path, store_contents
):
    encoder = Encoder(tiny_model, "cpu", "fp32")  # bf16 results vary with batch composition

    def contents(store):  # vectors as bytes: bit-identical
        return {pid: (p, vec.tobytes()) for pid, (p, vec) in store_contents(store).items()}

    with open_store(url=f"file:{tmp_path / 'full'}", collection="c") as full:
        _ingest(full, encoder, sample_root)
        expected = contents(full)
    with open_store(url=f"file:{tmp_path / 'parts'}", collection="c") as parts:
        shares = [_ingest(parts, encoder, sample_root, shard=(k, 3)).embedded for k in (1, 2, 3)]
        assert all(shares) and sum(shares) == len(expected)
        got = contents(parts)
    assert got.keys() == expected.keys()
    for pid, (payload, vec) in expected.items():
        assert got[pid][0] == payload
        np.testing.assert_allclose(
            np.frombuffer(got[pid][1], np.float32), np.frombuffer(vec, np.float32), atol=1e-5
        )
