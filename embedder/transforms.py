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
    return _load(path, bbox, min_side, strict_box, _cropped)


def load_pixels(
    path,
    bbox: tuple[float, float, float, float] | None,
    transform: EvalTransform,
    strict_box: bool = False,
) -> np.ndarray:
    """`transform`'s uint8 CHW pixels of the photo at `path` in `bbox`: those of
    `transform(load_image(path, bbox, transform.min_side, strict_box))` up to rounding, without
    copying the crop (the centre window of the box is resampled straight out of the decoded
    photo). The one decode, crop and resize of ingest, the web app and `search` alike."""
    return _load(path, bbox, transform.min_side, strict_box, transform)


def _cropped(img: Image.Image, region: tuple[int, int, int, int] | None) -> Image.Image:
    return img.crop(region) if region is not None else img


def _load(path, bbox, min_side, strict_box, finish):
    """Decode the photo upright and RGB, then `finish(rgb, region)`: region the pixels of the
    clipped box and its margin (None: the whole photo), finished while the file is open."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a failure
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            rgb, region = _decoded(img, bbox, min_side, strict_box)
            return finish(rgb, region)


def _decoded(img: Image.Image, bbox, min_side, strict_box: bool):
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
    if img.mode == "I;16":
        img = _from_16bit(img)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    else:
        img.load()  # the decoded photo itself: whatever finishes it copies what it keeps
    region = None
    if box is not None:
        scale = (img.width / full[0], img.height / full[1])
        region = crop_with_margin(box, *scale, img.width, img.height)
    return img, region


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
    img_size / crop_pct, centre crop img_size (torchvision's Resize + CenterCrop +
    PILToTensor on PIL images), in pure PIL so that search never imports torchvision, and with
    an exported model not torch either.

    Only the crop is resampled: Pillow's resize with `box=` computes the img_size × img_size
    window of the resized photo from the same filter taps, without the pixels the centre crop
    throws away (a third of them for a 128-pixel model on a portrait photo) and without copying
    the photo's box first. Its sampling grid is carried in single precision, and Pillow may
    take the two passes in the other order, so that a few per cent of values come out one
    level off torchvision's (and a handful of the 0.01% that do by more, up to ~15 levels, for
    a bicubic filter): tests/embedder/test_model.py holds it to that."""

    def __init__(self, spec: ModelSpec):
        self.size, self.crop_pct = spec.img_size, spec.crop_pct
        self.min_side = int(spec.img_size / spec.crop_pct)  # a decode at least this large
        self.filter = _PIL_FILTERS[interpolation(spec.interpolation)]

    def __call__(self, img: Image.Image, region: tuple[int, int, int, int] | None = None):
        """The pixels of `img` (within `region`, left top right bottom: all of it by default)."""
        left, top, right, bottom = region if region is not None else (0, 0, *img.size)
        width, height = right - left, bottom - top
        check_aspect(width, height, "image (or its box)")
        size = self.size
        resized = resize_shape(width, height, size, self.crop_pct)  # short side: min_side
        x, y = center_crop(*resized, size)
        if self.min_side < size:  # (crop_pct > 1) the crop pads: resize, then crop as before
            img = img.crop((left, top, right, bottom)).resize(resized, self.filter)
            img = img.crop((x, y, x + size, y + size))
        else:
            sx, sy = width / resized[0], height / resized[1]
            window = (left + x * sx, top + y * sy, left + (x + size) * sx, top + (y + size) * sy)
            img = img.resize((size, size), self.filter, box=window)
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
