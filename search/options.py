"""The store options of every command that reaches a collection, and opening what they name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from search.store.schema import DEFAULT_COLLECTION

StoreDir = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Embedded Qdrant folder (the default store). [default: ./qdrant_data]",
        show_default=False,
    ),
]
QdrantUrl = Annotated[
    str | None,
    typer.Option(
        "--qdrant-url",
        help="Qdrant server URL (http(s)://host:6333) instead of the embedded store; API key from "
        "QDRANT_API_KEY. ':memory:' or 'file:DIR' use qdrant-client's local mode. [default: "
        "QDRANT_URL when set and --store is not given]",
        show_default=False,
    ),
]
Collection = Annotated[
    str,
    typer.Option(
        "--collection",
        "-c",
        envvar="QDRANT_COLLECTION",
        help=f"Collection name. [default: {DEFAULT_COLLECTION}]",
        show_default=False,
    ),
]


def open_from(store: Path | None, url: str | None, collection: str, read_only: bool = False):
    """The store the options name; `read_only` for commands that only read it."""
    from search.store import open_store

    return open_store(
        store_dir=str(store) if store else None,
        url=url,
        collection=collection,
        read_only=read_only,
    )
