"""The dataset catalog: one pandas table describing every image under a root."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embedder.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
COLUMNS = [
    "path",
    "category",
    "subcategory",
    "item_id",
    "source",
    "split",
    "x1",
    "y1",
    "x2",
    "y2",
    "size",
    "mtime",
]
EVAL_FILE = "Eval/list_eval_partition.txt"
BBOX_FILE = "Anno/list_bbox_consumer2shop.txt"
ITEM_FILE = "Anno/list_item_consumer2shop.txt"
UNKNOWN = "unknown"


class CatalogError(UserError, ValueError):
    """The root cannot be read as an image dataset."""


@dataclass(frozen=True)
class DatasetRoot:
    """Where a dataset lives: `base` holds Anno/ and Eval/, `images` the image tree."""

    base: Path
    images: Path

    @property
    def prefix(self) -> str:
        """How catalog paths start, relative to `base` ("img/" for DeepFashion, "" otherwise)."""
        rel = os.path.relpath(self.images, self.base)
        return "" if rel == "." else rel.replace(os.sep, "/") + "/"


def locate(root: str | Path) -> DatasetRoot:
    """Accept the dataset folder, its `img/` folder (or `Img/img/`), or any folder of images."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CatalogError(f"root {str(root)!r} does not exist")
    if not root.is_dir():
        raise CatalogError(f"root {str(root)!r} is not a folder")
    root = root.resolve()
    for images in (root / "img", root / "Img" / "img"):
        if images.is_dir():
            return DatasetRoot(base=root, images=images)
    if root.name == "img":
        base = root.parent.parent if root.parent.name == "Img" else root.parent
        return DatasetRoot(base=base, images=root)
    return DatasetRoot(base=root, images=root)


def _walk(top: Path) -> list[os.DirEntry]:
    """Every image file below `top`, in sorted order, following symlinked files."""
    found: list[os.DirEntry] = []
    stack = [str(top)]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc)
            continue
        subdirs = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            elif entry.name.startswith("._"):
                continue  # macOS AppleDouble metadata beside a copied photo, not an image
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(entry)
        stack.extend(reversed(subdirs))
    return found


def _source(filename: str) -> str:
    name = filename.lower()
    if name.startswith(("comsumer", "consumer")):
        return "consumer"
    if name.startswith("shop"):
        return "shop"
    return UNKNOWN


def _labels(parts: tuple[str, ...]) -> tuple[str, str, str]:
    """(category, subcategory, item_id) from the folders above a file, where present."""
    folders = parts[:-1]
    if len(folders) >= 3 and folders[-1].startswith("id_"):
        return folders[-3], folders[-2], folders[-1]
    if folders and folders[-1].startswith("id_"):
        upper = folders[:-1]
        return (upper[0] if upper else UNKNOWN), UNKNOWN, folders[-1]
    category = folders[0] if folders else UNKNOWN
    subcategory = folders[1] if len(folders) >= 2 else UNKNOWN
    return category, subcategory, UNKNOWN


def _read_table(path: Path, min_fields: int) -> list[list[str]]:
    """Rows of a DeepFashion list file (line 1 a count, line 2 a header); [] if absent."""
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh):
            fields = line.split()
            if number < 2 and (len(fields) <= 1 or not fields[0].startswith("img/")):
                continue  # the count line and the header line
            if len(fields) >= min_fields:
                rows.append(fields)
    return rows


def read_items(root: str | Path | DatasetRoot) -> list[str]:
    """The item ids of Anno/list_item_consumer2shop.txt ([] if absent): ONE header line (the
    count), then one id a line; the numbering has gaps."""
    where = root if isinstance(root, DatasetRoot) else locate(root)
    path = where.base / ITEM_FILE
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as fh:
        lines = [line.split() for line in fh]
    return [f[0] for n, f in enumerate(lines) if f and not (n == 0 and f[0].isdigit())]


def read_pairs(root: str | Path) -> pd.DataFrame:
    """Consumer/shop pairs from Eval/list_eval_partition.txt: consumer, shop, item_id, split."""
    where = locate(root)
    rows = _read_table(where.base / EVAL_FILE, 4)
    return pd.DataFrame(
        [r[:4] for r in rows], columns=["consumer", "shop", "item_id", "split"], dtype="string"
    )


def _splits(where: DatasetRoot) -> dict[str, str]:
    split: dict[str, str] = {}
    for consumer, shop, _item, status in _read_table(where.base / EVAL_FILE, 4):
        split.setdefault(consumer, status)
        split.setdefault(shop, status)
    return split


MAX_COORDINATE = 1_000_000  # pixels: anything larger is a broken line, not a photo


def _box(fields: list[str]) -> tuple[int, int, int, int] | None:
    """x1 y1 x2 y2 of an Anno line, or None when they are not finite, sane numbers."""
    try:
        values = [float(v) for v in fields[3:7]]
    except ValueError:
        return None
    if not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in values):
        return None
    return tuple(int(v) for v in values)


def _bboxes(where: DatasetRoot) -> dict[str, tuple[int, int, int, int]]:
    """Boxes from the Anno file; malformed lines are skipped and counted in a warning (a box
    outside its photo is kept: it is clipped to the photo when the photo is read)."""
    boxes, skipped = {}, 0
    for fields in _read_table(where.base / BBOX_FILE, 7):
        box = _box(fields)
        if box is None:
            skipped += 1
            continue
        boxes[fields[0]] = box
    if skipped:
        log.warning("skipped %d malformed line(s) in %s", skipped, where.base / BBOX_FILE)
    return boxes


def read_catalog(root: str | Path | DatasetRoot) -> pd.DataFrame:
    """Read a dataset root into one table, a row per image.

    Columns: path (relative to the dataset folder, "img/..." for DeepFashion), category,
    subcategory, item_id, source (consumer/shop/unknown), split (train/val/test/unknown),
    bbox x1..y2 (nullable), size and mtime (for change detection). Anno/ and Eval/ are optional.
    """
    where = root if isinstance(root, DatasetRoot) else locate(root)
    entries = _walk(where.images)
    if not entries:
        raise CatalogError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {where.images}")
    splits, boxes = _splits(where), _bboxes(where)
    prefix = where.prefix
    records = []
    for entry in entries:
        rel = os.path.relpath(entry.path, where.images)
        parts = tuple(rel.split(os.sep))
        path = prefix + "/".join(parts)
        category, subcategory, item_id = _labels(parts)
        try:
            stat = entry.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # a broken symlink: kept, so ingest reports it as a failure
            size, mtime = -1, 0
        box = boxes.get(path, (None, None, None, None))
        records.append(
            (
                path,
                category,
                subcategory,
                item_id,
                _source(parts[-1]),
                splits.get(path, UNKNOWN),
                *box,
                size,
                mtime,
            )
        )
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    table = table.sort_values("path", ignore_index=True)
    for col in ("x1", "y1", "x2", "y2"):
        table[col] = table[col].astype("Int64")
    for col in ("path", "category", "subcategory", "item_id", "source", "split"):
        table[col] = table[col].astype("string")
    items = read_items(where)
    if items:
        unlisted = table.loc[~table["item_id"].isin(items + [UNKNOWN]), "item_id"].unique()
        if len(unlisted):
            log.warning("%d item folders are not in %s", len(unlisted), where.base / ITEM_FILE)
    log.info("catalog: %d images under %s", len(table), where.images)
    return table


def bbox_of(row) -> tuple[int, int, int, int] | None:
    """The row's bbox as a tuple, or None when the catalog has none."""
    if pd.isna(row.x1):
        return None
    return int(row.x1), int(row.y1), int(row.x2), int(row.y2)
