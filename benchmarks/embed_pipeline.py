"""`ingest run` on a CPU against the exported model's own rate (OpenVINO's benchmark_app on the
very file ingest exported), in one run, with where each millisecond of a photo goes.

    python benchmarks/embed_pipeline.py                          # resnet50 224 px, 2,016 photos
    python benchmarks/embed_pipeline.py --backbone resnet18 --img-size 128 --n 12096 --repeats 3

Prints (a) benchmark_app's throughput on the exported model (THROUGHPUT hint, batch 32),
(b) the steady rate of the whole `ingest run` command (the photos of all of the tree less those
of a quarter of it, over the difference of the two runs' wall times: start-up and export
cancel out, the index step of the last segment does not: 0 s at 3,024 points, 1 s at 12,096),
the ratio (b)/(a) (target >= 0.8), ingest's own embedding-loop rate beside it (the index step
apart), and one photo's cost stage by stage on one core: read, decode, resize and crop, batch,
model (per photo at batch 32), write.

With --repeats N each measurement is taken N times, interleaved (benchmark_app, the quarter,
the whole tree, again), and the ratio is the median's, with each round's printed beside it: on
a shared 2-core machine one round moves by 5-10%.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from _machine import cpu_name

BIN = Path(sys.executable).parent


def app_rate(model: Path, size: int, batch: int, seconds: int) -> float:
    """benchmark_app's images/s (THROUGHPUT hint, `batch` per request)."""
    out = subprocess.run(
        [BIN / "benchmark_app", "-m", model, "-hint", "throughput", "-b", str(batch)]
        + ["-shape", f"[{batch},3,{size},{size}]", "-t", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"Throughput:\s+([\d.]+) FPS", out).group(1))


def ingest_seconds(root: Path, store: Path, model: list[str], limit: int, workers):
    """The whole command's wall time, and its own embedding-loop rate (its summary's img/s:
    photos over the time the loop waited for readers and the model, the index step apart)."""
    args = [BIN / "ingest", "run", "--root", root, "--store", store, "--no-progress"]
    args += [*model, "--limit", str(limit), "--report", store.with_suffix(".csv")]
    args += ["--workers", str(workers)] if workers is not None else []
    started = time.perf_counter()
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    loop = re.search(r"([\d.]+) img/s embedding", done.stdout + done.stderr)
    return time.perf_counter() - started, float(loop.group(1)) if loop else float("nan")


class Round(NamedTuple):
    """One round of measurements: benchmark_app's rate, the whole command's steady rate, the
    wall seconds of each run by its photo limit, the whole tree's embedding-loop rate."""

    app: float
    steady: float
    seconds: dict[int, float]
    loop: float

    @property
    def ratio(self) -> float:
        return self.steady / self.app


def stages(encoder, files: list[str], boxes, tmp: str) -> dict[str, float]:
    """ms per photo of each stage, on one core (the model: per photo of a batch of 32)."""
    from embedder.transforms import eval_transform, load_image, load_pixels
    from search.store import Points, open_store

    transform = eval_transform(encoder.spec)
    out, t = {}, time.perf_counter()
    for path in files:
        Path(path).read_bytes()
    out["read"] = time.perf_counter() - t
    t = time.perf_counter()
    for p, b in zip(files, boxes, strict=True):
        load_image(p, b, transform.min_side)  # decoded, oriented, cropped to the box
    out["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    pixels = [load_pixels(p, b, transform) for p, b in zip(files, boxes, strict=True)]
    out["resize+crop"] = time.perf_counter() - t - out["decode"]  # what the transform adds
    t = time.perf_counter()
    batches = [np.stack(pixels[s : s + 32]) for s in range(0, len(pixels) - 31, 32)]
    out["batch"] = time.perf_counter() - t
    encoder(batches[0])
    t = time.perf_counter()
    vectors = [encoder(b) for b in batches]
    out["model (both cores)"] = (time.perf_counter() - t) * len(files) / (32 * len(batches))
    ids = [f"{n:08x}-0000-5000-8000-000000000000" for n in range(len(files))]
    flat = np.concatenate(vectors)
    with open_store(store_dir=tempfile.mkdtemp(dir=tmp), collection="w") as store:
        store.create(flat.shape[1], {})  # (a new folder each call)
        t = time.perf_counter()
        for s in range(0, len(flat), 32):
            part = range(s, min(s + 32, len(flat)))
            store.upsert(Points([ids[i] for i in part], flat[s : s + 32], [{"n": i} for i in part]))
        store.flush()
        out["write"] = (time.perf_counter() - t) * len(files) / len(flat)
    return {k: 1000 * v / len(files) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2016, help="photos in the tree")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="reader processes [ingest's]")
    parser.add_argument("--seconds", type=int, default=15, help="benchmark_app's run")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every measurement")
    args = parser.parse_args()

    from embedder.catalog import bbox_of, read_catalog
    from embedder.recipe import ModelRecipe
    from ingest.sample import write_sample

    print(cpu_name())
    with tempfile.TemporaryDirectory() as tmp:
        root = write_sample(f"{tmp}/sample", items=args.n // 3 + 10, seed=0)
        catalog = read_catalog(root)
        for extra in catalog["path"].iloc[args.n :]:  # exactly n photos in the tree
            (root / extra).unlink()
        catalog = catalog.iloc[: args.n]
        model = ["--backbone", args.backbone, "--pretrained", "none"]
        model += ["--img-size", str(args.img_size)] if args.img_size else []
        recipe = ModelRecipe(args.backbone, img_size=args.img_size, pretrained="none")
        encoder = recipe.build()  # exported (and cached) as ingest exports it
        size = encoder.spec.img_size
        print(f"{args.backbone} {size}px, {encoder.describe()}, {len(catalog)} photos")
        quarter, rounds = len(catalog) // 4, []
        for n in range(args.repeats):  # interleaved: a slow spell of the machine hits all three
            app = app_rate(encoder.path, size, 32, args.seconds)
            seconds, loop = {}, float("nan")
            for limit in (quarter, len(catalog)):  # each into a new store (a rerun embeds none)
                store = Path(tmp, f"db{n}-{limit}")
                seconds[limit], loop = ingest_seconds(root, store, model, limit, args.workers)
            steady = (len(catalog) - quarter) / (seconds[len(catalog)] - seconds[quarter])
            rounds.append(Round(app, steady, seconds, loop))
        files = [str(root / p) for p in catalog["path"].iloc[:512]]
        boxes = [bbox_of(row) for row in catalog.iloc[:512].itertuples()]
        cost = stages(encoder, files, boxes, tmp)
    for n, r in enumerate(rounds, 1):
        print(
            f"round {n}: (a) benchmark_app {r.app:7.1f} img/s, (b) ingest run steady "
            f"{r.steady:7.1f} img/s ({quarter} photos in {r.seconds[quarter]:.1f} s, "
            f"{len(catalog)} in {r.seconds[len(catalog)]:.1f} s), ratio {r.ratio:.2f}; its "
            f"embedding loop {r.loop:.1f} img/s = {r.loop / r.app:.2f}x"
        )
    median = sorted(rounds, key=lambda r: r.ratio)[len(rounds) // 2]
    print(f"(a) benchmark_app, THROUGHPUT hint, batch 32: {median.app:8.1f} img/s")
    print(
        f"(b) ingest run, steady rate:                  {median.steady:8.1f} img/s "
        f"(readers {args.workers or 'default'})"
    )
    ratios = [r.ratio for r in rounds]
    spread = f", rounds {min(ratios):.2f}-{max(ratios):.2f}" if len(rounds) > 1 else ""
    print(f"ratio (b)/(a) = {median.ratio:.2f}   (target >= 0.8; the median round{spread})")
    print(
        f"that round's embedding loop (ingest's own img/s): {median.loop:.1f} img/s = "
        f"{median.loop / median.app:.2f}x"
    )
    print("ms per photo: " + ", ".join(f"{k} {v:.3f}" for k, v in cost.items()))


if __name__ == "__main__":
    main()
