"""Training at tiny scale: the loss falls, retrieval improves, a resumed run continues exactly."""

import csv
import json

import pytest

from embedder import Encoder, build_model, load_checkpoint
from embedder.evaluate import accuracy, evaluate, exact_knn, hits_at
from embedder.train import TrainConfig, fit

TINY = dict(
    backbone="test_resnet",
    img_size=64,
    pretrained="none",
    batch_size=16,
    lr=1e-3,
    train_stages="all",
    workers=0,
    ks=(1, 5, 10),
)


@pytest.fixture(scope="module")
def bigger_sample(tmp_path_factory):
    from ingest.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("train") / "s", items=60, seed=11)


def test_hits_at_matches_a_slow_loop():
    import numpy as np

    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(30, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:10] + rng.normal(scale=0.5, size=(10, 8)).astype(np.float32)
    g_items, q_items = [f"i{n % 12}" for n in range(30)], [f"i{n}" for n in range(10)]
    neighbours = exact_knn(gallery)(queries, 5)
    hits = hits_at(neighbours, q_items, g_items, (1, 5))
    for q in range(10):
        order = np.argsort(-(gallery @ queries[q]))
        for col, k in enumerate((1, 5)):
            assert hits[q, col] == any(g_items[j] == q_items[q] for j in order[:k])


def test_training_lowers_loss_and_raises_recall(bigger_sample, tmp_path):
    before, _ = evaluate(
        Encoder(build_model("test_resnet", img_size=64, pretrained="none"), "cpu"),
        bigger_sample,
        split="test",
        ks=(1, 5, 10),
    )
    history = fit(
        TrainConfig(root=str(bigger_sample), out=str(tmp_path / "run"), epochs=3, **TINY),
        progress=False,
    )
    assert history.rows[-1]["loss"] < history.rows[0]["loss"]
    after, _ = evaluate(
        Encoder(load_checkpoint(tmp_path / "run" / "best.safetensors"), "cpu"),
        bigger_sample,
        split="test",
        ks=(1, 5, 10),
    )
    assert after.overall[1] > before.overall[1] and after.overall[5] >= before.overall[5]
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and "val_top5" in rows[0]
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 0


def test_resumed_run_continues_from_the_saved_epoch(bigger_sample, tmp_path):
    straight = fit(
        TrainConfig(
            root=str(bigger_sample), out=str(tmp_path / "a"), epochs=2, mode="batch-hard", **TINY
        ),
        progress=False,
    )
    fit(
        TrainConfig(
            root=str(bigger_sample), out=str(tmp_path / "b"), epochs=1, mode="batch-hard", **TINY
        ),
        progress=False,
    )
    again = TrainConfig(
        root=str(bigger_sample), out=str(tmp_path / "b"), epochs=2, mode="batch-hard", **TINY
    )
    with pytest.raises(ValueError, match="--resume"):
        fit(again, progress=False)
    again.resume = True
    resumed = fit(
        again,
        progress=False,
    )
    assert [r["epoch"] for r in resumed.rows] == [1, 2]
    state = json.loads((tmp_path / "b" / "train_state.json").read_text())
    assert state["epoch"] == 2 and state["last"] == "epoch_002.safetensors"
    for key in ("loss", "val_top1", "val_top5"):
        assert resumed.rows[1][key] == pytest.approx(straight.rows[1][key], rel=1e-4)


def test_accuracy_reports_per_category():
    import numpy as np
    import pandas as pd

    queries = pd.DataFrame({"item_id": ["a", "b"], "category": ["TOPS", "DRESSES"]})
    gallery = pd.DataFrame({"item_id": ["b", "a"], "category": ["DRESSES", "TOPS"]})
    report = accuracy(np.array([[1, 0], [1, 0]]), queries, gallery, (1, 2), "test")
    assert report.overall == {1: 0.5, 2: 1.0}
    assert report.per_category["DRESSES"][1] == 0.0 and report.per_category["TOPS"][1] == 1.0


def test_bad_training_settings_fail_early(bigger_sample, tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        fit(
            TrainConfig(
                root=str(bigger_sample),
                out=str(tmp_path),
                mode="semihard",
                batch_size=15,
                per_item=2,
            ),
            progress=False,
        )
    with pytest.raises(ValueError, match="train-stages"):
        fit(
            TrainConfig(
                root=str(bigger_sample),
                out=str(tmp_path),
                epochs=1,
                **{**TINY, "train_stages": "layer9"},
            ),
            progress=False,
        )


def test_projection_is_built_into_the_checkpoint(
    bigger_sample, tmp_path, ingest_into, search_files
):
    import numpy as np

    from embedder import save_checkpoint
    from embedder.projection import fit_projection, with_projection

    model = build_model("test_resnet", img_size=64, pretrained="none")
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 512)).astype(np.float32) * np.linspace(3, 0.1, 512)
    mean, matrix = fit_projection(data, 16, whiten=True)
    projected = (data - mean) @ matrix
    np.testing.assert_allclose(projected.std(axis=0, ddof=1), 1.0, rtol=1e-3)  # whitened
    np.testing.assert_allclose(np.corrcoef(projected.T), np.eye(16), atol=1e-4)
    small = with_projection(model, mean, matrix, whiten=True)
    assert small.spec.out_dim == 16 and small.spec.identity()["dim"] == 16
    save_checkpoint(small, tmp_path / "p.safetensors")
    loaded = load_checkpoint(tmp_path / "p.safetensors")
    files = sorted(str(p) for p in bigger_sample.rglob("*.jpg"))[:5]
    from embedder import embed_files

    a = embed_files(Encoder(small, "cpu", "fp32"), files)
    b = embed_files(Encoder(loaded, "cpu", "fp32"), files)
    assert a.shape == (5, 16)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="projection size"):
        fit_projection(data, 1000)
    from ingest.runner import ensure_collection
    from search.store import open_store

    with open_store(store_dir=str(tmp_path / "db"), collection="c") as store:
        encoder = Encoder(loaded, "cpu", "fp32")
        ensure_collection(store, loaded.spec)
        ingest_into(store, encoder, bigger_sample, limit=12, workers=0)
        assert store.metadata()["dim"] == 16 and store.count() == 12
        hits = search_files(store, encoder, [files[0]], top=3)[0]
        assert files[0].endswith(hits[0].payload["path"])
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)  # whitening magnifies fp32 noise


def test_frozen_stages_keep_their_batchnorm_statistics(tiny_model):
    import copy

    import torch

    from embedder.train import freeze, train_mode

    model = copy.deepcopy(tiny_model)
    params = freeze(model, "layer4")
    train_mode(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    optimizer = torch.optim.SGD(params, lr=0.1)
    torch.manual_seed(0)
    out = model(torch.randn(8, 3, 64, 64) * 3 + 1)  # statistics unlike the initial ones
    out.sum().backward()
    optimizer.step()
    after = model.state_dict()
    frozen = [k for k in before if not k.startswith("backbone.layer4.")]
    trained = [k for k in before if k.startswith("backbone.layer4.")]
    assert frozen and trained
    for key in frozen:  # bit-identical
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    assert all(m.training for m in model.backbone.layer4.modules())


def test_a_garment_in_two_folders_is_one_garment_for_training(sample_root, split_garment):
    """Its consumer anchors' negatives come from the anchor's own subcategory and are never
    the garment itself; mined batches give all its photos one label."""
    from embedder.catalog import read_catalog
    from embedder.spec import ModelSpec
    from embedder.train import ItemImages, TripletSet, _train_pairs

    item, consumer_folder, shop_folder = split_garment
    catalog = read_catalog(sample_root)
    pairs = _train_pairs(sample_root, catalog)  # the sample puts this garment in train
    data = TripletSet(sample_root, pairs, catalog, ModelSpec(img_size=32), seed=0)
    rows = catalog.set_index("path")
    mine = [i for i, p in enumerate(data.pairs.itertuples()) if p.item_id == item]
    assert mine
    for epoch in range(3):
        data.epoch = epoch
        for i in mine:
            consumer, shop = data.pairs.loc[i, ["consumer", "shop"]]
            assert rows.loc[consumer, "subcategory"] == consumer_folder.parent.name
            assert rows.loc[shop, "subcategory"] == shop_folder.parent.name
            negative = data.negative(i)
            assert rows.loc[negative, "subcategory"] == consumer_folder.parent.name
            assert rows.loc[negative, "item_id"] != item
    train = catalog[catalog["split"] == "train"]
    images = ItemImages(sample_root, train, ModelSpec(img_size=32))
    labels = {
        images.labels[i] for i, row in enumerate(images.table.itertuples()) if row.item_id == item
    }
    folders = set(images.table.loc[images.table.item_id == item, "subcategory"])
    assert len(labels) == 1 and folders == {consumer_folder.parent.name, shop_folder.parent.name}


def test_a_garment_in_two_folders_is_one_garment_for_evaluation(sample_root, split_garment):
    """A consumer query hits at k when a shop photo of its item, in whatever folder, is in
    its first k."""
    import numpy as np

    from embedder.evaluate import split_sets

    item, _, shop_folder = split_garment
    queries, gallery = split_sets(sample_root, "train")
    q = int(np.flatnonzero(queries["item_id"] == item)[0])
    own = np.flatnonzero(
        gallery["path"].str.startswith(
            f"img/{shop_folder.parent.parent.name}/{shop_folder.parent.name}/{item}/"
        )
    )
    other = int(np.flatnonzero(gallery["item_id"] != item)[0])
    neighbours = np.full((len(queries), 2), other)
    neighbours[q] = [other, own[0]]
    report = accuracy(neighbours, queries, gallery, (1, 2), "train")
    hits = hits_at(neighbours, queries["item_id"].tolist(), gallery["item_id"].tolist(), (1, 2))
    assert not hits[q, 0] and hits[q, 1]
    assert report.overall[2] >= 1 / len(queries)
