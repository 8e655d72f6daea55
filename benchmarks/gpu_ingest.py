"""End to end on a GPU: N generated JPEGs through `ingest run` (226,980 in ≤ 60 s on an H100).

    python benchmarks/gpu_ingest.py --data /tmp/df227k --n 226980 --processes 16 --compile
    python benchmarks/gpu_ingest.py --n 600 --device cpu --batch-size 32 --workers 1  # smoke

Generates (or reuses) a DeepFashion-layout sample of about N images, then runs the real ingest
path (device JPEG decode, pinned memory, bf16, channels_last, large batches, optional
torch.compile, upserts on a background thread into the embedded store) and prints the wall
time, images/s and the split between read (waiting for workers), decode, forward, upsert and
index build, next to the bare model's rate on pre-decoded tensors.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _collection import timed_ingest  # benchmarks/ is on the path when run as a script

from embedder.catalog import read_catalog
from embedder.inference import Encoder
from embedder.model import build_model
from ingest.sample import write_sample

IMAGES_PER_ITEM = 3.5  # the generator's mean: 1-2 shop and 1-3 consumer photos per item


def bare_rate(encoder: Encoder, batch: int, steps: int = 10) -> float:
    x = torch.randint(
        0, 255, (batch, 3, encoder.spec.img_size, encoder.spec.img_size), dtype=torch.uint8
    )
    if encoder.device.type == "cuda":
        x = x.pin_memory()
    for _ in range(3):
        encoder(x)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        encoder(x)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="sample folder (made if missing)")
    parser.add_argument("--n", type=int, default=226_980)
    parser.add_argument("--processes", type=int, default=16, help="for drawing the sample")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--decode", default="device", choices=["cpu", "device"])
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data or f"{tmp}/sample")
        if not (data / "Eval" / "list_eval_partition.txt").is_file():
            started = time.perf_counter()
            write_sample(
                data, items=int(args.n / IMAGES_PER_ITEM) + 1, seed=0, processes=args.processes
            )
            print(f"drew the sample in {time.perf_counter() - started:.0f} s")
        images = len(read_catalog(data))
        encoder = Encoder(
            build_model("resnet50", pretrained="none"), args.device, "auto", compile=args.compile
        )
        ceiling = bare_rate(encoder, args.batch_size)  # also compiles, outside the timed run
        wall, summary = timed_ingest(
            encoder,
            data,
            tmp,
            batch_size=args.batch_size,
            workers=args.workers,
            decode=args.decode,
        )
    print(
        f"{images} images, resnet50 {encoder.spec.img_size}px on {encoder.device} "
        f"({'bf16' if encoder.dtype else 'fp32'}{', compiled' if args.compile else ''}), "
        f"batch {args.batch_size}, {args.workers} workers, decode on {args.decode}"
    )
    print(f"bare model on pre-decoded tensors: {ceiling:.0f} img/s")
    print(
        f"ingest run: {wall:.1f} s wall = {images / wall:.0f} img/s "
        f"({images / wall / ceiling:.2f}x the bare model); target <= 60 s for 226,980"
    )
    print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary.seconds.items()))
    print(f"embedded {summary.embedded}, failed {summary.failed}")


if __name__ == "__main__":
    main()
