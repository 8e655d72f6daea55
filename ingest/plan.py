"""Reader side of ingest: which catalog rows need embedding, and the payload each point gets."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from embedder.catalog import BOX, TEXT, DatasetRoot, bbox_of, locate, read_catalog
from embedder.errors import describe_failure
from search.store import Store, point_ids, schema
from search.store.schema import CHANGE, LABELS

log = logging.getLogger(__name__)


def image_url(base: str | None, pid: str) -> str | None:
    """The `image_url` payload of a point with ingest's --image-url `base` (or None)."""
    return schema.image_url(pid, base) if base else None


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

    root: DatasetRoot  # where the dataset is (local or an object store): catalog paths below it
    catalog: pd.DataFrame
    shard: tuple[int, int] | None = None
    limit: int | None = None
    seconds: float = 0.0  # reading the catalog: the walk, the labels, the ids
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) not photos


@dataclass
class Plan:
    """The catalog with point ids, split into rows to embed and rows already stored unchanged."""

    root: DatasetRoot  # where the dataset is: catalog paths are relative to root.base
    catalog: pd.DataFrame
    todo: pd.DataFrame
    present: int
    changed: int
    relabel: list[str] = field(default_factory=list)  # unchanged points whose image_url changes
    gone: list[str] = field(default_factory=list)  # stored points (of this share) without a file
    stored: pd.DataFrame | None = None  # every stored point's change fields, by id, before

    def state_after(self, failed: set[str], pruned: bool) -> pd.DataFrame:
        """The stored change fields once the todo rows (but the failed paths) are written and,
        when pruned, the gone points deleted."""
        written = self.todo[~self.todo["path"].isin(failed)]
        new = pd.DataFrame(
            {name: pd.array(written[name].to_numpy(), dtype="Int64") for name in CHANGE},
            index=pd.Index(written["id"].to_numpy(dtype=object), name="id"),
        )
        old = self.stored[list(CHANGE)] if self.stored is not None else new.iloc[:0]
        if pruned:
            old = old.drop(index=self.gone, errors="ignore")
        state = pd.concat([old.drop(index=new.index, errors="ignore"), new])
        ids = pd.Index(self.catalog["id"].to_numpy(dtype=object))
        listed = ids[ids.isin(state.index)]  # in the catalog's order: the next plan's fast path
        return pd.concat([state.loc[listed], state.drop(index=listed)])

    def files(self) -> list[str]:
        """The todo rows' files, in root.storage."""
        base = self.root.base + "/"
        return [base + p for p in self.todo["path"]]

    def boxes(self) -> list[tuple[int, int, int, int] | None]:
        boxes = self.todo[BOX]
        known = boxes.notna().all(axis=1).to_numpy()
        values = boxes.to_numpy(dtype=np.int64, na_value=0).tolist()
        return [tuple(v) if k else None for v, k in zip(values, known, strict=True)]


def payload(row, image_base: str | None = None) -> dict:
    """The payload stored with a point (search.store.schema): the catalog's labels as strings, the
    change fields, the box; with `image_base`, an image_url that Qdrant's dashboard shows."""
    out = {name: str(getattr(row, name)) for name in LABELS}
    if image_base:
        out["image_url"] = image_url(image_base, row.id)
    out.update({name: int(getattr(row, name)) for name in CHANGE})
    box = bbox_of(row)
    if box is not None:
        out["bbox"] = list(box)
    out["box_source"] = getattr(row, "box_source", None) or (
        ANNOTATED if box is not None else WHOLE
    )
    return out


ANNOTATED, DETECTED, WHOLE = "annotated", "detected", "whole"  # where a point's box came from


def detect_boxes(plan: Plan, finder, progress: bool = True) -> int:
    """Give the plan's photos without an annotated box the box `finder` (a GarmentFinder)
    finds of the type their category implies (else its best box): their rows' box columns and
    box_source "detected"; the others keep theirs ("annotated", or "whole" where nothing is
    found or the photo cannot be read: the embedding reports that). Photos are decoded in a
    thread per core while the detector runs. Returns how many got a box."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from embedder.boxes import of_category
    from embedder.transforms import load_image

    todo = plan.todo
    missing = np.flatnonzero(todo[BOX].isna().any(axis=1).to_numpy())
    todo["box_source"] = np.where(todo[BOX].notna().all(axis=1), ANNOTATED, WHOLE)
    categories = todo["category"].to_numpy(dtype=object)

    def find(i: int):
        try:
            img = load_image(plan.root.source(todo["path"].iat[i]))
        except Exception:  # unreadable: embedding it fails and reports why
            return None
        found = finder(img, per_type=True)
        return next(iter(of_category(found, categories[i])), found[0] if found else None)

    columns = [todo.columns.get_loc(c) for c in BOX]
    source = todo.columns.get_loc("box_source")
    boxed = 0
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        found = pool.map(find, missing)
        for i, garment in tqdm(
            zip(missing, found, strict=True), total=len(missing), desc="detecting",
            disable=not progress or not len(missing), leave=False,
        ):  # fmt: skip
            if garment is not None:
                todo.iloc[i, columns] = list(garment.box)
                todo.iat[i, source] = DETECTED
                boxed += 1
    log.info("detector: %d of %d photos without a box got one", boxed, len(missing))
    return boxed


def shard_mask(ids: pd.Series, shard: tuple[int, int]) -> np.ndarray:
    """Which point ids fall in share K of N (the 128-bit id modulo N is K - 1): deterministic,
    independent of file order; computed for all ids at once (Horner's rule over the bytes)."""
    k, n = shard
    raw = np.frombuffer(bytes.fromhex("".join(ids).replace("-", "")), np.uint8).reshape(-1, 16)
    rest = np.zeros(len(raw), np.int64)
    for column in raw.T:
        rest = (rest * 256 + column) % n
    return rest == k - 1


CHANGE_PAGE = 65_536  # stored points read per call when comparing with the catalog
STATE = "ingest-state.npz"  # the stored change fields, kept by ingest beside an embedded store


def stored_state(store: Store, fields: list[str]) -> pd.DataFrame:
    """Every stored point's `fields`, indexed by point id: the change fields from the state
    the last ingest left beside the store when it still holds (no write since, same count),
    else read in large pages of the payload fields alone (sizes and mtimes as nullable
    integers: mtimes in ns overflow a float)."""
    if list(fields) == list(CHANGE) and (kept := _kept_state(store)) is not None:
        return kept
    ids: list[str] = []
    values: dict[str, list] = {name: [] for name in fields}
    if store.exists():
        for points in store.scroll(CHANGE_PAGE, vectors=False, fields=fields):
            ids += points.ids
            for name in fields:
                values[name] += [p.get(name) for p in points.payloads]
    frame = pd.DataFrame(values, index=pd.Index(ids, dtype=object, name="id"))
    for name in set(fields) & set(CHANGE):
        frame[name] = pd.array(frame[name].tolist(), dtype="Int64")
    return frame


def _kept_state(store: Store) -> pd.DataFrame | None:
    path = store.sidecar(STATE)
    if path is None or not path.is_file() or not store.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, sizes, mtimes = data["ids"], data["size"], data["mtime"]
    except Exception as exc:  # truncated or garbled (BadZipFile, ValueError, ...): rebuilt
        log.warning("discarding the damaged ingest state %s (%s)", path, describe_failure(exc))
        path.unlink(missing_ok=True)
        return None
    if not len(ids) == len(sizes) == len(mtimes) == store.total():
        path.unlink(missing_ok=True)  # not this store's state: keep_state writes it anew
        return None
    index = pd.Index(ids.astype(str), dtype=object, name="id")
    return pd.DataFrame(
        {"size": pd.array(sizes, dtype="Int64"), "mtime": pd.array(mtimes, dtype="Int64")},
        index=index,
    )


def keep_state(store: Store, plan: Plan, failed: set[str], pruned: bool) -> None:
    """Leave the stored change fields once `plan` ran (Plan.state_after) beside the store for
    the next run's plan (the store deletes them at its next write, so a state found there is
    current and not rewritten); a store that cannot hold them is no error."""
    path = store.sidecar(STATE)
    if path is None or path.is_file():
        return
    state = plan.state_after(failed, pruned)
    if state[list(CHANGE)].isna().any().any() or len(state) != store.total():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            ids=state.index.to_numpy(dtype=str).astype("S36"),
            size=state["size"].to_numpy(np.int64),
            mtime=state["mtime"].to_numpy(np.int64),
        )
        tmp.replace(path)
    except OSError as exc:
        log.info("not keeping the ingest state beside the store: %s", exc)


def read_work(
    root: str | Path | DatasetRoot,
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    storage_options: dict | None = None,
) -> Work:
    """The catalog rows this run is responsible for, with their point ids (the dataset folder
    is located once, here: on the local disk, or an object store opened with
    `storage_options`). Point ids are uuid5 of the dataset-relative path: a bucket and a local
    copy of one dataset give the same ids."""
    started = time.perf_counter()
    where = locate(root, storage_options)
    catalog = read_catalog(where)
    skipped = list(catalog.attrs.get("skipped", []))
    catalog["id"] = pd.array(point_ids(catalog["path"].tolist()), dtype=TEXT)
    if shard is not None:
        catalog = catalog[shard_mask(catalog["id"], shard)].reset_index(drop=True)
    if limit is not None:
        catalog = catalog.head(limit)
    return Work(where, catalog, shard, limit, time.perf_counter() - started, skipped)


def make_plan(work: Work, store: Store, *, image_base: str | None = None) -> Plan:
    """Compare the work with the store, as one join on point id: unchanged stored images (same
    size and mtime) are skipped; with `image_base`, unchanged ones whose image_url differs are
    listed to relabel. Also lists the stored points of this share whose file is gone."""
    catalog = work.catalog
    fields = [*CHANGE, "image_url"] if image_base else list(CHANGE)
    stored = stored_state(store, fields)
    ids = catalog["id"].to_numpy(dtype=object)
    # the usual rerun: the store holds exactly the catalog's points, in its order (keep_state)
    aligned = len(stored) == len(ids) and bool((stored.index.to_numpy(dtype=object) == ids).all())
    found = stored if aligned else stored.reindex(ids)
    present = np.ones(len(ids), bool) if aligned else catalog["id"].isin(stored.index).to_numpy()
    unchanged = present.copy()
    for name in CHANGE:
        same = found[name].reset_index(drop=True) == catalog[name].reset_index(drop=True)
        unchanged &= same.fillna(False).to_numpy(dtype=bool)
    relabel: list[str] = []
    if image_base:
        urls = np.array([image_url(image_base, pid) for pid in catalog["id"]], dtype=object)
        stale_url = found["image_url"].to_numpy(dtype=object) != urls
        relabel = catalog["id"].to_numpy(dtype=object)[unchanged & stale_url].tolist()
    gone = stored.index[:0] if aligned else stored.index.difference(pd.Index(ids))
    if work.shard is not None and len(gone):
        gone = gone[shard_mask(pd.Series(gone), work.shard)]
    return Plan(
        work.root,
        catalog,
        catalog[~unchanged].reset_index(drop=True),
        int(unchanged.sum()),
        int(present.sum() - unchanged.sum()),
        relabel,
        gone.tolist(),
        stored,
    )
