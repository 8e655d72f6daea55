"""The garment detector: its graph decodes as torchvision's FCOS does, its export finds what
torch finds, `embedder train-detector` learns, validates, plots and resumes, and a checkpoint
of one kind of model is refused where the other is wanted, in one line."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from embedder.boxes import box_iou, garments, letterbox
from embedder.catalog import read_catalog
from embedder.checkpoint import read_metadata, save_checkpoint
from embedder.cli import app
from embedder.detector import build_detector, load_detector
from embedder.errors import WeightsError
from embedder.recipe import DetectorRecipe
from embedder.spec import DetectorSpec, ModelSpec
from embedder.transforms import load_image

SMALL = dict(img_size=128, head="light", pretrained="none")


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    from ingest.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("street") / "s", items=24, seed=4, style="street")


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "detector.safetensors"
    save_checkpoint(build_detector("resnet18", **SMALL), path)
    return path


def _photo(root, source="consumer"):
    table = read_catalog(root)
    row = table[table.source == source].iloc[0]
    return load_image(root / row.path)


@pytest.mark.parametrize("head", ["light", "full"])
def test_the_graph_and_numpy_find_what_torchvisions_fcos_finds(street, head):
    """The exported graph stops before FCOS's post-processing; NumPy's, per type, must give
    torchvision's own detections (boxes back in the photo's pixels) for the same weights."""
    model = build_detector("resnet18", img_size=128, head=head, pretrained="none")
    with torch.no_grad():  # scores and boxes of some size everywhere: much to sort and suppress
        model.fcos.head.classification_head.cls_logits.bias.fill_(0.0)
        model.fcos.head.classification_head.cls_logits.bias[0] = -20.0  # label 0: no garment
        model.fcos.head.regression_head.bbox_reg.bias.fill_(2.0)
    img = _photo(street).resize((128, 128))  # square: the letterbox is the photo (no padding)
    pixels, scale = letterbox(img, 128, model.spec.mean)
    assert scale == 1.0
    fcos = model.fcos
    fcos.score_thresh, fcos.detections_per_img, fcos.topk_candidates = 0.2, 20, 10_000
    with torch.inference_mode():
        theirs = fcos([torch.from_numpy(pixels).float() / 255])[0]
        scores, boxes = model(torch.from_numpy(pixels[None]))
    ours = garments(
        scores[0].numpy(), boxes[0].numpy(), model.spec, scale, img.size,
        threshold=0.2, per_type=True, most=20,
    )  # fmt: skip
    assert len(ours) == len(theirs["boxes"]) > 3
    for mine, box, score, label in zip(
        ours, theirs["boxes"] / scale, theirs["scores"], theirs["labels"], strict=True
    ):
        clipped = box.clamp(min=0).minimum(torch.tensor([*img.size, *img.size]))
        assert np.allclose(mine.box, clipped.numpy(), atol=1.0)  # ours rounded to pixels
        assert mine.score == pytest.approx(float(score), abs=1e-5)
        assert mine.type == model.spec.classes[int(label) - 1]


def test_the_exported_detector_finds_what_torch_finds(street, detector_file):
    img = _photo(street)
    found = {
        runtime: DetectorRecipe(str(detector_file), runtime=runtime, precision="fp32").build()(
            img, threshold=0.0, per_type=True
        )
        for runtime in ("torch", "openvino")
    }
    assert len(found["torch"]) == len(found["openvino"]) > 0
    for a, b in zip(found["torch"], found["openvino"], strict=True):
        assert a.type == b.type and a.score == pytest.approx(b.score, abs=1e-3)
        assert box_iou(a.box, b.box) > 0.99


def test_a_checkpoint_of_one_kind_is_refused_as_the_other(detector_file, tmp_path):
    from embedder.model import build_model, load_checkpoint

    spec, _ = read_metadata(detector_file, DetectorSpec)
    assert spec.backbone == "resnet18" and spec.weights.startswith("sha256:")
    assert load_detector(detector_file).spec == spec
    with pytest.raises(
        WeightsError, match="holds a garment detector, not an embedder: pass it as --detector"
    ):
        load_checkpoint(detector_file)
    embedder = tmp_path / "embedder.safetensors"
    save_checkpoint(build_model("test_resnet", img_size=64, pretrained="none"), embedder)
    with pytest.raises(
        WeightsError, match="holds an embedder, not a garment detector: pass it as --weights"
    ):
        _ = DetectorRecipe(str(embedder)).spec
    assert read_metadata(embedder)[0].__class__ is ModelSpec


def test_train_detector_learns_validates_and_resumes(street, tmp_path):
    runner = CliRunner()
    common = [
        "train-detector", "--root", str(street), "--backbone", "resnet18", "--img-size", "128",
        "--head", "light", "--pretrained", "none", "--batch-size", "8", "--workers", "0",
        "--no-progress", "--precision", "fp32",
    ]  # fmt: skip
    straight = runner.invoke(app, [*common, "--out", str(tmp_path / "a"), "--epochs", "3"])
    assert straight.exit_code == 0, straight.output
    assert "best:" in straight.output and "metrics.png" in straight.output
    with open(tmp_path / "a" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"loss", "val_ap50", "val_ap", "val_iou"} <= set(rows[0])
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it learns
    assert all(0 <= float(r["val_ap"]) <= float(r["val_ap50"]) <= 1 for r in rows)
    assert (tmp_path / "a" / "metrics.png").stat().st_size > 0
    best = load_detector(tmp_path / "a" / "best.safetensors")
    assert best.spec.img_size == 128 and best.spec.head == "light"

    import embedder.train_detector as training

    saved = training.save_epoch

    def crash_after_epoch_2(*args, **kw):  # the run dies once epoch 2's files are written
        saved(*args, **kw)
        if args[4] == 2:
            raise KeyboardInterrupt

    training.save_epoch = crash_after_epoch_2
    try:
        crashed = runner.invoke(app, [*common, "--out", str(tmp_path / "b"), "--epochs", "3"])
    finally:
        training.save_epoch = saved
    assert crashed.exit_code != 0
    again = runner.invoke(app, [*common, "--out", str(tmp_path / "b"), "--epochs", "3"])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(
        app, [*common, "--out", str(tmp_path / "b"), "--epochs", "3", "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output
    state = json.loads((tmp_path / "b" / "train_state.json").read_text())
    assert state["epoch"] == 3 and [r["epoch"] for r in state["history"]] == [1, 2, 3]
    with open(tmp_path / "b" / "metrics.csv") as fh:
        again_rows = list(csv.DictReader(fh))
    for key in ("loss", "val_ap50", "val_ap", "val_iou"):  # as if never interrupted
        assert float(again_rows[2][key]) == pytest.approx(float(rows[2][key]), rel=1e-3, abs=1e-4)


def test_training_photos_get_a_pasted_garment_of_another_type(street):
    from embedder.catalog import locate
    from embedder.train_detector import PASTE_COVER, BoxedSet, _useful, boxed_photos

    where = locate(street)
    photos = _useful(boxed_photos(read_catalog(where), "train"), where)
    spec = build_detector("resnet18", **SMALL).spec
    fill = np.array([round(m * 255) for m in spec.mean], np.uint8)[:, None, None]
    pasted = BoxedSet(where, photos, spec, augment=True, paste=1.0)
    twos = 0
    for i in range(len(photos)):
        square, target = pasted[i]
        boxes, labels = target["boxes"].numpy(), target["labels"].tolist()
        assert labels[0] == photos.iloc[i]["label"] and len(labels) in (1, 2)
        if len(labels) == 1:  # no place where it hides little enough: none pasted
            continue
        twos += 1
        assert labels[1] != labels[0]
        (a, b) = boxes
        assert 0 <= b[0] < b[2] <= spec.img_size and 0 <= b[1] < b[3] <= spec.img_size
        wide = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        inter = wide * max(0, min(a[3], b[3]) - max(a[1], b[1]))
        assert inter <= PASTE_COVER * (a[2] - a[0]) * (a[3] - a[1]) + 1e-3
        x1, y1, x2, y2 = (int(v) for v in b)
        patch = square[:, y1:y2, x1:x2].numpy()
        assert (patch != fill).any(axis=0).mean() > 0.9  # a garment's photo, not the fill
    assert twos >= len(photos) * 0.8
    plain = BoxedSet(where, photos, spec, augment=True)  # paste 0; validation never pastes
    assert all(len(plain[i][1]["labels"]) == 1 for i in range(len(photos)))
    assert BoxedSet(where, photos, spec, augment=False, paste=1.0).paste == 0


def test_train_detector_refuses_what_cannot_work_in_one_line(street, tmp_path):
    runner = CliRunner()
    base = ["train-detector", "--root", str(street), "--out", str(tmp_path / "x")]
    for extra, said in (
        (["--img-size", "100", "--pretrained", "none"], "a multiple of 32"),
        (["--backbone", "vgg16", "--pretrained", "none"], "choose resnet18"),
        (["--head", "huge", "--pretrained", "none"], "choose full or light"),
        (["--backbone", "resnet18", "--pretrained", "coco"], "COCO detection weights exist"),
        (["--backbone", "resnet18", "--pretrained", "imagenet"], "--pretrained none"),  # offline
        (["--pretrained", "none", "--batch-size", "0"], "0 is not in the range x>=1"),
        (["--pretrained", "none", "--paste", "1.5"], "1.5 is not in the range 0.0<=x<=1.0"),
    ):
        result = runner.invoke(app, base + extra)
        assert result.exit_code != 0 and said in result.output, (extra, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 6
    assert not (tmp_path / "x" / "train_state.json").exists()


def test_evaluations_say_which_boxes_the_queries_were_searched_in(street, tmp_path, ingest_tiny):
    """`embedder evaluate` and `search evaluate` with --boxes annotated|detected|none: each says
    which, detected boxes with their IoU against the annotated ones; the annotated default
    is the literature's protocol."""
    from embedder.model import build_model
    from search.cli import evaluate_app
    from tests.detection import biased_detector

    weights = tmp_path / "embedder.safetensors"
    save_checkpoint(build_model("test_resnet", img_size=64, pretrained="none"), weights)
    detector = biased_detector(tmp_path / "det.safetensors", ("upper", "lower", "full"))
    runner = CliRunner()
    base = ["evaluate", "--root", str(street), "--weights", str(weights), "--k", "1,5"]
    said = {}
    for boxes in ("annotated", "none", "detected"):
        extra = ["--detector", detector] if boxes == "detected" else []
        out = tmp_path / f"{boxes}.json"
        result = runner.invoke(app, [*base, "--boxes", boxes, *extra, "--json", str(out)])
        assert result.exit_code == 0, result.output
        said[boxes] = result.output
        report = next(iter(json.loads(out.read_text()).values()))
        assert report["boxes"] == boxes and ("box_iou" in report) == (boxes == "detected")
        if boxes == "detected":
            assert 0 <= report["box_iou"] <= 1
    assert "queries in their annotated boxes" in said["annotated"]
    assert "queries whole (no box)" in said["none"]
    assert "queries in the detector's box of their category's type; mean IoU" in said["detected"]
    plain = runner.invoke(app, base)
    assert "queries in their annotated boxes" in plain.output  # the default
    refused = runner.invoke(app, [*base, "--boxes", "detected"])
    assert refused.exit_code == 2 and "needs a garment detector" in refused.output

    db = str(tmp_path / "db")
    assert ingest_tiny(street, db, "--weights", str(weights)).exit_code == 0
    store = ["--root", str(street), "--store", db, "--k", "1,5"]
    whole = runner.invoke(evaluate_app, [*store, "--boxes", "none"])
    assert whole.exit_code == 0 and "queries whole (no box)" in whole.output, whole.output
    found = runner.invoke(evaluate_app, [*store, "--boxes", "detected", "--detector", detector])
    assert found.exit_code == 0, found.output
    assert "detector's box" in found.output and "mean IoU" in found.output
    missing = runner.invoke(evaluate_app, [*store, "--boxes", "detected"])
    assert missing.exit_code == 2 and "the collection records none" in missing.output


def test_embedder_export_takes_a_detector_too(detector_file, tmp_path):
    runner = CliRunner()
    done = runner.invoke(app, ["export", "--weights", str(detector_file)])
    assert done.exit_code == 0, done.output
    path = done.output.split("fp32: ")[1].split(" (")[0]
    assert "resnet18 (weights sha256:" in done.output and "detector-resnet18-" in path
    assert Path(path).is_file() and Path(path).with_suffix(".bin").is_file()
    assert DetectorRecipe(str(detector_file)).cached()  # what search then loads, without torch
    refused = runner.invoke(app, ["export", "--weights", str(detector_file), "--int8"])
    assert refused.exit_code == 2 and "--int8 is for embedders" in refused.output
