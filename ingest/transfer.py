"""Moving collections without re-embedding: store → store (publish) and store ↔ file (snapshot)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ingest.plan import image_url
from search.store import IndexSettings, Points, Store, StoreError

FORMAT = "fashion-retrieval-snapshot/1"
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
    settings = IndexSettings(
        m=index.get("m", 16),
        ef_construct=index.get("ef_construct", 100),
        hnsw_ef=index.get("hnsw_ef"),
        quantization=bool(index.get("quantization")),
    )
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
    create_like(target, source.require(), recreate=recreate)
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


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_snapshot(
    store: Store, out: str | Path, *, batch: int = 4096, progress: Progress = None
) -> int:
    """Write the whole collection (metadata, ids, payloads, vectors) to one tar file.

    The same format for the embedded and the server store, so a snapshot of one restores into
    the other. Written to a temporary name first: an interrupted snapshot never looks complete.
    """
    meta = store.require()
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    count = 0
    with tarfile.open(tmp, "w") as tar:
        for part, points in enumerate(store.scroll(batch)):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(points.vectors, np.float32))
            _add(tar, f"part-{part:06d}.npy", buf.getvalue())
            lines = "".join(
                json.dumps({"id": i, "payload": p}) + "\n"
                for i, p in zip(points.ids, points.payloads, strict=True)
            )
            _add(tar, f"part-{part:06d}.jsonl", lines.encode())
            count += len(points)
            if progress:
                progress(len(points))
        header = {
            "format": FORMAT,
            "collection": store.collection,
            "metadata": meta,
            "count": count,
        }
        _add(tar, "snapshot.json", json.dumps(header, indent=1).encode())
    tmp.replace(out)
    return count


def read_header(path: str | Path) -> dict:
    try:
        with tarfile.open(path) as tar:
            header = json.load(tar.extractfile("snapshot.json"))
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"{str(path)!r} is not a snapshot written by `ingest snapshot` ({type(exc).__name__})"
        ) from None
    if header.get("format") != FORMAT:
        raise StoreError(
            f"{str(path)!r} has snapshot format {header.get('format')!r}, expected {FORMAT}"
        )
    return header


def restore_snapshot(
    path: str | Path, target: Store, *, recreate: bool = False, progress: Progress = None
) -> int:
    """Recreate a collection from a snapshot file; returns the number of points restored."""
    header = read_header(path)
    create_like(target, header["metadata"], recreate=recreate)

    def batches():
        with tarfile.open(path) as tar:
            names = sorted(n for n in tar.getnames() if n.endswith(".npy"))
            for name in names:
                vectors = np.load(io.BytesIO(tar.extractfile(name).read()), allow_pickle=False)
                rows = [
                    json.loads(line)
                    for line in tar.extractfile(name[:-4] + ".jsonl").read().decode().splitlines()
                ]
                yield Points([r["id"] for r in rows], vectors, [r["payload"] for r in rows])

    restored = _fill(target, batches(), progress)
    if restored != header["count"]:
        raise StoreError(
            f"snapshot {str(path)!r} is incomplete: {restored} of {header['count']} points"
        )
    return restored
