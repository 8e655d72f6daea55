"""Opening the store that the shared CLI options (embedder._cli) name."""

from __future__ import annotations

from pathlib import Path

from embedder._cli import Collection, Device, Precision, QdrantUrl, StoreDir

__all__ = ["Collection", "Device", "Precision", "QdrantUrl", "StoreDir", "open_from"]


def open_from(store: Path | None, url: str | None, collection: str, read_only: bool = False):
    """The store the options name; `read_only` for commands that only read it."""
    from search.stores import open_store

    return open_store(
        store_dir=str(store) if store else None,
        url=url,
        collection=collection,
        read_only=read_only,
    )
