"""A generated DeepFashion consumer-to-shop tree: distinct garments, shop and phone-style photos,
with the real files' quirks: item ids with gaps, 1-based boxes that may end one pixel past the
photo or cover all of it, and garments whose consumer and shop photos sit in two subcategory
folders (about 3% of items in the real set)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from embedder.catalog import ITEM_FILE as ITEM_LIST
from embedder.spec import CATEGORY_TYPES as CLOTHES_TYPE
from embedder.storage import split, upload

log = logging.getLogger(__name__)

SUBCATEGORIES: dict[str, tuple[str, ...]] = {
    "DRESSES": ("Lace_Dress", "Maxi_Dress", "Sleeveless_Dress"),
    "TOPS": ("Summer_Wear", "Tees", "Chiffon"),
    "TROUSERS": ("Leggings", "Pants", "Shorts"),
}
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
    return _phone_look(canvas.convert("RGB"), rng), _bbox(layer.getchannel("A"))


STREET_SHARE = (0.30, 0.55)  # street photos: the garment's height as a share of the frame's
SKIN = ((233, 196, 170), (198, 150, 110), (141, 95, 62), (92, 61, 40))
# Where a garment sits on the figure, per clothes_type: the top of its box as a share of the
# figure's height from the head, and how much of the figure it covers.
_ON_FIGURE = {1: (0.16, 0.36), 2: (0.48, 0.50), 3: (0.16, 0.78)}


def _clutter(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A street: a graded sky, then buildings, signs, cars and passers-by as blocks and
    ellipses in random colours."""
    bg = _background(rng, size)
    draw = ImageDraw.Draw(bg)
    w, h = size
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    for _ in range(int(rng.integers(1, 4))):  # poles and kerbs
        x = int(rng.integers(0, w))
        draw.line((x, 0, x + int(rng.integers(-20, 20)), h), fill=tuple(rng.integers(0, 120, 3)),
                  width=int(rng.integers(2, 8)))  # fmt: skip
    return bg


def _figure(draw: ImageDraw.ImageDraw, box, kind: int, rng: np.random.Generator) -> None:
    """A person wearing the garment whose box is `box`: head, arms and legs drawn around it
    (under the garment), in one skin tone; the legs, for a top, in plain dark trousers."""
    x1, y1, x2, y2 = box
    top, share = _ON_FIGURE[kind]
    height = (y2 - y1) / share  # the figure's height, head to feet
    head_y = y1 - top * height
    cx, half = (x1 + x2) / 2, (x2 - x1) / 2
    skin = SKIN[int(rng.integers(len(SKIN)))]
    r = height * 0.065
    draw.ellipse((cx - r, head_y, cx + r, head_y + 2 * r), fill=skin)
    neck = head_y + 2 * r
    draw.rectangle((cx - r / 2.5, neck - 2, cx + r / 2.5, head_y + 0.17 * height), fill=skin)
    shoulder, waist, hip = head_y + 0.16 * height, head_y + 0.5 * height, head_y + 0.55 * height
    for side in (-1, 1):  # arms hang from the shoulders, past the garment's sides
        ax = cx + side * half * 0.75
        draw.line((ax, shoulder + r, ax + side * height * 0.09, waist), fill=skin,
                  width=max(3, int(height * 0.045)))  # fmt: skip
    legs = skin if kind == 3 or rng.random() < 0.3 else tuple(rng.integers(20, 90, 3))
    if kind == 2:
        draw.rectangle((cx - half * 0.7, shoulder, cx + half * 0.7, hip), fill=skin)  # bare torso
    for side in (-1, 1):
        lx = cx + side * half * 0.3
        draw.line((lx, hip, lx + side * height * 0.03, head_y + 0.97 * height), fill=legs,
                  width=max(4, int(height * 0.06)))  # fmt: skip


def _dress(
    canvas: Image.Image,
    g: Garment,
    height: float,
    at: tuple[float, float],
    rng: np.random.Generator,
    tilt: float = 0.0,
) -> tuple[int, int, int, int] | None:
    """Put garment `g` on `canvas` so that its box is `height` pixels tall with its top-left
    corner near `at`; returns the visible box (1-based, clipped), None when off the photo."""
    piece = _cutout(g, SHOP_SIZE)
    visible = piece.getchannel("A").getbbox()
    piece = piece.crop(visible)
    scale = height / piece.height
    piece = piece.resize((max(1, int(piece.width * scale)), max(1, int(height))), Image.BILINEAR)
    if rng.random() < 0.5:
        piece = piece.transpose(Image.FLIP_LEFT_RIGHT)
    if tilt:
        piece = piece.rotate(tilt, resample=Image.BILINEAR, expand=True)
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    layer.paste(piece, (int(at[0]), int(at[1])), piece)
    alpha = layer.getchannel("A")
    if alpha.getbbox() is None:
        return None
    canvas.alpha_composite(layer)
    return _bbox(alpha)


def _phone_look(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Light, colour, a colour cast and blur as a phone's photo has them."""
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.35))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
    cast = Image.new("RGB", img.size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = Image.blend(img, cast, float(rng.uniform(0, 0.15)))
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.8))))
    return img


def street_photo(g: Garment, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, ...]]:
    """The garment worn in the street: a person on a cluttered background, the garment's box
    30-55% of the frame's height, then the phone's light and blur."""
    w, h = int(rng.integers(300, 400)), int(rng.integers(380, 500))
    canvas = _clutter(rng, (w, h)).convert("RGBA")
    kind = CLOTHES_TYPE[g.category]
    height = rng.uniform(*STREET_SHARE) * h
    width = height * SHOP_SIZE[0] / SHOP_SIZE[1] * 0.9  # about: the cutout's aspect
    top, share = _ON_FIGURE[kind]
    figure = height / share
    x = rng.uniform(0.02 * w, max(0.03 * w, w - width * 1.1))
    y = rng.uniform(top * figure * 0.6, max(top * figure * 0.6 + 1, h - height - 4))
    _figure(ImageDraw.Draw(canvas), (x, y, x + width, y + height), kind, rng)
    box = _dress(canvas, g, height, (x, y), rng, tilt=float(rng.uniform(-8, 8)))
    return _phone_look(canvas.convert("RGB"), rng), box


OUTFIT_DIR = "outfits"  # outside img/: photos of two garments at once, not part of the catalog
OUTFIT_LIST = f"{OUTFIT_DIR}/list_outfits.txt"


def outfit_photo(top: Garment, bottom: Garment, rng: np.random.Generator):
    """A person in a top above trousers: the photo and each garment's (box, clothes_type)."""
    w, h = int(rng.integers(320, 420)), int(rng.integers(440, 560))
    canvas = _clutter(rng, (w, h)).convert("RGBA")
    figure = rng.uniform(0.8, 0.95) * h
    head = rng.uniform(0.01, max(0.02, 0.98 - figure / h)) * h
    upper = figure * _ON_FIGURE[1][1]
    width = upper * SHOP_SIZE[0] / SHOP_SIZE[1] * 0.9
    x = rng.uniform(0.05 * w, max(0.06 * w, w - width * 1.1))
    y = head + _ON_FIGURE[1][0] * figure
    _figure(ImageDraw.Draw(canvas), (x, y, x + width, y + upper), 1, rng)
    lower = figure * _ON_FIGURE[2][1]
    y2 = head + _ON_FIGURE[2][0] * figure
    bottom_box = _dress(canvas, bottom, lower, (x + width * 0.08, y2), rng)
    top_box = _dress(canvas, top, upper, (x, y), rng)  # the top over the trousers' waist
    return _phone_look(canvas.convert("RGB"), rng), [(top_box, 1), (bottom_box, 2)]


def write_outfits(out: Path, garments: list[Garment], splits: list[str], seed: int) -> int:
    """Photos of a test-split top worn above test-split trousers (each test top and each test
    pair of trousers in one photo at least), under outfits/, listed in
    outfits/list_outfits.txt (a count, a header, then a photo's name, each item id, its
    clothes_type and box a line); returns how many."""
    tops = [
        g for g, s in zip(garments, splits, strict=True) if g.category == "TOPS" and s == "test"
    ]
    bottoms = [
        g for g, s in zip(garments, splits, strict=True) if g.category == "TROUSERS" and s == "test"
    ]
    rows, count = [], max(len(tops), len(bottoms)) if tops and bottoms else 0
    pairs = ((tops[n % len(tops)], bottoms[n % len(bottoms)]) for n in range(count))
    for n, (top, bottom) in enumerate(pairs, 1):
        rng = np.random.default_rng([seed, n, 7])
        img, boxes = outfit_photo(top, bottom, rng)
        name = f"outfit_{n:02d}.jpg"
        (out / OUTFIT_DIR).mkdir(parents=True, exist_ok=True)
        img.save(out / OUTFIT_DIR / name, quality=85)
        for g, (box, kind) in zip((top, bottom), boxes, strict=True):
            if box is not None:
                rows.append(f"{name} {g.item_id} {kind} {' '.join(map(str, box))}")
    if rows:
        _write_list(out / OUTFIT_LIST, "image_name item_id clothes_type x_1 y_1 x_2 y_2", rows)
    return count


def _split(rng: np.random.Generator) -> str:
    r = rng.random()
    return "train" if r < 0.6 else ("val" if r < 0.8 else "test")


def _folder(out: Path, g: Garment, subcategory: str) -> tuple[Path, str]:
    rel = f"img/{g.category}/{subcategory}/{g.item_id}"
    (out / rel).mkdir(parents=True, exist_ok=True)
    return out / rel, rel


STYLES = {"phone": consumer_photo, "street": street_photo}  # how consumer photos look


def _write_item(
    out: Path, index: int, seed: int, style: str = "phone"
) -> tuple[str, list[str], list[str]]:
    """Write one garment's photos; returns its (item id, pair lines, bbox lines)."""
    g = _garment(index, seed)
    rng = np.random.default_rng([seed, index, 1])
    split = _split(rng)  # the item stream's first draw (write_outfits draws it again)
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
        img, box = STYLES[style](g, rng)
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
    style: str = "phone",
) -> Path | str:
    """Write `items` garments as a DeepFashion consumer-to-shop tree under `out` (a folder, or
    an object-store URL: drawn in a temporary folder, then uploaded); return `out`.

    `style`: consumer photos as a phone's close-up ("phone": the garment 55-95% of the frame)
    or as street photos ("street": a person in a cluttered street, the garment 30-55% of the
    frame's height), the street style adding outfit photos (a test top above test trousers)
    under outfits/, outside the image tree. Deterministic per (seed, item): the same seed
    gives byte-identical files, whatever the number of `processes` drawing them.
    """
    if items < 1:
        raise ValueError("items must be at least 1")
    if processes < 1:
        raise ValueError("processes must be at least 1")
    if style not in STYLES:
        raise ValueError(f"style {style!r}: choose {' or '.join(STYLES)}")
    storage, target = split(str(out), storage_options)
    if not storage.local:
        with tempfile.TemporaryDirectory(prefix="sample-") as folder:
            write_sample(folder, items, seed, processes, style=style)
            upload(folder, storage, target)
        return str(out)
    out = Path(target)
    draw = partial(_write_item, out, seed=seed, style=style)
    if processes == 1:
        written = [draw(index) for index in range(items)]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as pool:
            written = list(pool.map(draw, range(items), chunksize=64))
    if style == "street":
        garments = [_garment(index, seed) for index in range(items)]
        splits = [_split(np.random.default_rng([seed, index, 1])) for index in range(items)]
        write_outfits(out, garments, splits, seed)
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
