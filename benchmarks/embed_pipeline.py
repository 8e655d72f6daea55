"""Embedding throughput of the ingest pipeline against two baselines, in one process.

    python benchmarks/embed_pipeline.py                 # CPU: resnet50 224px, 2 threads
    python benchmarks/embed_pipeline.py --device cuda --batch-size 256 --workers 8 --n 4096

Prints img/s of (a) a reference-style loop (PIL, one image at a time, fp32, one forward per
image), (b) the bare model on pre-loaded tensors with the pipeline's settings (bf16 autocast
where supported, channels_last, batched) and (c) `ingest run`'s real path (DataLoader decode
workers → model → background upserts into an embedded store), with ratios (c)/(b) and (c)/(a).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _collection import timed_ingest  # benchmarks/ is on the path when run as a script

from embedder.catalog import read_catalog
from embedder.inference import Encoder
from embedder.model import build_model
from embedder.transforms import eval_transform, load_image
from ingest.sample import write_sample


def reference(model, files: list[Path]) -> float:
    """Open each image with PIL, fp32 NCHW, one forward per image."""
    tf = eval_transform(model.spec)
    mean = torch.tensor(model.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.spec.std).view(1, 3, 1, 1)
    model = model.eval().to(memory_format=torch.contiguous_format)
    started = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            x = (torch.from_numpy(tf(load_image(path))).unsqueeze(0).float() / 255 - mean) / std
            model(x)
    return len(files) / (time.perf_counter() - started)


def bare(encoder: Encoder, files: list[Path], batch: int) -> float:
    """The model alone on pre-decoded uint8 batches: the ceiling for the pipeline."""
    tf = eval_transform(encoder.spec)
    pixels = torch.from_numpy(np.stack([tf(load_image(p)) for p in files]))
    encoder(pixels[:batch])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(pixels), batch):
        encoder(pixels[start : start + batch])
    return len(pixels) / (time.perf_counter() - started)


def pipeline(encoder: Encoder, root: Path, batch: int, workers: int, tmp: str) -> tuple:
    wall, summary = timed_ingest(encoder, root, tmp, batch_size=batch, workers=workers)
    return summary.embedded / wall, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images in the pipeline run")
    parser.add_argument("--reference-n", type=int, default=48)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile (b) and (c)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_sample(f"{tmp}/sample", items=max(8, args.n // 3), seed=0)
        files = [root / p for p in read_catalog(root)["path"]][: args.n]
        for extra in Path(root, "img").rglob("*.jpg"):  # keep exactly n images on disk
            if extra not in set(files):
                extra.unlink()
        model = build_model(args.backbone, pretrained="none")
        encoder = Encoder(model, args.device, "auto", compile=args.compile)
        print(
            f"{args.backbone} {model.spec.img_size}px on {encoder.device} "
            f"({'bf16' if encoder.dtype else 'fp32'}{', compiled' if args.compile else ''}), "
            f"torch threads {torch.get_num_threads()},"
            f" batch {args.batch_size}, {args.workers} decode worker(s), {len(files)} images"
        )
        ref = (
            reference(build_model(args.backbone, pretrained="none"), files[: args.reference_n])
            if encoder.device.type == "cpu"
            else np.nan
        )
        ceiling = bare(encoder, files, args.batch_size)
        rate, summary = pipeline(encoder, root, args.batch_size, args.workers, tmp)
        print(f"(a) reference loop (PIL, fp32, 1 image/forward): {ref:8.1f} img/s")
        print(f"(b) bare model, pre-loaded tensors:               {ceiling:8.1f} img/s")
        print(f"(c) ingest pipeline, wall clock incl. upserts:    {rate:8.1f} img/s")
        print(f"ratio (c)/(b) = {rate / ceiling:.2f}   (target >= 0.85)")
        print(f"ratio (c)/(a) = {rate / ref:.2f}   (target >= 4)")
        print("ingest stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary.seconds.items()))


if __name__ == "__main__":
    main()
