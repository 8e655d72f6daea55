"""The model on a plain CPU: torch against OpenVINO (and ONNX Runtime), fp32 and int8, in one run.

    python benchmarks/cpu_runtime.py                       # resnet50 at 224 px, resnet18 at 128
    python benchmarks/cpu_runtime.py --models resnet18:128 --weights runs/r18/best.safetensors

Per model: import times; one image's model time and batch-32 throughput (torch fp32
channels_last, torch with its CPU default (bf16 where the CPU has it), OpenVINO fp32, OpenVINO's
default, OpenVINO int8, ONNX Runtime fp32); `search` cold start with a warm cache (the whole
command, 20 results, a category filter); `ingest run` throughput of the same photos (the whole
command; int8 already exported); `search serve` with 8 clients against one (serve_latency.py);
the int8 recall check. Needs `pip install -e '.[bench]'` for the ONNX Runtime column.

Untrained checkpoints unless --weights: speed does not depend on the weights, but int8's recall
check does, and an untrained model's near-identical vectors fail it (the figures say so); the
int8 timings then use a model kept without the check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import cpu_name

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent


def import_seconds(module: str) -> float:
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        runs.append(time.perf_counter() - t0)
    base = min(_timed([sys.executable, "-c", "pass"]) for _ in range(3))  # Python's own start
    return min(runs) - base


def _timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def model_rates(encoder, size: int) -> tuple[float, float]:
    """(one image's model time in ms, median of 30; batch-32 images/s)."""
    one = np.random.default_rng(0).integers(0, 255, (1, 3, size, size), dtype=np.uint8)
    batch = np.random.default_rng(1).integers(0, 255, (32, 3, size, size), dtype=np.uint8)
    for _ in range(3):
        encoder(one)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        encoder(one)
        times.append(time.perf_counter() - t0)
    encoder(batch)
    t0 = time.perf_counter()
    for _ in range(3):
        encoder(batch)
    return statistics.median(times) * 1000, 96 / (time.perf_counter() - t0)


class OnnxEncoder:
    """The same exported graph on ONNX Runtime (uint8 NCHW in), for the comparison only."""

    def __init__(self, model, path: Path, threads: int):
        import onnxruntime as ort
        import torch

        from embedder.runtime import with_normalisation

        spec = model.spec
        x = torch.zeros((1, 3, spec.img_size, spec.img_size), dtype=torch.uint8)
        torch.onnx.export(
            with_normalisation(model),
            x,
            path,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
            dynamo=False,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels):
        return self.session.run(None, {"x": np.asarray(pixels, np.uint8)})[0]


def measure(backbone: str, size: int, weights: str | None, tmp: Path) -> dict:
    from _collection import make_collection

    from embedder import Encoder, load_checkpoint
    from embedder.runtime import (
        ExportedEncoder,
        calibration_photos,
        exported_encoder,
        exported_path,
        quantize,
    )

    out: dict = {"rows": [], "model": f"{backbone} {size}px"}
    os.environ["FASHION_RETRIEVAL_CACHE"] = str(tmp / "cache")
    root, db = make_collection(str(tmp), backbone, img_size=size, items=120, seed=2)
    if weights:  # the recall check's model; speed is the same for any weights
        model = load_checkpoint(weights)
    else:
        model = load_checkpoint(tmp / "w.safetensors")
    spec = model.spec
    # the collection's own model, for the commands below
    collection_model = load_checkpoint(tmp / "w.safetensors")
    photos_paths = sorted(str(p) for p in root.rglob("*.jpg"))

    def row(name, encoder):
        ms, rate = model_rates(encoder, size)
        out["rows"].append((name, ms, rate))

    row("torch fp32 channels_last", Encoder(model, "cpu", "fp32"))
    row("torch CPU default (auto)", Encoder(model, "cpu", "auto"))
    fp32 = exported_encoder(spec, lambda: model, precision="fp32")
    row("OpenVINO fp32", fp32)
    row("OpenVINO default (auto)", exported_encoder(spec, lambda: model))
    cal = calibration_photos(photos_paths, None, spec, 300)
    out["int8 check"] = _int8(spec, cal, weights, quantize)
    int8 = ExportedEncoder(exported_path(spec, int8=True), spec, int8=True)
    row("OpenVINO int8", int8)
    try:
        onnx = OnnxEncoder(model, tmp / "m.onnx", os.cpu_count() or 2)
        row("ONNX Runtime fp32", onnx)
    except ImportError:
        out["rows"].append(("ONNX Runtime fp32 (pip install -e '.[bench]')", float("nan"), 0.0))
    # the commands, on the collection made with the untrained checkpoint
    spec_c = collection_model.spec
    exported_encoder(spec_c, lambda: collection_model)  # cached, as after a first start
    quantize(spec_c, calibration_photos(photos_paths, None, spec_c, 300), check=False)
    query = str(sorted(root.rglob("comsumer_01.jpg"))[0])
    search = [str(BIN / "search"), query, "--top", "20", "--category", "TOPS", "--store", db]
    cold = {}
    for name, extra in (
        ("torch (traced copy)", ["--runtime", "torch"]),
        ("OpenVINO", ["--runtime", "openvino"]),
        ("OpenVINO int8", ["--runtime", "openvino", "--int8"]),
    ):
        subprocess.run(search + extra, check=True, capture_output=True)  # warm the caches
        cold[name] = min(_timed(search + extra) for _ in range(3))
    out["cold"] = cold
    ingest = {}
    for name, extra in (
        ("torch fp32", ["--runtime", "torch", "--precision", "fp32"]),
        ("torch CPU default", ["--runtime", "torch"]),
        ("OpenVINO default", ["--runtime", "openvino"]),
        ("OpenVINO int8", ["--runtime", "openvino", "--int8"]),
    ):
        store = tmp / f"ingest-{len(ingest)}"
        cmd = [str(BIN / "ingest"), "run", "--root", str(root), "--store", str(store)]
        cmd += ["--weights", str(tmp / "w.safetensors"), "--no-progress", *extra]
        wall = _timed(cmd)
        ingest[name] = len(photos_paths) / wall
    out["ingest"] = ingest
    out["images"] = len(photos_paths)
    serve = {}
    for name, extra in (("torch", ["--runtime", "torch"]), ("OpenVINO", ["--runtime", "openvino"])):
        run = subprocess.run(
            [sys.executable, str(HERE / "serve_latency.py"), "--backbone", backbone]
            + ["--img-size", str(size), "--queries", "24", *extra],
            capture_output=True,
            text=True,
            check=True,
        )
        serve[name] = [line for line in run.stdout.splitlines() if "x " in line or "p50" in line]
    out["serve"] = serve
    return out


def _int8(spec, photos, weights, quantize) -> str:
    """The recall check's verdict with its figures (kept or refused)."""
    from embedder.runtime import ExportError

    try:
        figures = quantize(spec, photos)
        return "kept: " + ", ".join(f"{k} {v}" for k, v in figures.items())
    except ExportError as exc:
        quantize(spec, photos, check=False)  # kept anyway, for the timings below
        why = "an untrained model" if not weights else "this model"
        return f"refused for {why}: {str(exc).split('refused: ')[1].split(';')[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50:224,resnet18:128")
    parser.add_argument("--weights", help="a trained checkpoint for the int8 recall check")
    args = parser.parse_args()
    import onnxruntime  # noqa: F401  (fails early, naming the extra, when missing)

    from embedder.runtime import import_openvino

    openvino = import_openvino()

    print(f"CPU: {cpu_name()}; OpenVINO {openvino.__version__}")
    print(
        "import: torch {:.2f} s, openvino {:.2f} s, onnxruntime {:.2f} s".format(
            import_seconds("torch"), import_seconds("openvino"), import_seconds("onnxruntime")
        )
    )
    for item in args.models.split(","):
        backbone, size = item.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            found = measure(backbone, int(size), args.weights, Path(tmp))
        print(f"\n== {found['model']}")
        base_ms, base_rate = found["rows"][0][1], found["rows"][0][2]
        for name, ms, rate in found["rows"]:
            print(
                f"  {name:46} one image {ms:7.1f} ms ({base_ms / ms:4.2f}x)   "
                f"batch 32 {rate:7.1f} img/s ({rate / base_rate:4.2f}x)"
            )
        print(f"  int8 recall check: {found['int8 check']}")
        cold = found["cold"]
        print("  search cold start, warm cache (whole command, 20 results, category filter):")
        for name, seconds in cold.items():
            print(f"    {name:24} {seconds:5.2f} s")
        ingest = found["ingest"]
        base = ingest["torch fp32"]
        print(f"  ingest run, {found['images']} photos (whole command):")
        for name, rate in ingest.items():
            print(f"    {name:24} {rate:7.1f} img/s ({rate / base:4.2f}x torch fp32)")
        for name, lines in found["serve"].items():
            print(f"  search serve on {name}:")
            for line in lines:
                print(f"    {line}")


if __name__ == "__main__":
    main()
