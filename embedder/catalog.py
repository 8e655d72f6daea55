"""The dataset catalog: one pandas table describing every image under a root."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import numpy as np
import pandas as pd

from embedder.errors import UserError
from embedder.spec import GARMENT_TYPES
from embedder.storage import LOCAL, Storage, cache_dir, listing, split
from embedder.transforms import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

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
    "clothes_type",
    "size",
    "mtime",
]
EVAL_FILE = "Eval/list_eval_partition.txt"
BBOX_FILE = "Anno/list_bbox_consumer2shop.txt"
ITEM_FILE = "Anno/list_item_consumer2shop.txt"
UNKNOWN = "unknown"
# The catalog's text columns: pandas' string type with Python storage whether or not pyarrow is
# installed (with it, pandas 3 stores "string" in Arrow, and a rerun's plan over 227,980 photos
# took 1.9 s instead of 1.1 s on 2 cores, for 80 MB less peak memory), so one install behaves as
# the other and as the README's figures.
TEXT = pd.StringDtype("python")


class CatalogError(UserError, ValueError):
    """The root cannot be read as an image dataset."""


@dataclass(frozen=True)
class DatasetRoot:
    """Where a dataset lives: catalog paths are relative to `base` (so `file(path)` is the
    file), `images` is the image tree, `lists` the folder holding Anno/ and Eval/. They differ
    for the `Img/img/` layout: base `Img/`, images `Img/img/`, lists the dataset folder, so that
    paths read "img/...", as the list files write them. Paths are strings in `storage` (the
    local disk, or an object store's bucket/prefix)."""

    base: str
    images: str
    lists: str | None = None
    storage: Storage = LOCAL

    def __post_init__(self) -> None:
        if self.lists is None:
            object.__setattr__(self, "lists", self.base)

    @property
    def prefix(self) -> str:
        """How catalog paths start, relative to `base` ("img/" for DeepFashion, "" otherwise)."""
        rel = self.images[len(self.base) :].strip("/")
        return rel + "/" if rel else ""

    def file(self, path: str) -> str:
        """The file of a catalog path (base/path), in `storage`."""
        return f"{self.base}/{path}"

    def url(self, path: str | None = None) -> str:
        """The dataset folder (or one of its files) as a user writes it."""
        return self.storage.url(self.base if path is None else self.file(path))

    def source(self, path: str):
        """What Pillow opens for a catalog path (embedder.storage.Storage.source)."""
        return self.storage.source(self.file(path))

    def list_file(self, name: str):
        """One of the list files (Anno/..., Eval/...) open as text, or None when absent."""
        return self.storage.open_text(f"{self.lists}/{name}")


def locate(root: str | Path | DatasetRoot, options: dict | None = None) -> DatasetRoot:
    """Accept the dataset folder, its `img/` folder (or `Img/img/`), or any folder of images;
    on the local disk or in an object store (s3://bucket/prefix, any fsspec URL, with its
    `options`). A DatasetRoot is already located: returned as it is."""
    if isinstance(root, DatasetRoot):
        return root
    storage, path = split(str(root), options)
    if not storage.local:
        return _locate_remote(storage, path, str(root))
    root = Path(path).expanduser()
    if not root.exists():
        raise CatalogError(f"root {str(root)!r} does not exist")
    if not root.is_dir():
        raise CatalogError(f"root {str(root)!r} is not a folder")
    root = root.resolve()
    return _layout(str(root), lambda name: (root / name).is_dir(), root.name, root.parent.name)


def _layout(root: str, has_folder, name: str, parent: str) -> DatasetRoot:
    """The DeepFashion layouts, given a test for a folder below root."""
    if has_folder("img"):
        return DatasetRoot(base=root, images=f"{root}/img")
    if has_folder("Img/img"):
        return DatasetRoot(base=f"{root}/Img", images=f"{root}/Img/img", lists=root)
    up = root.rsplit("/", 1)[0] if "/" in root else root
    if name == "img":
        nested = parent == "Img"
        return DatasetRoot(up, root, up.rsplit("/", 1)[0] if nested else up)
    return DatasetRoot(base=root, images=root)


def _locate_remote(storage: Storage, path: str, shown: str) -> DatasetRoot:
    """One listing of the root's top level (a missing bucket or prefix, refused credentials,
    an endpoint that does not answer: each one line), then the layout."""
    if not path:
        raise CatalogError(f"root {shown!r} names no bucket")
    folders, _ = storage.top(path)
    nested = "Img" in folders and "img" not in folders and "img" in storage.top(f"{path}/Img")[0]
    parts = path.split("/")
    found = _layout(
        path,
        lambda name: name in folders if name == "img" else nested,
        parts[-1],
        parts[-2] if len(parts) > 1 else "",
    )
    return DatasetRoot(found.base, found.images, found.lists, storage)


CONSUMER_PREFIXES = ("comsumer", "consumer")  # the dataset's own spelling, and the usual one


def _walk(top: str, prefix: str = "") -> dict[str, list]:
    """Every image file below `top`, in one os.scandir recursion: symlinked files are followed,
    symlinked folders are not, macOS `._*` files are skipped. Returns lists: the files' paths
    (`prefix` + the path below `top`, built by string operations), sources (from the name),
    sizes and mtimes (-1 and 0 for a broken link, which ingest then reports), the index of each
    file's folder, and the folders' paths below `top`."""
    rels: list[str] = []
    sources: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    where: list[int] = []
    folders: list[str] = []
    skipped: list[tuple[str, str]] = []  # (path as shown, why): named like photos, not photos
    stack = [(top, "")]
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as found:
                entries = list(found)
        except OSError as exc:
            log.warning("cannot list %s: %s", path, exc)
            continue
        index = len(folders)
        folders.append(rel)
        folder_prefix = prefix + rel
        for entry in entries:
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, rel + name + "/"))
                continue
            dot = name.rfind(".")
            if dot <= 0 or name[dot:].lower() not in IMAGE_SUFFIXES or name.startswith("._"):
                continue  # not an image, or AppleDouble metadata beside a copied photo
            text = folder_prefix + name
            if not text.isascii() and (why := _unusable_name(text)):
                skipped.append((_shown(text), why))
                continue
            try:
                stat = entry.stat()
            except OSError:  # a broken symlink: kept, so ingest reports it as a failure
                sizes.append(-1)
                mtimes.append(0)
            else:
                if not S_ISREG(stat.st_mode):  # a FIFO would hang every reader that opens it
                    skipped.append((text, "not a regular file (a FIFO, socket or device)"))
                    continue
                sizes.append(stat.st_size)
                mtimes.append(stat.st_mtime_ns)
            start = name[:8].lower()  # _source, inlined: this loop runs once per photo
            sources.append(
                "consumer"
                if start.startswith(CONSUMER_PREFIXES)
                else "shop"
                if start.startswith("shop")
                else UNKNOWN
            )
            rels.append(folder_prefix + name)
            where.append(index)
    return {
        "path": rels,
        "source": sources,
        "size": sizes,
        "mtime": mtimes,
        "folder": where,
        "folders": folders,
        "skipped": skipped,
    }


def _walk_remote(where: DatasetRoot) -> dict[str, list]:
    """_walk's answer for an object store: one listing of every key below the image tree
    (sizes and change stamps from the listing, no request per photo)."""
    prefix = where.prefix
    rels: list[str] = []
    sources: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    where_: list[int] = []
    folders: dict[str, int] = {}
    for rel, size, changed in sorted(listing(where.storage, where.images)):
        folder, _, name = rel.rpartition("/")
        dot = name.rfind(".")
        if dot <= 0 or name[dot:].lower() not in IMAGE_SUFFIXES or name.startswith("._"):
            continue
        rels.append(prefix + rel)
        sources.append(_source(name))
        sizes.append(size)
        mtimes.append(changed)
        where_.append(folders.setdefault(folder + "/" if folder else "", len(folders)))
    return {
        "path": rels,
        "source": sources,
        "size": sizes,
        "mtime": mtimes,
        "folder": where_,
        "folders": list(folders),
        "skipped": [],
    }


def _source(name: str) -> str:
    """consumer / shop / unknown, from a photo's file name."""
    start = name[:8].lower()
    if start.startswith(CONSUMER_PREFIXES):
        return "consumer"
    return "shop" if start.startswith("shop") else UNKNOWN


def _unusable_name(path: str) -> str | None:
    """Why a path cannot be a photo's name (its bytes are not UTF-8: no point id, payload or
    report can hold it), or None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    return None


def _shown(path: str) -> str:
    """A path as a report shows it: bytes that are not UTF-8 escaped (\\xNN)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _labels(folders: list[str]) -> tuple[str, str, str]:
    """(category, subcategory, item_id) from the folders above a file, where present."""
    if len(folders) >= 3 and folders[-1].startswith("id_"):
        return folders[-3], folders[-2], folders[-1]
    if folders and folders[-1].startswith("id_"):
        upper = folders[:-1]
        return (upper[0] if upper else UNKNOWN), UNKNOWN, folders[-1]
    category = folders[0] if folders else UNKNOWN
    subcategory = folders[1] if len(folders) >= 2 else UNKNOWN
    return category, subcategory, UNKNOWN


MAX_FIELDS = 16  # fields a list-file line may have; a longer line is skipped


def _read_table(where: DatasetRoot, name: str, fields: int) -> pd.DataFrame:
    """Rows of a DeepFashion list file (line 1 a count, line 2 a header) as strings in columns
    0 .. fields - 1, parsed by pandas' C reader; lines with fewer fields are skipped, of lines
    with more (up to MAX_FIELDS) the first `fields` are kept; empty if the file is absent."""
    fh = where.list_file(name)
    if fh is None:
        return pd.DataFrame(columns=range(fields), dtype=object)
    with fh:
        first = [fh.readline().split() for _ in range(2)]
        fh.seek(0)
        return _parse_table(fh, first, fields)


def _parse_table(fh, first: list[list[str]], fields: int) -> pd.DataFrame:
    head = [n for n, f in enumerate(first) if len(f) <= 1 or not f[0].startswith("img/")]
    rows = pd.read_csv(
        fh,
        sep=r"\s+",
        header=None,
        names=range(MAX_FIELDS),  # room for extra fields, as `line.split()` had
        index_col=False,
        skiprows=head,
        dtype=object,  # Python strings: no Arrow array to convert back
        quoting=csv.QUOTE_NONE,
        on_bad_lines="skip",
        encoding_errors="replace",
        engine="c",
    )
    return rows[list(range(fields))].dropna().astype(object)


def read_items(root: str | Path | DatasetRoot) -> list[str]:
    """The item ids of Anno/list_item_consumer2shop.txt ([] if absent): ONE header line (the
    count), then one id a line; the numbering has gaps."""
    where = root if isinstance(root, DatasetRoot) else locate(root)
    fh = where.list_file(ITEM_FILE)
    if fh is None:
        return []
    with fh:
        lines = [line.split() for line in fh]
    return [f[0] for n, f in enumerate(lines) if f and not (n == 0 and f[0].isdigit())]


def read_pairs(root: str | Path | DatasetRoot) -> pd.DataFrame:
    """Consumer/shop pairs from Eval/list_eval_partition.txt: consumer, shop, item_id, split."""
    where = root if isinstance(root, DatasetRoot) else locate(root)
    rows = _read_table(where, EVAL_FILE, 4)
    rows.columns = ["consumer", "shop", "item_id", "split"]
    return rows.reset_index(drop=True).astype(TEXT)


def _splits(where: DatasetRoot) -> pd.Series:
    """path → split from Eval/list_eval_partition.txt; a photo in several pairs keeps the
    split of its first pair."""
    rows = _read_table(where, EVAL_FILE, 4)
    paths = rows[[0, 1]].to_numpy().ravel()  # consumer, shop, consumer, shop, ...
    splits = pd.Series(np.repeat(rows[3].to_numpy(), 2), index=paths, dtype=object)
    return splits[~splits.index.duplicated(keep="first")]


MAX_COORDINATE = 1_000_000  # pixels: anything larger is a broken line, not a photo
BOX = ["x1", "y1", "x2", "y2"]


def _bboxes(where: DatasetRoot) -> tuple[pd.DataFrame, int]:
    """path → x1 y1 x2 y2 and clothes_type from the Anno file (the last line of a path wins),
    and how many lines were skipped: those whose numbers are not finite, sane numbers (a box
    outside its photo is kept: it is clipped to the photo when the photo is read)."""
    rows = _read_table(where, BBOX_FILE, 7)
    text = rows[[3, 4, 5, 6]].to_numpy().ravel()
    values = pd.to_numeric(pd.Series(text), errors="coerce").to_numpy(np.float64).reshape(-1, 4)
    good = (np.isfinite(values) & (np.abs(values) <= MAX_COORDINATE)).all(axis=1)
    paths = pd.Index(rows[0].to_numpy())[good]
    boxes = pd.DataFrame(np.trunc(values[good]).astype(np.int64), index=paths, columns=BOX)
    kinds = pd.to_numeric(pd.Series(rows[1].to_numpy()[good]), errors="coerce").to_numpy()
    boxes["clothes_type"] = np.where(np.isin(kinds, list(GARMENT_TYPES)), kinds, np.nan)
    return boxes[~boxes.index.duplicated(keep="last")], int((~good).sum())


def read_catalog(root: str | Path | DatasetRoot, cache: bool = True) -> pd.DataFrame:
    """Read a dataset root into one table, a row per image.

    Columns: path (relative to the dataset folder, "img/..." for DeepFashion), category,
    subcategory, item_id, source (consumer/shop/unknown), split (train/val/test/unknown),
    bbox x1..y2 and clothes_type (GARMENT_TYPES; nullable), size and mtime (for change
    detection). Anno/ and Eval/ are optional.
    Files named like photos that cannot be (not regular files, names that are not UTF-8) are
    left out and listed in `table.attrs["skipped"]` as (path, reason).
    The walk costs one scandir per folder and one stat per file; labels are worked out once per
    folder, and the list files are joined to the table in pandas. With `cache`, what the list
    files add (the order, splits, boxes) is kept for a local dataset in the model cache
    (embedder.storage.cache_dir) and reused while the walk finds the same paths and the list
    files hold the same bytes: every file is still listed and stat-ed, so sizes and mtimes are
    always today's.
    """
    where = root if isinstance(root, DatasetRoot) else locate(root)
    found = _walk(where.images, where.prefix) if where.storage.local else _walk_remote(where)
    if found["skipped"]:
        log.warning("%d file(s) named like photos are not photos", len(found["skipped"]))
    if not found["path"]:
        raise CatalogError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under "
            f"{where.storage.url(where.images)}"
        )
    folders = [_labels(f.split("/")[:-1]) for f in found["folders"]]
    labels = np.array(folders, dtype=object)[found["folder"]]
    joined = _joined(where, found["path"], labels[:, 2], cache and where.storage.local)
    table = _table(found, labels, joined)
    if malformed := int(joined["malformed"]):
        log.warning("skipped %d malformed line(s) in %s", malformed, f"{where.lists}/{BBOX_FILE}")
    if unlisted := int(joined["unlisted"]):
        log.info("%d item folders are not in %s", unlisted, f"{where.lists}/{ITEM_FILE}")
    log.info("catalog: %d images under %s", len(table), where.storage.url(where.images))
    table.attrs["skipped"] = found["skipped"]  # (path, why): for the run's failure report
    return table


def _joined(where: DatasetRoot, paths: list[str], item_ids, cache: bool) -> dict:
    """_annotations, from the cache while it holds for these paths and list files."""
    key = _key(where, paths) if cache else None
    joined = _cached_annotations(where, key) if key else None
    if joined is None:
        joined = _annotations(where, paths, item_ids)
        if key:
            _keep_annotations(where, key, joined)
    return joined


def _table(found: dict[str, list], labels: np.ndarray, joined: dict) -> pd.DataFrame:
    """The catalog's columns, in path order: the walk's and the list files' (_annotations)."""
    order = joined["order"]
    text = {
        "path": np.array(found["path"], dtype=object)[order],
        "category": labels[order, 0],
        "subcategory": labels[order, 1],
        "item_id": labels[order, 2],
        "source": np.array(found["source"], dtype=object)[order],
        "split": joined["split"],
    }
    table = pd.DataFrame({name: pd.array(v, dtype=TEXT) for name, v in text.items()})
    boxes, known = joined["box"], joined["has_box"]
    for n, col in enumerate(BOX):
        table[col] = pd.arrays.IntegerArray(boxes[:, n].copy(), ~known)
    kinds = joined["clothes_type"]
    table["clothes_type"] = pd.arrays.IntegerArray(kinds, kinds < 0)
    table["size"] = np.asarray(found["size"], np.int64)[order]
    table["mtime"] = np.asarray(found["mtime"], np.int64)[order]
    return table[COLUMNS]


def _annotations(where: DatasetRoot, paths: list[str], item_ids) -> dict[str, np.ndarray]:
    """What the list files add to the walk's `paths` (and their folders' `item_ids`), as
    arrays in path order: "order" (the walk index of each sorted row), "split" (object), "box"
    (int64, N x 4) with "has_box", "clothes_type" (int8, -1 unknown), and the counts
    "malformed" (box lines skipped) and "unlisted" (item folders not in the item list)."""
    ordered = pd.Series(paths, dtype=object)
    order = np.argsort(ordered.to_numpy(), kind="stable")
    ordered = ordered.iloc[order].reset_index(drop=True)
    split = ordered.map(_splits(where)).astype(object).fillna(UNKNOWN).to_numpy()
    found, malformed = _bboxes(where)
    boxes = found.reindex(ordered)
    values = boxes[BOX].to_numpy(dtype=np.float64, na_value=np.nan)
    known = ~np.isnan(values).any(axis=1)
    kinds = boxes["clothes_type"].to_numpy(dtype=np.float64, na_value=np.nan)
    items = read_items(where)
    unlisted = 0
    if items:
        ids = pd.unique(np.asarray(item_ids, dtype=object))
        unlisted = int((~pd.Index(ids).isin([*items, UNKNOWN])).sum())
    return {
        "order": order.astype(np.int64),
        "split": split,
        "box": np.nan_to_num(values).astype(np.int64),
        "has_box": known,
        "clothes_type": np.nan_to_num(kinds, nan=-1).astype(np.int8),
        "malformed": np.int64(malformed),
        "unlisted": np.int64(unlisted),
    }


LIST_FILES = (EVAL_FILE, BBOX_FILE, ITEM_FILE)
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # this file's rules


def _annotations_file(where: DatasetRoot) -> Path:
    return cache_dir() / "catalogs" / f"{_digest(where.url())[:24]}.npz"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _key(where: DatasetRoot, paths: list[str]) -> tuple[str, bytes] | None:
    """What the annotations are derived from: this module's code and the list files' bytes
    (a digest each), and the walk's paths in walk order (compared whole, NUL-separated: no
    file name holds one); None when a list file cannot be read (its parse then says why)."""
    digests = []
    for name in LIST_FILES:
        try:
            with open(f"{where.lists}/{name}", "rb") as fh:
                digest = hashlib.sha1()
                while block := fh.read(1 << 20):
                    digest.update(block)
            digests.append(digest.hexdigest())
        except FileNotFoundError:
            digests.append("absent")
        except OSError:
            return None
    return f"{_CODE} {_digest(where.url())} {' '.join(digests)}", "\0".join(paths).encode()


def _cached_annotations(where: DatasetRoot, key: tuple[str, bytes]) -> dict | None:
    path = _annotations_file(where)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key[0] or data["walk"].tobytes() != key[1]:
                return None
            found = {name: data[name] for name in data.files if name not in ("key", "walk")}
    except Exception as exc:  # truncated or garbled: rebuilt
        log.info("discarding the catalog cache %s (%s)", path, exc)
        return None
    codes, names = found.pop("split_code"), found.pop("split_names")
    found["split"] = np.array(names.tolist(), dtype=object)[codes]
    return found


def _keep_annotations(where: DatasetRoot, key: tuple[str, bytes], joined: dict) -> None:
    """Keep the annotations for the next read (an unwritable cache only costs the next read
    the list files again)."""
    path = _annotations_file(where)
    names, codes = np.unique(joined["split"].astype(str), return_inverse=True)
    arrays = {k: v for k, v in joined.items() if k != "split"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            key=np.array(key[0]),
            walk=np.frombuffer(key[1], np.uint8),
            split_code=codes.astype(np.int32),
            split_names=names,
            **arrays,
        )
        tmp.replace(path)
    except OSError as exc:
        log.info("not keeping the catalog cache %s: %s", path, exc)


def bbox_of(row) -> tuple[int, int, int, int] | None:
    """The row's bbox as a tuple, or None when the catalog has none."""
    if pd.isna(row.x1):
        return None
    return int(row.x1), int(row.y1), int(row.x2), int(row.y2)
