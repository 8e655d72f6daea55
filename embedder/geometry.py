"""Preprocessing geometry, once for every decoder (PIL on the CPU, torch on the device): the
garment box with its margin, the resize shape, the centre crop, the interpolation names."""

from __future__ import annotations

import math

BBOX_MARGIN = 0.1  # keep a little context around the annotated garment
MIN_BOX = 8  # pixels: a smaller box is no garment
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # timm's names; anything else: bilinear
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in the upright photo's pixels


def interpolation(name: str) -> str:
    """A timm interpolation name as one of INTERPOLATIONS."""
    return name if name in INTERPOLATIONS else "bilinear"


def clip_box(bbox, width: int, height: int) -> tuple[float, float, float, float] | None:
    """`bbox` clipped to a width × height photo; None when it is empty, tiny or not finite."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
    y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
    if x2 - x1 < MIN_BOX or y2 - y1 < MIN_BOX:
        return None
    return x1, y1, x2, y2


def crop_with_margin(
    box: tuple[float, float, float, float], scale_x: float, scale_y: float, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """The pixels (left, top, right, bottom) to keep of a decoded width × height image for a
    clipped `box` given in the upright photo's pixels (scale: decoded / photo), margin added;
    None when too little is left."""
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * BBOX_MARGIN, (y2 - y1) * BBOX_MARGIN
    left, top = max(0, round((x1 - mx) * scale_x)), max(0, round((y1 - my) * scale_y))
    right = min(width, round((x2 + mx) * scale_x))
    bottom = min(height, round((y2 + my) * scale_y))
    if right - left < MIN_BOX or bottom - top < MIN_BOX:
        return None
    return left, top, right, bottom


def resize_shape(width: int, height: int, img_size: int, crop_pct: float) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to img_size / crop_pct (timm's eval)."""
    short = int(img_size / crop_pct)
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def center_crop(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of the centred size × size crop."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
