import numpy as np
import pytest
import torch

from embedder import Encoder, build_model, embed_files, load_checkpoint, save_checkpoint
from embedder.checkpoint import read_metadata
from embedder.model import WeightsError


def _images(root, n=6):
    return sorted(str(p) for p in root.rglob("*.jpg"))[:n]


def test_embeddings_are_unit_vectors_of_the_head_size(sample_root, tiny_model):
    vectors = embed_files(Encoder(tiny_model, "cpu", "fp32"), _images(sample_root))
    assert vectors.shape == (6, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_untrained_model_is_reproducible(sample_root):
    a = build_model("test_resnet", img_size=64, dim=32, pretrained="none")
    b = build_model("test_resnet", img_size=64, dim=32, pretrained="none")
    files = _images(sample_root, 3)
    np.testing.assert_array_equal(
        embed_files(Encoder(a, "cpu", "fp32"), files), embed_files(Encoder(b, "cpu", "fp32"), files)
    )


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "resnet50"])
def test_preprocessing_comes_from_the_timm_config(name):
    import timm

    spec = build_model(name, pretrained="none").spec
    cfg = timm.data.resolve_model_data_config(timm.create_model(name, pretrained=False))
    assert spec.img_size == cfg["input_size"][-1] and spec.interpolation == cfg["interpolation"]
    assert spec.mean == pytest.approx(cfg["mean"]) and spec.std == pytest.approx(cfg["std"])
    assert spec.crop_pct == pytest.approx(cfg["crop_pct"])


def test_checkpoint_round_trip_gives_identical_embeddings(sample_root, tmp_path):
    model = build_model("test_resnet", img_size=64, pretrained="none")
    with torch.no_grad():  # make the weights differ from the seeded init
        model.head.weight.mul_(-1.5)
    spec = save_checkpoint(model, tmp_path / "m.safetensors", epoch=3, metrics={"r20": 0.5})
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    files = _images(sample_root)
    np.testing.assert_array_equal(
        embed_files(Encoder(model, "cpu", "fp32"), files),
        embed_files(Encoder(loaded, "cpu", "fp32"), files),
    )
    assert loaded.spec.weights == spec.weights and spec.weights.startswith("sha256:")
    recorded, info = read_metadata(tmp_path / "m.safetensors")
    assert (recorded.backbone, recorded.dim, recorded.img_size) == ("test_resnet", 512, 64)
    assert recorded.mean == model.spec.mean and info == {"epoch": 3, "metrics": {"r20": 0.5}}


def test_offline_pretrained_fails_with_a_pointer_to_weights(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="--weights"):
        build_model("test_resnet", pretrained="default")


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all"])
def test_corrupt_weights_are_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError):
        build_model(weights=str(path))
    with pytest.raises(WeightsError, match="not found"):
        build_model(weights=str(tmp_path / "missing.safetensors"))


def test_unknown_backbone_is_a_value_error():
    with pytest.raises(ValueError, match="unknown timm backbone"):
        build_model("no_such_net", pretrained="none")


def _off_by(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float, int]:
    """(share of values that differ, share off by more than 2 levels, the largest gap)."""
    gap = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    return float((gap > 0).mean()), float((gap > 2).mean()), int(gap.max())


def _rounding_only(ours: np.ndarray, reference: np.ndarray) -> bool:
    """The bound EvalTransform is documented to keep: a few per cent of values one level off
    torchvision's, almost none more than two."""
    differ, far, largest = _off_by(ours, reference)
    return differ < 0.1 and far < 5e-4 and largest <= 20


@pytest.mark.parametrize(
    "name, img_size, bilinear",
    [("test_resnet", None, False), ("resnet50", None, False), ("resnet18", 128, False),
     ("resnet50", 224, True)],
)
def test_eval_transform_is_torchvisions_resize_and_crop(sample_root, name, img_size, bilinear):
    """Whole photos and garment boxes, resampled only where the crop is (load_pixels), against
    torchvision's Resize + CenterCrop of the cropped photo: equal but for rounding, while the
    same comparison one pixel off, or with the other filter, is far outside that bound."""
    from dataclasses import replace

    from torchvision.transforms import v2

    from embedder.catalog import bbox_of, read_catalog
    from embedder.transforms import eval_transform, load_image, load_pixels

    spec = build_model(name, img_size=img_size, pretrained="none").spec
    if bilinear:
        spec = replace(spec, interpolation="bilinear", crop_pct=0.875)
    modes = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}

    def resized(img, interpolation=spec.interpolation):  # torchvision's Resize, as a C×H×W array
        short = int(spec.img_size / spec.crop_pct)
        return v2.Resize(short, modes[interpolation], antialias=True)(v2.PILToTensor()(img)).numpy()

    def window(pixels, shift=0):  # torchvision's CenterCrop, `shift` pixels to the right
        size = spec.img_size
        top, left = (int(round((n - size) / 2.0)) for n in pixels.shape[1:])
        return pixels[:, top : top + size, left + shift : left + shift + size]

    catalog = read_catalog(sample_root)
    transform = eval_transform(spec)
    other = "bilinear" if spec.interpolation == "bicubic" else "bicubic"
    compared: dict[str, list] = {"ours": [], "torchvision": [], "shifted": [], other: []}
    for row in catalog.iloc[:12].itertuples():
        path = sample_root / row.path
        for box in (None, bbox_of(row)):
            ours = load_pixels(path, box, transform)  # a NumPy array: no torch on the query path
            assert ours.dtype == np.uint8 and ours.shape == (3, spec.img_size, spec.img_size)
            crop = load_image(path, box, transform.min_side)
            if box is None:  # the photo itself: the transform of the decoded photo
                assert np.array_equal(ours, transform(crop))
            reference = resized(crop)
            compared["ours"].append(ours)
            compared["torchvision"].append(window(reference))
            compared["shifted"].append(window(reference, shift=1))
            compared[other].append(window(resized(crop, other)))
    ours = np.stack(compared.pop("ours"))
    assert _rounding_only(ours, np.stack(compared["torchvision"])), _off_by(
        ours, np.stack(compared["torchvision"])
    )
    for what in ("shifted", other):  # the bound tells a wrong crop or filter apart
        assert not _rounding_only(ours, np.stack(compared[what])), what


def _nan_weights(path):
    """The checkpoint at `path` with one tensor made NaN and its metadata left as it was."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    state = load_file(str(path))
    name = next(n for n, t in state.items() if t.is_floating_point() and t.numel() > 1)
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(path), metadata=metadata)


def test_a_checkpoint_whose_tensors_changed_is_refused(
    sample_root, tmp_path, tiny_model, one_line_error, query_photo
):
    """Its identity is its tensors' digest, not what its metadata says: NaN weights under
    the old metadata are refused by ingest and by search, on torch and on OpenVINO alike."""
    from typer.testing import CliRunner

    from ingest.cli import app as ingest_app
    from search.cli import app as search_app

    weights = tmp_path / "w.safetensors"
    save_checkpoint(tiny_model, weights)
    db = str(tmp_path / "db")
    run = ["run", "--root", str(sample_root), "--store", db, "--weights", str(weights),
           "--workers", "0", "--no-progress"]  # fmt: skip
    assert CliRunner().invoke(ingest_app, run).exit_code == 0  # exports it for OpenVINO too
    _nan_weights(weights)
    with pytest.raises(WeightsError, match="changed after"):
        load_checkpoint(weights)
    for runtime in ("torch", "openvino"):
        ingest = CliRunner().invoke(ingest_app, [*run, "--runtime", runtime, "--recreate"])
        one_line_error(ingest, "changed after `embedder train`")
        found = CliRunner().invoke(search_app, [query_photo, "--store", db, "--runtime", runtime])
        one_line_error(found, "changed after `embedder train`")


def test_a_model_that_gives_nan_vectors_stores_none_of_them(sample_root, tmp_path, tiny_model):
    """A vector that is not finite is a failure of its photo, never a stored point."""
    from typer.testing import CliRunner

    from ingest.cli import app as ingest_app
    from search.store import open_store

    broken = build_model("test_resnet", img_size=64, pretrained="none")
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    weights = tmp_path / "nan.safetensors"
    save_checkpoint(broken, weights)  # a true digest of NaN tensors: it is what it says
    db = str(tmp_path / "db")
    result = CliRunner().invoke(
        ingest_app,
        ["run", "--root", str(sample_root), "--store", db, "--weights", str(weights),
         "--workers", "0", "--no-progress", "--runtime", "torch", "--report",
         str(tmp_path / "f.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    photos = len(list(sample_root.rglob("*.jpg")))
    assert f"embedded 0 (0 changed), already present 0, failed {photos}" in result.output
    assert "not finite" in (tmp_path / "f.csv").read_text()
    with open_store(store_dir=db) as store:
        assert store.count() == 0


def test_offline_the_pretrained_default_fails_at_once_in_one_line(sample_root, tmp_path):
    """No cached weights and a hub that cannot be reached: one line with the whole advice,
    in seconds (it took a minute of retries and 44 warning lines)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = {**__import__("os").environ, "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    started = time.monotonic()
    run = subprocess.run(
        [Path(sys.executable).parent / "ingest", "run", "--root", sample_root, "--store",
         tmp_path / "db", "--backbone", "test_resnet", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stdout + run.stderr
    assert "127.0.0.1 cannot be reached" in lines[0]
    assert lines[0].endswith("pass --weights FILE.safetensors, or --pretrained none for an "
                             "untrained model")  # fmt: skip
    assert time.monotonic() - started < 30
