"""Image loading and preprocessing: decode, crop to bbox, resize to uint8 CHW arrays (Pillow and
NumPy only: the query path of an exported model never imports torch); normalise on device."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from embedder.errors import BadBox, TooThin
from embedder.geometry import (
    MIN_BOX,
    center_crop,
    clip_box,
    crop_with_margin,
    interpolation,
    resize_shape,
)
from embedder.spec import ModelSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")  # what ingest, search and the web app read
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})  # the files they take
MAX_ASPECT = 20  # a photo (or its box) more than this many times longer than wide is refused


def check_aspect(width: int, height: int, what: str = "photo") -> None:
    """Refuse a photo (or crop) so thin that resizing its short side for the model would make
    it enormous: TooThin."""
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise TooThin(
            f"The {what} is {width} × {height} pixels: more than {MAX_ASPECT} times longer than "
            f"wide, which is not a garment photo."
        )


def load_image(
    path,
    bbox: tuple[float, float, float, float] | None = None,
    min_side: int | None = None,
    strict_box: bool = False,
) -> Image.Image:
    """Open an image (a path or a binary file object; JPEG, PNG, WebP or BMP) as RGB, EXIF
    orientation applied, cropped to `bbox` (x1, y1, x2, y2 in the pixels of the upright photo,
    as a viewer shows it).

    The box is clipped to the photo; a box that is empty or not finite after clipping is
    ignored (the whole photo is used) with a warning, or with `strict_box` (a box a user drew)
    refused as BadBox. A photo far longer than wide is refused (TooThin) before its pixels are
    decoded. With `min_side`, large JPEGs are decoded at a reduced scale (libjpeg DCT scaling)
    no smaller than needed, which cuts decode time several-fold on big photos.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a failure
        return _load(path, bbox, min_side, strict_box)


def _load(path, bbox, min_side, strict_box: bool = False) -> Image.Image:
    with Image.open(path, formats=IMAGE_FORMATS) as img:
        stored = img.size
        check_aspect(*stored)
        orientation = img.getexif().get(0x0112, 1)
        turned = orientation in (5, 6, 7, 8)  # EXIF orientation swaps axes
        full = (stored[1], stored[0]) if turned else stored  # the upright photo's size
        box = clip_box(bbox, *full) if bbox is not None else None
        if bbox is not None and box is None:
            if strict_box:
                raise BadBox(
                    f"The box {_shown(bbox)} lies outside the {full[0]} × {full[1]} photo or is "
                    f"smaller than {MIN_BOX} × {MIN_BOX} pixels."
                )
            log.warning("ignoring box %s outside or degenerate for a %dx%d photo", bbox, *full)
        if min_side and img.format == "JPEG":
            side = min_side
            if box is not None:  # decode the box, not the photo, at min_side or more
                side *= max(full) / min(box[2] - box[0], box[3] - box[1])
            img.draft("RGB", (int(side), int(side)))
        if orientation != 1:  # (exif_transpose copies even an upright photo)
            img = ImageOps.exif_transpose(img)
        rgb = img.convert("RGB") if img.mode != "I;16" else _from_16bit(img)
    if box is not None:
        scale = (rgb.width / full[0], rgb.height / full[1])
        if (crop := crop_with_margin(box, *scale, rgb.width, rgb.height)) is not None:
            rgb = rgb.crop(crop)
    return rgb


def photo_size(source) -> tuple[int, int]:
    """The upright photo's width and height (EXIF orientation applied), from its header; a
    file object is left where it was."""
    at = source.tell() if hasattr(source, "tell") else None
    try:
        with Image.open(source, formats=IMAGE_FORMATS) as img:
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            return (img.height, img.width) if turned else img.size
    finally:
        if at is not None:
            source.seek(at)


def _shown(bbox) -> str:
    return ",".join(f"{float(v):g}" for v in bbox)


def _from_16bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.uint16) >> 8
    return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")


_PIL_FILTERS = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "bilinear": Image.BILINEAR}


class EvalTransform:
    """timm-style eval preprocessing to a uint8 CHW array: resize the shorter side to
    img_size / crop_pct, centre crop img_size. Pure PIL (pixel-identical to torchvision's
    Resize + CenterCrop + PILToTensor on PIL images) so that search never imports torchvision,
    and with an exported model not torch either."""

    def __init__(self, spec: ModelSpec):
        self.size, self.crop_pct = spec.img_size, spec.crop_pct
        self.filter = _PIL_FILTERS[interpolation(spec.interpolation)]

    def __call__(self, img: Image.Image) -> np.ndarray:
        check_aspect(*img.size, "image (or its box)")
        img = img.resize(resize_shape(*img.size, self.size, self.crop_pct), self.filter)
        left, top = center_crop(img.width, img.height, self.size)
        img = img.crop((left, top, left + self.size, top + self.size))
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def eval_transform(spec: ModelSpec) -> EvalTransform:
    return EvalTransform(spec)


def train_transform(spec: ModelSpec, strong: bool):
    """Augmentation for training; `strong` for consumer photos (crop, tilt, light, blur)."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode(interpolation(spec.interpolation))
    ops = [
        v2.RandomResizedCrop(
            spec.img_size,
            scale=(0.5 if strong else 0.75, 1.0),
            interpolation=mode,
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


def normalize(batch, spec: ModelSpec, device: torch.device) -> torch.Tensor:
    """uint8 NCHW batch (tensor or array) → normalised float32 on `device`, channels_last."""
    import torch

    batch = torch.as_tensor(batch).to(device, non_blocking=True).float().div_(255)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return ((batch - mean) / std).contiguous(memory_format=torch.channels_last)
