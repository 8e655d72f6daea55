"""Reader side of ingest: which catalog rows need embedding, and the payload each point gets."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from embedder.catalog import bbox_of, locate, read_catalog
from search.schema import CHANGE, LABELS
from search.store import Store, point_id

log = logging.getLogger(__name__)


def image_url(base: str | None, pid: str) -> str | None:
    """The `image_url` payload of a point: BASE<point id>.jpg (served by `search serve`)."""
    return f"{base}{pid}.jpg" if base else None


def check_image_url(base: str | None) -> str | None:
    """--image-url must be an absolute http(s) URL; a missing final slash is added."""
    if base is None:
        return None
    if not base.startswith(("http://", "https://")) or len(base.split("/", 3)[2]) == 0:
        raise ValueError(
            f"--image-url {base!r} must be an absolute http(s) URL, e.g. http://host:8000/images/"
        )
    return base if base.endswith("/") else base + "/"


@dataclass(frozen=True)
class Work:
    """What one ingest run is responsible for: the dataset folder, and its catalog rows with
    point ids, already cut to the run's --shard share and --limit (kept to explain them)."""

    base: Path  # the dataset folder that catalog paths are relative to
    catalog: pd.DataFrame
    shard: tuple[int, int] | None = None
    limit: int | None = None


@dataclass
class Plan:
    """The catalog with point ids, split into rows to embed and rows already stored unchanged."""

    base: Path  # the dataset folder that catalog paths are relative to
    catalog: pd.DataFrame
    todo: pd.DataFrame
    present: int
    changed: int
    relabel: list[str] = field(default_factory=list)  # unchanged points whose image_url changes

    def files(self) -> list[str]:
        return [str(self.base / p) for p in self.todo["path"]]

    def boxes(self) -> list[tuple[int, int, int, int] | None]:
        return [bbox_of(r) for r in self.todo.itertuples(index=False)]


def payload(row, image_base: str | None = None) -> dict:
    """The payload stored with a point (search.schema): the catalog's labels as strings, the
    change fields, the box; with `image_base`, an image_url that Qdrant's dashboard shows."""
    out = {name: str(getattr(row, name)) for name in LABELS}
    if image_base:
        out["image_url"] = image_url(image_base, row.id)
    out.update({name: int(getattr(row, name)) for name in CHANGE})
    box = bbox_of(row)
    if box is not None:
        out["bbox"] = list(box)
    return out


def in_shard(pid: str, shard: tuple[int, int]) -> bool:
    """Whether a point id falls in share K of N: deterministic, independent of file order."""
    k, n = shard
    return int(pid.replace("-", ""), 16) % n == k - 1


def shard_of(ids: pd.Series, shard: tuple[int, int]) -> pd.Series:
    return ids.map(lambda pid: in_shard(pid, shard))


def stale_ids(store: Store, keep: set[str], shard: tuple[int, int] | None = None) -> list[str]:
    """Stored points (of this share) whose image is no longer in the catalog."""
    return [
        pid
        for points in store.scroll(4096, vectors=False)
        for pid in points.ids
        if pid not in keep and (shard is None or in_shard(pid, shard))
    ]


def read_work(
    root: str | Path, *, limit: int | None = None, shard: tuple[int, int] | None = None
) -> Work:
    """The catalog rows this run is responsible for, with their point ids (the dataset folder
    is located once, here)."""
    where = locate(root)
    catalog = read_catalog(where)
    catalog["id"] = catalog["path"].map(point_id).astype("string")
    if shard is not None:
        catalog = catalog[shard_of(catalog["id"], shard)].reset_index(drop=True)
    if limit is not None:
        catalog = catalog.head(limit)
    return Work(where.base, catalog, shard, limit)


def make_plan(work: Work, store: Store, *, image_base: str | None = None) -> Plan:
    """Compare the work with the store: unchanged stored images are skipped; with
    `image_base`, unchanged ones whose image_url differs are listed to relabel."""
    catalog = work.catalog
    fields = [*CHANGE, "image_url"] if image_base else list(CHANGE)
    stored = store.retrieve(catalog["id"].tolist(), fields) if store.exists() else {}
    keys = zip(catalog["id"], catalog["size"], catalog["mtime"], strict=True)
    unchanged = pd.Series(
        [
            (p := stored.get(pid)) is not None and p.get("size") == size and p.get("mtime") == mtime
            for pid, size, mtime in keys
        ],
        index=catalog.index,
        dtype=bool,
    )
    changed = int(catalog["id"].isin(list(stored)).sum() - unchanged.sum())
    relabel = [
        pid
        for pid in catalog.loc[unchanged, "id"]
        if image_base and stored[pid].get("image_url") != image_url(image_base, pid)
    ]
    return Plan(
        work.base,
        catalog,
        catalog[~unchanged].reset_index(drop=True),
        int(unchanged.sum()),
        changed,
        relabel,
    )
