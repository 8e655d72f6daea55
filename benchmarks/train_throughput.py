"""Training throughput (triplets/s, img/s) of the reference recipe on generated data.

    python benchmarks/train_throughput.py --device cuda --batch-size 128   # one H100: the target
    python benchmarks/train_throughput.py --device cpu --steps 5           # here: a smoke figure

Runs real `embedder.train` steps (resnet50, layer4 + head trainable, bf16 autocast,
channels_last) over decoded triplets from a generated sample, and prints the forward+backward
rate alone (pre-decoded tensors, the model's limit) next to the full loop with data loading.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from pytorch_metric_learning import losses

from embedder.device import autocast, autocast_dtype, resolve_device
from embedder.model import build_model
from embedder.train import TrainConfig, fit, freeze
from embedder.transforms import normalize
from ingest.sample import write_sample


def model_only(args, device) -> float:
    """Triplets/s of forward+backward on pre-made uint8 batches (no decode)."""
    model = build_model(args.backbone, img_size=args.img_size, pretrained="none")
    model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(freeze(model, args.train_stages), lr=1e-4)
    loss_fn = losses.TripletMarginLoss(margin=0.5)
    dtype = autocast_dtype(device, "auto")
    n, size = args.batch_size, model.spec.img_size
    x = torch.randint(0, 255, (3 * n, 3, size, size), dtype=torch.uint8)
    idx = torch.arange(n, device=device)
    labels = torch.arange(3 * n, device=device)
    for step in range(args.steps + 2):
        if step == 2:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with autocast(device, dtype):
            emb = model(normalize(x, model.spec, device))
        loss = loss_fn(emb.float(), labels, (idx, idx + n, idx + 2 * n))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * n / (time.perf_counter() - started)


def full_loop(args) -> dict:
    """One epoch of `embedder train` over a generated sample (decode + augment included)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_sample(f"{tmp}/sample", items=args.items, seed=0)
        cfg = TrainConfig(
            root=str(root),
            out=f"{tmp}/run",
            backbone=args.backbone,
            img_size=args.img_size,
            pretrained="none",
            epochs=1,
            batch_size=args.batch_size,
            device=args.device,
            train_stages=args.train_stages,
            workers=args.workers,
            ks=(1, 20),
        )
        return fit(cfg, progress=False).rows[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-stages", default="layer4")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rate = model_only(args, device)
    print(f"device {device}, {args.backbone} {args.img_size}px, batch {args.batch_size} triplets")
    print(f"model only (fwd+bwd, no decode): {rate:.1f} triplets/s = {3 * rate:.1f} img/s")
    print(
        f"one epoch of the real train split (98.8k triplets) at that rate: "
        f"{98_800 / rate / 60:.1f} min"
    )
    row = full_loop(args)
    print(
        f"embedder train, one epoch with decode/augment: {row['triplets_per_s']} triplets/s, "
        f"{row['img_per_s']} img/s ({row['triplets_per_s'] / rate:.2f}x of model only)"
    )


if __name__ == "__main__":
    main()
