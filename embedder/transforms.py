"""Image loading and preprocessing: decode, crop to bbox, resize to uint8; normalise on device."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from embedder.spec import ModelSpec

BBOX_MARGIN = 0.1  # keep a little context around the annotated garment


def load_image(
    path: str | Path, bbox: tuple[int, int, int, int] | None = None, min_side: int | None = None
) -> Image.Image:
    """Open an image as RGB, EXIF orientation applied, cropped to `bbox` (original pixels).

    With `min_side`, large JPEGs are decoded at a reduced scale (libjpeg DCT scaling) no smaller
    than needed, which cuts decode time several-fold on big photos.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a failure
        return _load(path, bbox, min_side)


def _load(path, bbox, min_side) -> Image.Image:
    with Image.open(path) as img:
        full = img.size
        if min_side and img.format == "JPEG":
            side = (
                min_side
                if bbox is None
                else min_side
                * max(full[0] / max(1, bbox[2] - bbox[0]), full[1] / max(1, bbox[3] - bbox[1]))
            )
            img.draft("RGB", (int(side), int(side)))
        img = ImageOps.exif_transpose(img)
        rgb = img.convert("RGB") if img.mode != "I;16" else _from_16bit(img)
    if bbox is not None:
        sx, sy = rgb.width / full[0], rgb.height / full[1]
        x1, y1, x2, y2 = bbox
        mx, my = (x2 - x1) * BBOX_MARGIN, (y2 - y1) * BBOX_MARGIN
        box = (
            max(0, (x1 - mx) * sx),
            max(0, (y1 - my) * sy),
            min(rgb.width, (x2 + mx) * sx),
            min(rgb.height, (y2 + my) * sy),
        )
        if box[2] - box[0] >= 8 and box[3] - box[1] >= 8:  # ignore degenerate boxes
            rgb = rgb.crop(tuple(int(round(v)) for v in box))
    return rgb


def _from_16bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.uint16) >> 8
    return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")


_PIL_FILTERS = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "bilinear": Image.BILINEAR}


class EvalTransform:
    """timm-style eval preprocessing to a uint8 CHW tensor: resize the shorter side to
    img_size / crop_pct, centre crop img_size. Pure PIL (pixel-identical to torchvision's
    Resize + CenterCrop + PILToTensor on PIL images) so that search never imports torchvision."""

    def __init__(self, spec: ModelSpec):
        self.size = spec.img_size
        self.resize = int(spec.img_size / spec.crop_pct)
        self.filter = _PIL_FILTERS.get(spec.interpolation, Image.BILINEAR)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize * long / short)
        img = img.resize(
            (self.resize, new_long) if w <= h else (new_long, self.resize), self.filter
        )
        top = int(round((img.height - self.size) / 2.0))
        left = int(round((img.width - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def eval_transform(spec: ModelSpec) -> EvalTransform:
    return EvalTransform(spec)


def train_transform(spec: ModelSpec, strong: bool):
    """Augmentation for training; `strong` for consumer photos (crop, tilt, light, blur)."""
    from torchvision.transforms import v2

    interpolation = {
        "bicubic": v2.InterpolationMode.BICUBIC,
        "nearest": v2.InterpolationMode.NEAREST,
    }.get(spec.interpolation, v2.InterpolationMode.BILINEAR)
    ops = [
        v2.RandomResizedCrop(
            spec.img_size,
            scale=(0.5 if strong else 0.75, 1.0),
            interpolation=interpolation,
            antialias=True,
        ),
        v2.RandomHorizontalFlip(),
    ]
    if strong:
        ops += [
            v2.RandomApply([v2.RandomRotation(15)], p=0.5),
            v2.ColorJitter(0.4, 0.4, 0.3, 0.05),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
        ]
    return v2.Compose([*ops, v2.PILToTensor()])


def normalize(batch: torch.Tensor, spec: ModelSpec, device: torch.device) -> torch.Tensor:
    """uint8 NCHW batch → normalised float32 on `device`, channels_last."""
    batch = batch.to(device, non_blocking=True).float().div_(255)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return ((batch - mean) / std).contiguous(memory_format=torch.channels_last)
