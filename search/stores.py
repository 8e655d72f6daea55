"""Opening a store: the embedded or the server implementation, chosen once from the options.

Above the interface (search.store) and both implementations (search.edge, search.server)."""

from __future__ import annotations

import os

from search.schema import DEFAULT_COLLECTION
from search.store import DEFAULT_STORE_DIR, Store


def open_store(
    *,
    store_dir: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    collection: str = DEFAULT_COLLECTION,
    read_only: bool = False,
) -> Store:
    """Pick the implementation once: a server when `url` is given, the embedded store when
    `store_dir` is; with neither, QDRANT_URL from the environment, else ./qdrant_data. An
    explicit option always wins over the environment.

    url: http(s)://host:port for a server, ':memory:' or 'file:DIR' for qdrant-client's local
    mode (tests and demos without a server).
    read_only: the command only reads (search, info, snapshot, serve): an embedded store on a
    read-only filesystem is still opened.
    """
    if url is not None and store_dir is not None:
        raise ValueError("give either --store (embedded) or --qdrant-url (server), not both")
    if url is None and store_dir is None:
        url = os.environ.get("QDRANT_URL") or None
    if url is not None and not url.strip():
        raise ValueError("the Qdrant URL is empty; give http(s)://host:6333")
    if not collection or "/" in collection or collection.startswith("."):
        raise ValueError(f"invalid collection name {collection!r}")
    if url:
        from search.server import ServerStore

        return ServerStore(
            url, api_key=api_key or os.environ.get("QDRANT_API_KEY"), collection=collection
        )
    from search.edge import EdgeStore

    return EdgeStore(store_dir or DEFAULT_STORE_DIR, collection=collection, read_only=read_only)
