"""Opening a store: each backend registered once, chosen once from the options.

Above the interface (search.store.base) and every backend. A new backend is one module and
one entry in BACKENDS."""

from __future__ import annotations

import os

from search.store.base import Store
from search.store.schema import DEFAULT_COLLECTION

DEFAULT_STORE_DIR = "./qdrant_data"


def _embedded(where: str, collection: str, api_key: str | None, read_only: bool) -> Store:
    from search.store.edge import EdgeStore  # a folder: qdrant-edge in this process

    return EdgeStore(where, collection=collection, read_only=read_only)


def _server(where: str, collection: str, api_key: str | None, read_only: bool) -> Store:
    from search.store.server import ServerStore  # a URL: a Qdrant server (or local mode)

    return ServerStore(where, api_key=api_key, collection=collection)


# each backend, by what open_store is given: a folder or a URL (imported only when chosen)
BACKENDS = {"embedded": _embedded, "server": _server}


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
        key = api_key or os.environ.get("QDRANT_API_KEY")
        return BACKENDS["server"](url, collection, key, read_only)
    return BACKENDS["embedded"](store_dir or DEFAULT_STORE_DIR, collection, None, read_only)
