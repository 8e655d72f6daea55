"""Moving collections without re-embedding: store → store (publish) and store ↔ file (snapshot)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from embedder.errors import describe_failure
from ingest.plan import image_url
from search.store import IndexSettings, Points, Store, StoreError
from search.store.disk import require_free_space

FORMAT = "fashion-retrieval-snapshot/2"  # /2: a sha256 per part in the header
READABLE = ("fashion-retrieval-snapshot/1", FORMAT)
Progress = Callable[[int], object] | None


def create_like(target: Store, metadata: dict, *, recreate: bool = False) -> None:
    """Create `target` with the dim, index settings and model metadata of another collection."""
    if target.exists():
        if not recreate:
            raise StoreError(
                f"collection {target.collection!r} already exists in "
                f"{target.describe()}; pass --recreate to replace it"
            )
        target.drop()
    index = metadata.get("index", {})
    settings = IndexSettings.from_recorded(index)
    body = {k: v for k, v in metadata.items() if k not in ("dim", "distance", "index")}
    target.create(int(metadata["dim"]), body, settings)


def _fill(target: Store, batches: Iterable[Points], progress: Progress) -> int:
    copied = 0
    for points in batches:
        target.upsert(points)
        copied += len(points)
        if progress:
            progress(len(points))
    target.finish()
    return copied


def copy_collection(
    source: Store,
    target: Store,
    *,
    recreate: bool = False,
    batch: int = 512,
    progress: Progress = None,
    image_base: str | None = None,
) -> int:
    """Copy vectors, payloads, metadata and index settings; returns the number of points copied.

    image_base: give every copied point image_url = BASE<point id>.jpg (for the dashboard).
    """
    create_like(target, source.require_metadata(), recreate=recreate)
    batches = source.scroll(batch)
    if image_base:
        batches = (
            Points(
                pts.ids,
                pts.vectors,
                [
                    {**p, "image_url": image_url(image_base, i)}
                    for i, p in zip(pts.ids, pts.payloads, strict=True)
                ],
            )
            for pts in batches
        )
    return _fill(target, batches, progress)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> str:
    """Add one part; returns its sha256, which the header records."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(data).hexdigest()


def write_snapshot(
    store: Store, out: str | Path, *, batch: int = 4096, progress: Progress = None
) -> int:
    """Write the whole collection (metadata, ids, payloads, vectors) to one tar file.

    The same format for the embedded and the server store, so a snapshot of one restores into
    the other. Each part's sha256 is in the header, so a damaged file is found before a
    restore touches anything. Written to a temporary name first, removed if anything fails:
    an interrupted snapshot never looks complete and leaves nothing behind.
    """
    meta = store.require_metadata()
    out = Path(out)
    total = store.count()
    require_free_space(
        out.parent, total * (4 * int(meta["dim"]) + 600) + 65536, f"a snapshot of {total:,} points"
    )
    tmp = out.with_name(out.name + ".partial")
    count, parts = 0, {}
    try:
        with tarfile.open(tmp, "w") as tar:
            for part, points in enumerate(store.scroll(batch)):
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(points.vectors, np.float32))
                name = f"part-{part:06d}"
                parts[f"{name}.npy"] = _add(tar, f"{name}.npy", buf.getvalue())
                lines = "".join(
                    json.dumps({"id": i, "payload": p}) + "\n"
                    for i, p in zip(points.ids, points.payloads, strict=True)
                )
                parts[f"{name}.jsonl"] = _add(tar, f"{name}.jsonl", lines.encode())
                count += len(points)
                if progress:
                    progress(len(points))
            header = {
                "format": FORMAT,
                "collection": store.collection,
                "metadata": meta,
                "count": count,
                "parts": parts,
            }
            _add(tar, "snapshot.json", json.dumps(header, indent=1).encode())
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _bad(path, why: str) -> StoreError:
    return StoreError(f"snapshot {str(path)!r} is damaged: {why}; nothing was changed")


def read_header(path: str | Path) -> dict:
    try:
        with tarfile.open(path) as tar:
            header = json.load(tar.extractfile("snapshot.json"))
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(
            f"{str(path)!r} is not a snapshot written by `ingest snapshot` ({type(exc).__name__})"
        ) from None
    if not isinstance(header, dict) or header.get("format") not in READABLE:
        found = header.get("format") if isinstance(header, dict) else None
        raise StoreError(f"{str(path)!r} has snapshot format {found!r}, expected {FORMAT}")
    if not isinstance(header.get("metadata"), dict) or not isinstance(header.get("count"), int):
        raise _bad(path, "its header has no metadata or count")
    return header


def _parts(path: str | Path, header: dict):
    """Every (ids, vectors, payloads) part, each checked: its checksum, vectors finite and
    of the collection's size, one id and payload per vector."""
    dim, sums = int(header["metadata"].get("dim", 0)), header.get("parts")
    try:
        with tarfile.open(path) as tar:
            names = sorted(n for n in tar.getnames() if n.endswith(".npy"))
            if sums is not None and sorted(sums) != sorted(
                [*names, *(n[:-4] + ".jsonl" for n in names)]
            ):
                raise _bad(path, "parts are missing")
            for name in names:
                raw = tar.extractfile(name).read()
                text = tar.extractfile(name[:-4] + ".jsonl").read()
                for part, data in ((name, raw), (name[:-4] + ".jsonl", text)):
                    if sums is not None and hashlib.sha256(data).hexdigest() != sums[part]:
                        raise _bad(path, f"{part} does not match its checksum")
                vectors = np.load(io.BytesIO(raw), allow_pickle=False)
                if vectors.ndim != 2 or vectors.shape[1] != dim:
                    raise _bad(
                        path, f"{name} holds vectors of shape {vectors.shape}, not (n, {dim})"
                    )
                if not np.isfinite(vectors).all():
                    raise _bad(path, f"{name} holds NaN or infinite vectors")
                rows = [json.loads(line) for line in text.decode().splitlines()]
                if len(rows) != len(vectors):
                    raise _bad(path, f"{name} has {len(vectors)} vectors for {len(rows)} ids")
                yield Points([r["id"] for r in rows], vectors, [r["payload"] for r in rows])
    except StoreError:
        raise
    except (OSError, KeyError, ValueError, TypeError, tarfile.TarError) as exc:
        raise _bad(path, describe_failure(exc)) from None


def check_snapshot(path: str | Path) -> dict:
    """Read the whole snapshot once and check every part; returns its header."""
    header = read_header(path)
    found = sum(len(p) for p in _parts(path, header))
    if found != header["count"]:
        raise _bad(path, f"it holds {found} of its {header['count']} points")
    return header


def restore_snapshot(
    path: str | Path, target: Store, *, recreate: bool = False, progress: Progress = None
) -> int:
    """Recreate a collection from a snapshot file; returns the number of points restored.

    The whole snapshot is checked first (checksums, finite vectors, counts): a damaged one is
    refused before anything changes. Into the embedded store it is restored beside the
    collection and swapped in only when complete, so a failure at any point leaves the old
    collection as it was; on a server the checked snapshot replaces the collection.
    """
    header = check_snapshot(path)
    if target.exists() and not recreate:
        raise StoreError(
            f"collection {target.collection!r} already exists in {target.describe()}; "
            f"pass --recreate to replace it"
        )
    with target.replacement() as into:
        create_like(into, header["metadata"], recreate=True)
        restored = _fill(into, _parts(path, header), progress)
        if restored != header["count"]:
            raise _bad(path, f"{restored} of {header['count']} points could be restored")
    return restored


def verify(store: Store) -> dict:
    """Read every point: vectors finite and unit length, payloads with a path, the count
    right; returns what was checked, raises StoreError naming the first problem."""
    meta, seen = store.require_metadata(), 0
    for points in store.scroll(1024, vectors=True):
        vectors = np.asarray(points.vectors, np.float64)
        if vectors.shape[1] != meta["dim"]:
            raise StoreError(f"vectors of size {vectors.shape[1]}, expected {meta['dim']}")
        norms = np.linalg.norm(vectors, axis=1)
        bad = ~np.isfinite(norms) | (np.abs(norms - 1) > 1e-3)
        if bad.any():
            pid = points.ids[int(np.argmax(bad))]
            raise StoreError(
                f"point {pid} of collection {store.collection!r} has a damaged vector "
                f"({int(bad.sum())} in this batch); rebuild it with `ingest run --recreate` "
                f"or `ingest restore --recreate`"
            )
        missing = [i for i, p in zip(points.ids, points.payloads, strict=True) if "path" not in p]
        if missing:
            raise StoreError(f"point {missing[0]} has no path in its payload")
        seen += len(points)
    counted = store.count()
    if counted != seen:
        raise StoreError(f"the collection counts {counted} points but {seen} could be read")
    return {"points": seen, "index_complete": store.index_complete()}


def describe_collection(store: Store) -> list[str]:
    """`ingest info`: the collection's size, model, index and photo counts per counted field."""
    from search.store import schema

    meta = store.require_metadata()
    out = [
        f"collection {store.collection!r} in {store.describe()}: {store.count()} points",
        f"model: {meta.get('model')}",
        f"weights file: {meta.get('weights_file')}; dataset: {meta.get('dataset_root')}",
        f"index: {meta.get('index')}; payload indexes: {', '.join(store.indexes()) or 'none'}",
    ]
    for key in schema.COUNTED:
        counts = store.facet(key)
        out.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if not store.index_complete():
        out.append("index: build not recorded as complete; rerun `ingest run` to finish it")
    return out
