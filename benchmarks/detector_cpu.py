"""The garment detector's time per photo on a CPU (OpenVINO, one photo at a time, as a query
is answered) beside the embedder's, in one process: fp32, the CPU's own precision (bf16 where
it has it) and int8 (NNCF's post-training quantisation, calibrated on sample photos; its
boxes compared with fp32's).

    python benchmarks/detector_cpu.py [--runs 30]

Speed does not depend on the weights: the models are untrained (--pretrained none)."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._machine import cpu_name  # noqa: E402

DETECTORS = (("resnet18", 256, "light"), ("resnet18", 192, "light"), ("resnet50", 512, "full"))
EMBEDDERS = (("resnet50", 224), ("resnet18", 128))


def per_photo(run, photo, runs: int) -> float:
    """Median milliseconds of run(photo), after two warm-up calls."""
    run(photo)
    run(photo)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(photo)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--detector", help="A trained detector, timed first (int8 agreement means more on it)"
    )
    parser.add_argument(
        "--families", action="store_true", help="Also FCOS, RetinaNet, Faster R-CNN in torch"
    )
    args = parser.parse_args()
    import os

    from embedder.boxes import box_iou, letterbox
    from embedder.detector import build_detector, load_detector
    from embedder.model import build_model
    from embedder.runtime import ExportedDetector, ExportedEncoder, _nncf_quantize, export
    from embedder.transforms import eval_transform, load_image
    from ingest.sample import write_sample

    print(f"machine: {cpu_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FASHION_RETRIEVAL_CACHE"] = f"{tmp}/cache"
        root = write_sample(f"{tmp}/sample", items=30, seed=0, style="street")
        photos = [load_image(p) for p in sorted(root.rglob("comsumer_*.jpg"))[:60]]
        rows = []
        base = None
        for backbone, size in EMBEDDERS:
            model = build_model(backbone, img_size=size, pretrained="none")
            path = export(model, Path(tmp) / f"emb-{backbone}.xml")
            pixels = eval_transform(model.spec)(photos[0])[None]
            for precision in ("fp32", "auto"):
                encoder = ExportedEncoder(path, model.spec, precision=precision)
                ms = per_photo(encoder, pixels, args.runs)
                base = base or ms
                rows.append((f"embedder {backbone} {size}px", encoder.precision, ms, ""))
        detectors = [(None, None, None)] if args.detector else []
        for backbone, size, head in detectors + list(DETECTORS):
            if backbone is None:
                model = load_detector(args.detector)
                backbone, size, head = model.spec.backbone, model.spec.img_size, model.spec.head
                head += " trained"
            else:
                model = build_detector(backbone, img_size=size, head=head, pretrained="none")
            path = export(model, Path(tmp) / f"det-{backbone}-{size}-{len(rows)}.xml")
            square = np.stack([letterbox(p, size, model.spec.mean)[0] for p in photos])
            fp32 = ExportedDetector(path, model.spec, precision="fp32")
            for precision in ("fp32", "auto"):
                detector = ExportedDetector(path, model.spec, precision=precision)
                ms = per_photo(detector, square[:1], args.runs)
                rows.append((f"detector {backbone} {head} {size}px", detector.precision, ms, ""))
            int8 = path.with_name(path.stem + "-int8.xml")
            _nncf_quantize(str(path), square[:40], str(int8), model.spec.to_json())
            quantized = ExportedDetector(int8, model.spec, precision="fp32", int8=True)
            ms = per_photo(quantized, square[:1], args.runs)
            agree = _agreement(fp32, quantized, square[40:], box_iou)
            rows.append((f"detector {backbone} {head} {size}px", "int8", ms, agree))
        families = _families(photos[0], args.runs) if args.families else []
    print(f"one photo at a time, median of {args.runs}; ratio to the first embedder row")
    print(f"{'model':<34}{'precision':>10}{'ms':>9}{'ratio':>8}  int8 vs fp32")
    for name, precision, ms, note in rows:
        print(f"{name:<34}{precision:>10}{ms:>9.1f}{ms / base:>8.2f}  {note}")
    if families:
        print("torchvision's detection families, torch fp32, whole model (post-processing in):")
        for name, ms in families:
            print(f"  {name:<48}{ms:>8.1f} ms  ({ms / families[0][1]:.2f}x FCOS)")


def _families(photo, runs: int) -> list[tuple[str, float]]:
    """FCOS, RetinaNet and Faster R-CNN on the same ResNet18 feature pyramid at 256 px, as
    torchvision builds them (eval mode, one photo, torch fp32)."""
    import torch
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from embedder.boxes import letterbox

    x = [torch.from_numpy(letterbox(photo, 256)[0]).float() / 255]
    size = dict(min_size=256, max_size=256)

    def pyramid(extra=None, layers=(2, 3, 4)):
        return resnet_fpn_backbone(
            backbone_name="resnet18", weights=None, returned_layers=list(layers),
            extra_blocks=extra, trainable_layers=5,
        )  # fmt: skip

    models = {
        "FCOS (P3-P7)": FCOS(pyramid(LastLevelP6P7(256, 256)), 4, **size),
        "RetinaNet (P3-P7, 9 anchors a location)": RetinaNet(
            pyramid(LastLevelP6P7(256, 256)), 4, **size
        ),
        "Faster R-CNN (P2-P6, two stages)": FasterRCNN(pyramid(layers=(1, 2, 3, 4)), 4, **size),
    }
    out = []
    with torch.inference_mode():
        for name, model in models.items():
            model.eval()
            out.append((name, per_photo(model, x, runs)))
    return out


def _agreement(fp32, int8, squares, box_iou) -> str:
    """How far int8's best location agrees with fp32's on held-out photos: mean IoU of the
    best-scoring box, and the largest score difference there."""
    fits, gaps = [], []
    for square in squares:
        (sa,), (ba,) = fp32(square[None])
        (sb,), (bb,) = int8(square[None])
        best = int(sa.max(axis=1).argmax())
        fits.append(box_iou(ba[best], bb[best]))
        gaps.append(float(np.abs(sa[best] - sb[best]).max()))
    return f"best box IoU {np.mean(fits):.3f}, score gap {max(gaps):.3f} ({len(squares)} photos)"


if __name__ == "__main__":
    main()
