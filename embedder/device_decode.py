"""JPEG decode on the model's device (nvjpeg on CUDA): workers only read bytes.

On a GPU, decode rather than the model limits bulk ingest; torchvision's batched `decode_jpeg`
on CUDA moves it off the CPU. Workers read the file and its header (format, size, EXIF
orientation); the main process decodes the batch on the device, applies orientation, crops to
the bbox, resizes and centre-crops there. Files that are not plain RGB/greyscale JPEGs (PNG,
CMYK, ...) are decoded by the worker on the CPU as before, and a JPEG the device cannot decode
is retried on the CPU, so the set of failures is the CPU path's.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from embedder.errors import describe_failure
from embedder.geometry import (
    Box,
    center_crop,
    clip_box,
    crop_with_margin,
    interpolation,
    resize_shape,
)
from embedder.spec import ModelSpec
from embedder.storage import LOCAL, Storage
from embedder.transforms import IMAGE_FORMATS, check_aspect, eval_transform, load_pixels


@dataclass
class Item:
    """One file as a worker hands it over: raw JPEG bytes, or ready pixels, or a failure."""

    index: int
    data: torch.Tensor | None = None  # 1-D uint8 JPEG bytes, decoded on the device
    pixels: torch.Tensor | None = None  # uint8 CHW, already decoded on the CPU
    box: Box | None = None
    orientation: int = 1
    size: tuple[int, int] = (0, 0)
    failure: str = ""
    path: str = ""


class JpegFiles(Dataset):
    """Reader for device decode: bytes and header facts for JPEGs, CPU pixels for the rest."""

    def __init__(self, paths, boxes, spec: ModelSpec, storage: Storage = LOCAL):
        self.paths, self.boxes, self.spec = [str(p) for p in paths], boxes, spec
        self.storage = storage
        self.transform = eval_transform(spec)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        path, box = self.paths[i], self.boxes[i] if self.boxes is not None else None
        try:
            raw = self.storage.read(path)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:  # header only
                    fmt, mode, size = img.format, img.mode, img.size
                    orientation = int(img.getexif().get(0x0112, 1))
            check_aspect(*size)
            if fmt != "JPEG" or mode not in ("RGB", "L"):
                pixels = load_pixels(io.BytesIO(raw), box, self.transform)
                return Item(i, pixels=torch.from_numpy(pixels), path=path)
            data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            return Item(i, data=data, box=box, orientation=orientation, size=size, path=path)
        except Exception as exc:  # every unreadable file becomes a reported failure
            return Item(i, failure=describe_failure(exc), path=path)


def collate_items(items: list[Item]) -> list[Item]:
    return items


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a CHW tensor, as PIL's exif_transpose does."""
    hw = (-2, -1)
    return {
        2: lambda x: x.flip(-1),
        3: lambda x: x.flip(hw),
        4: lambda x: x.flip(-2),
        5: lambda x: x.transpose(-2, -1),
        6: lambda x: torch.rot90(x, -1, hw),
        7: lambda x: x.transpose(-2, -1).flip(hw),
        8: lambda x: torch.rot90(x, 1, hw),
    }.get(orientation, lambda x: x)(img)


def prepare(img: torch.Tensor, item: Item, spec: ModelSpec) -> torch.Tensor:
    """Oriented, bbox-cropped, resized (shorter side img_size/crop_pct), centre-cropped uint8."""
    img = orient(img, item.orientation)
    upright = item.size[::-1] if item.orientation in (5, 6, 7, 8) else item.size
    box = clip_box(item.box, *upright) if item.box is not None else None
    if box is not None:
        height, width = img.shape[-2:]
        scale = (width / upright[0], height / upright[1])
        if (crop := crop_with_margin(box, *scale, width, height)) is not None:
            left, top, right, bottom = crop
            img = img[:, top:bottom, left:right]
    height, width = img.shape[-2:]
    new_width, new_height = resize_shape(width, height, spec.img_size, spec.crop_pct)
    mode = "bicubic" if interpolation(spec.interpolation) == "bicubic" else "bilinear"
    batch = F.interpolate(
        img[None].float(), size=(new_height, new_width), mode=mode, antialias=True
    )
    out = batch[0]
    left, top = center_crop(new_width, new_height, spec.img_size)
    out = out[:, top : top + spec.img_size, left : left + spec.img_size]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _decode(items: list[Item], device: torch.device) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec
        warnings.simplefilter("ignore")
        try:
            return decode_jpeg([it.data for it in items], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: isolate it
            out = []
            for it in items:
                try:
                    out.append(decode_jpeg(it.data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def decode_batch(items: list[Item], spec: ModelSpec, device: torch.device):
    """→ (positions, uint8 NCHW pixels on `device` or None, [(position, reason)])."""
    index, pixels, failed = [], [], []
    jpegs = [it for it in items if it.data is not None]
    decoded = dict(zip((it.index for it in jpegs), _decode(jpegs, device), strict=True))
    for it in items:
        if it.failure:
            failed.append((it.index, it.failure))
            continue
        if it.pixels is not None:
            index.append(it.index)
            pixels.append(it.pixels.to(device, non_blocking=True))
            continue
        img = decoded[it.index]
        try:
            if img is None:  # the device decoder refused it: the CPU path decides
                img = torch.from_numpy(load_pixels(it.path, it.box, eval_transform(spec)))
                img = img.to(device)
                pixels.append(img)
            else:
                pixels.append(prepare(img, it, spec))
            index.append(it.index)
        except Exception as exc:
            failed.append((it.index, describe_failure(exc)))
    return index, (torch.stack(pixels) if pixels else None), failed
