"""A generated DeepFashion consumer-to-shop tree: distinct garments, shop and phone-style photos,
with the real files' quirks: item ids with gaps, 1-based boxes that may end one pixel past the
photo or cover all of it, and garments whose consumer and shop photos sit in two subcategory
folders (about 3% of items in the real set)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from embedder.catalog import ITEM_FILE as ITEM_LIST
from embedder.storage import split, upload

log = logging.getLogger(__name__)

SUBCATEGORIES: dict[str, tuple[str, ...]] = {
    "DRESSES": ("Lace_Dress", "Maxi_Dress", "Sleeveless_Dress"),
    "TOPS": ("Summer_Wear", "Tees", "Chiffon"),
    "TROUSERS": ("Leggings", "Pants", "Shorts"),
}
CLOTHES_TYPE = {"TOPS": 1, "TROUSERS": 2, "DRESSES": 3}
SHOP_SIZE = (240, 320)  # width, height
PATTERNS = ("solid", "stripes", "dots", "checks", "gradient", "zigzag")
SPLIT_EVERY, SPLIT_AT = 32, 7  # item 7, 39, 71, ...: shop photos under another subcategory
ID_GAP_EVERY = 20  # one item number skipped after every 20, as the real list has gaps
WHOLE_PHOTO = 0.3  # share of shop photos whose box is the whole photo ("1 1 W H")

# Silhouettes in unit coordinates (x right, y down), one per subcategory.
_SHAPES: dict[str, list[tuple[float, float]]] = {
    "Lace_Dress": [
        (0.35, 0.05),
        (0.65, 0.05),
        (0.72, 0.2),
        (0.62, 0.35),
        (0.85, 0.95),
        (0.15, 0.95),
        (0.38, 0.35),
        (0.28, 0.2),
    ],
    "Maxi_Dress": [(0.38, 0.03), (0.62, 0.03), (0.66, 0.3), (0.8, 0.98), (0.2, 0.98), (0.34, 0.3)],
    "Sleeveless_Dress": [
        (0.33, 0.05),
        (0.67, 0.05),
        (0.7, 0.4),
        (0.78, 0.75),
        (0.22, 0.75),
        (0.3, 0.4),
    ],
    "Summer_Wear": [
        (0.3, 0.15),
        (0.7, 0.15),
        (0.9, 0.3),
        (0.8, 0.38),
        (0.72, 0.32),
        (0.72, 0.8),
        (0.28, 0.8),
        (0.28, 0.32),
        (0.2, 0.38),
        (0.1, 0.3),
    ],
    "Tees": [
        (0.3, 0.12),
        (0.42, 0.12),
        (0.5, 0.18),
        (0.58, 0.12),
        (0.7, 0.12),
        (0.95, 0.35),
        (0.85, 0.45),
        (0.74, 0.38),
        (0.74, 0.85),
        (0.26, 0.85),
        (0.26, 0.38),
        (0.15, 0.45),
        (0.05, 0.35),
    ],
    "Chiffon": [
        (0.32, 0.1),
        (0.68, 0.1),
        (0.98, 0.5),
        (0.86, 0.56),
        (0.7, 0.4),
        (0.78, 0.88),
        (0.22, 0.88),
        (0.3, 0.4),
        (0.14, 0.56),
        (0.02, 0.5),
    ],
    "Leggings": [
        (0.36, 0.05),
        (0.64, 0.05),
        (0.62, 0.97),
        (0.53, 0.97),
        (0.5, 0.35),
        (0.47, 0.97),
        (0.38, 0.97),
    ],
    "Pants": [
        (0.28, 0.05),
        (0.72, 0.05),
        (0.8, 0.97),
        (0.56, 0.97),
        (0.5, 0.3),
        (0.44, 0.97),
        (0.2, 0.97),
    ],
    "Shorts": [
        (0.25, 0.3),
        (0.75, 0.3),
        (0.85, 0.75),
        (0.55, 0.78),
        (0.5, 0.5),
        (0.45, 0.78),
        (0.15, 0.75),
    ],
}


@dataclass(frozen=True)
class Garment:
    """One item: its shape, colours and pattern, all drawn from the item's own random stream.
    `shop_subcategory`: the folder of its shop photos (another one than its consumer photos'
    for a few items, as in the real dataset)."""

    category: str
    subcategory: str
    shop_subcategory: str
    item_id: str
    colors: np.ndarray  # (3, 3) uint8
    pattern: str
    scale: float
    angle: float
    squeeze: float


def _garment(index: int, seed: int) -> Garment:
    rng = np.random.default_rng([seed, index, 0])
    category = list(SUBCATEGORIES)[index % len(SUBCATEGORIES)]
    subs = SUBCATEGORIES[category]
    position = (index // len(SUBCATEGORIES)) % len(subs)
    moved = index % SPLIT_EVERY == SPLIT_AT
    return Garment(
        category=category,
        subcategory=subs[position],
        shop_subcategory=subs[(position + 1) % len(subs)] if moved else subs[position],
        item_id=f"id_{index + 1 + index // ID_GAP_EVERY:08d}",
        colors=rng.integers(0, 256, size=(3, 3), dtype=np.uint8),
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        scale=float(rng.uniform(4, 14)),
        angle=float(rng.uniform(0, 180)),
        squeeze=float(rng.uniform(0.85, 1.15)),
    )


def _texture(g: Garment, size: tuple[int, int]) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.deg2rad(g.angle)
    u = (xx * np.cos(a) + yy * np.sin(a)) / g.scale
    v = (-xx * np.sin(a) + yy * np.cos(a)) / g.scale
    c0, c1, c2 = (c.astype(np.float32) for c in g.colors)
    if g.pattern == "solid":
        mix = np.zeros_like(u)
    elif g.pattern == "stripes":
        mix = (np.floor(u) % 2).astype(np.float32)
    elif g.pattern == "dots":
        mix = (((u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2) < 0.09).astype(np.float32)
    elif g.pattern == "checks":
        mix = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    elif g.pattern == "gradient":
        mix = (yy / h).astype(np.float32)
    else:  # zigzag
        mix = ((u + np.abs((v % 2) - 1)) % 2 > 1).astype(np.float32)
    rgb = c0 * (1 - mix[..., None]) + c1 * mix[..., None]
    trim = (yy < h * 0.04) | (yy > h * 0.96)  # hem and collar bands in the third colour
    rgb[trim] = c2
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def _cutout(g: Garment, size: tuple[int, int]) -> Image.Image:
    """The garment as RGBA on a transparent canvas of `size`."""
    w, h = size
    shape = [(0.5 + (x - 0.5) * g.squeeze, y) for x, y in _SHAPES[g.subcategory]]
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon([(x * w, y * h) for x, y in shape], fill=255)
    piece = _texture(g, size).convert("RGBA")
    piece.putalpha(mask)
    return piece


def _bbox(alpha: Image.Image) -> tuple[int, int, int, int]:
    """The visible garment as the real Anno file writes boxes: 1-based x1 y1 x2 y2."""
    box = alpha.getbbox() or (0, 0, alpha.width, alpha.height)
    return box[0] + 1, box[1] + 1, box[2], box[3]


def _whole_photo(size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box over the whole photo, sometimes one pixel past it (301 on a 300-pixel side)."""
    past = int(rng.random() < 0.5)
    return 1, 1, size[0] + past, size[1] + past


def shop_photo(g: Garment, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, ...]]:
    """The garment on a plain light studio background; each shot framed a little differently."""
    tone = int(rng.integers(225, 256))
    canvas = Image.new("RGBA", SHOP_SIZE, (tone, tone, tone, 255))
    scale = rng.uniform(0.8, 1.0)
    size = (int(SHOP_SIZE[0] * scale), int(SHOP_SIZE[1] * scale))
    piece = _cutout(g, SHOP_SIZE).resize(size, Image.BILINEAR)
    if rng.random() < 0.5:
        piece = piece.transpose(Image.FLIP_LEFT_RIGHT)
    layer = Image.new("RGBA", SHOP_SIZE, (0, 0, 0, 0))
    offset = (
        int(rng.integers(0, SHOP_SIZE[0] - size[0] + 1)),
        int(rng.integers(0, SHOP_SIZE[1] - size[1] + 1)),
    )
    layer.paste(piece, offset, piece)
    canvas.alpha_composite(layer)
    if rng.random() < WHOLE_PHOTO:
        return canvas.convert("RGB"), _whole_photo(SHOP_SIZE, rng)
    return canvas.convert("RGB"), _bbox(layer.getchannel("A"))


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = top * (1 - ramp) + bottom * ramp + rng.normal(0, 12, (h, w, 3))
    img = np.broadcast_to(img, (h, w, 3)).clip(0, 255).astype(np.uint8)
    bg = Image.fromarray(img, "RGB")
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(2, 7))):  # furniture, people, signs
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(20, w // 2), y0 + rng.integers(20, h // 2)
        draw.rectangle((int(x0), int(y0), int(x1), int(y1)), fill=tuple(rng.integers(0, 256, 3)))
    return bg


def consumer_photo(g: Garment, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, ...]]:
    """The same garment as a phone would show it: clutter, scale, tilt, light, blur."""
    w, h = int(rng.integers(260, 360)), int(rng.integers(300, 420))
    canvas = _background(rng, (w, h)).convert("RGBA")
    scale = rng.uniform(0.55, 0.95)
    pw, ph = int(SHOP_SIZE[0] * scale * w / 260), int(SHOP_SIZE[1] * scale * h / 400)
    piece = _cutout(g, SHOP_SIZE).resize((pw, ph), Image.BILINEAR)
    piece = piece.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, expand=True)
    ox = int(rng.integers(-piece.width // 8, max(1, w - piece.width * 7 // 8)))
    oy = int(rng.integers(-piece.height // 8, max(1, h - piece.height * 7 // 8)))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    layer.paste(piece, (ox, oy), piece)
    canvas.alpha_composite(layer)
    img = canvas.convert("RGB")
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.35))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
    cast = Image.new("RGB", img.size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = Image.blend(img, cast, float(rng.uniform(0, 0.15)))
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.8))))
    return img, _bbox(layer.getchannel("A"))


def _split(rng: np.random.Generator) -> str:
    r = rng.random()
    return "train" if r < 0.6 else ("val" if r < 0.8 else "test")


def _folder(out: Path, g: Garment, subcategory: str) -> tuple[Path, str]:
    rel = f"img/{g.category}/{subcategory}/{g.item_id}"
    (out / rel).mkdir(parents=True, exist_ok=True)
    return out / rel, rel


def _write_item(out: Path, index: int, seed: int) -> tuple[str, list[str], list[str]]:
    """Write one garment's photos; returns its (item id, pair lines, bbox lines)."""
    g = _garment(index, seed)
    rng = np.random.default_rng([seed, index, 1])
    split = _split(rng)
    kind = CLOTHES_TYPE[g.category]
    shops, consumers, boxes = [], [], []
    folder, rel = _folder(out, g, g.shop_subcategory)
    for n in range(1, int(rng.integers(1, 3)) + 1):
        img, box = shop_photo(g, rng)
        img.save(folder / f"shop_{n:02d}.jpg", quality=92)
        shops.append(f"{rel}/shop_{n:02d}.jpg")
        boxes.append(f"{shops[-1]} {kind} 1 {box[0]} {box[1]} {box[2]} {box[3]}")
    folder, rel = _folder(out, g, g.subcategory)
    for n in range(1, int(rng.integers(1, 4)) + 1):
        img, box = consumer_photo(g, rng)
        img.save(folder / f"comsumer_{n:02d}.jpg", quality=int(rng.integers(40, 86)))
        consumers.append(f"{rel}/comsumer_{n:02d}.jpg")
        boxes.append(f"{consumers[-1]} {kind} 2 {box[0]} {box[1]} {box[2]} {box[3]}")
    pairs = [f"{c} {s} {g.item_id} {split}" for c in consumers for s in shops]
    return g.item_id, pairs, boxes


def write_sample(
    out: str | Path,
    items: int = 60,
    seed: int = 0,
    processes: int = 1,
    storage_options: dict | None = None,
) -> Path | str:
    """Write `items` garments as a DeepFashion consumer-to-shop tree under `out` (a folder, or
    an object-store URL: drawn in a temporary folder, then uploaded); return `out`.

    Deterministic per (seed, item): the same seed gives byte-identical files, whatever the
    number of `processes` drawing them.
    """
    if items < 1:
        raise ValueError("items must be at least 1")
    if processes < 1:
        raise ValueError("processes must be at least 1")
    storage, target = split(str(out), storage_options)
    if not storage.local:
        with tempfile.TemporaryDirectory(prefix="sample-") as folder:
            write_sample(folder, items, seed, processes)
            upload(folder, storage, target)
        return str(out)
    out = Path(target)
    if processes == 1:
        written = [_write_item(out, index, seed) for index in range(items)]
    else:
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        with ProcessPoolExecutor(processes) as pool:
            written = list(
                pool.map(partial(_write_item, out, seed=seed), range(items), chunksize=64)
            )
    pairs = [line for _, item_pairs, _ in written for line in item_pairs]
    boxes = [line for _, _, item_boxes in written for line in item_boxes]
    _write_list(
        out / "Eval" / "list_eval_partition.txt",
        "image_pair_name_1 image_pair_name_2 item_id evaluation_status",
        pairs,
    )
    _write_list(
        out / "Anno" / "list_bbox_consumer2shop.txt",
        "image_name clothes_type source_type x_1 y_1 x_2 y_2",
        boxes,
    )
    ids = [item_id for item_id, _, _ in written]  # the real list: a count, then one id a line
    (out / ITEM_LIST).write_text(f"{len(ids)}\n" + "".join(i + "\n" for i in ids))
    log.info("sample: %d items, %d images, %d pairs in %s", items, len(boxes), len(pairs), out)
    return out


def _write_list(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{len(rows)}\n{header}\n" + "".join(r + "\n" for r in rows))
