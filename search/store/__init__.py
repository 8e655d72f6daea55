"""search.store: the store layer below the service, the CLI and the web app.

The payload schema (schema), the interface and its plain data (base), the search algorithms
over it (queries), the backends (edge, server) with their conversions (to_edge, to_server),
point ids (ids), free-space checks (disk), and opening a store from options (open)."""

from search.store.base import (
    APPROXIMATE,
    NOTHING,
    SEGMENT_POINTS,
    Exclude,
    Filters,
    Group,
    Hit,
    IndexSettings,
    Points,
    QueryVector,
    Recommend,
    SearchParams,
    Store,
    StoreError,
    StoreUnavailable,
    Where,
)
from search.store.ids import POINT_NAMESPACE, point_id, point_ids
from search.store.open import DEFAULT_STORE_DIR, open_store
from search.store.queries import search, search_groups

__all__ = [
    "APPROXIMATE",
    "DEFAULT_STORE_DIR",
    "NOTHING",
    "POINT_NAMESPACE",
    "SEGMENT_POINTS",
    "Exclude",
    "Filters",
    "Group",
    "Hit",
    "IndexSettings",
    "Points",
    "QueryVector",
    "Recommend",
    "SearchParams",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Where",
    "open_store",
    "point_id",
    "point_ids",
    "search",
    "search_groups",
]
