"""Copy a collection between stores (embedded → server) without re-embedding anything."""

from __future__ import annotations

from search.store import IndexSettings, Store, StoreError


def copy_collection(
    source: Store, target: Store, *, recreate: bool = False, batch: int = 512, progress=None
) -> int:
    """Copy vectors, payloads, metadata and index settings; returns the number of points copied."""
    meta = source.require()
    if target.exists():
        if not recreate:
            raise StoreError(
                f"collection {target.collection!r} already exists in "
                f"{target.describe()}; pass --recreate to replace it"
            )
        target.drop()
    index = meta.get("index", {})
    settings = IndexSettings(
        m=index.get("m", 16),
        ef_construct=index.get("ef_construct", 100),
        hnsw_ef=index.get("hnsw_ef"),
        quantization=bool(index.get("quantization")),
    )
    body = {k: v for k, v in meta.items() if k not in ("dim", "distance", "index")}
    target.create(int(meta["dim"]), body, settings)
    copied = 0
    for points in source.scroll(batch):
        target.upsert(points)
        copied += len(points)
        if progress:
            progress(len(points))
    target.finish()
    return copied
