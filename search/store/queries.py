"""The search algorithms, written once over the store interface for every backend: filtered
search by oversampling, grouped search by widening, and the check that scores are cosines."""

from __future__ import annotations

from collections.abc import Collection

from search.store.base import (
    APPROXIMATE,
    NOTHING,
    Exclude,
    Filters,
    Group,
    Hit,
    QueryVector,
    SearchParams,
    Store,
    StoreError,
    Where,
    as_queries,
)
from search.store.schema import GROUP

OVERSAMPLE = 4  # filtered search: unfiltered candidates per requested hit
MAX_MEMBERS = 4096  # photos read to fill the groups of one grouped query
SCORE_SLACK = 1.0 + 1e-3  # cosine scores beyond ±this (or NaN) mean damaged vectors


def passes(hit: Hit, filters: Filters | None, exclude: Exclude = NOTHING) -> bool:
    """Whether a hit satisfies the filters and is not excluded."""
    if hit.id in exclude.ids or (exclude.items and hit.payload.get(GROUP) in exclude.items):
        return False
    return all(
        hit.payload.get(k) == v if isinstance(v, str) else hit.payload.get(k) in v
        for k, v in (filters or {}).items()
    )


def group_key(hit: Hit) -> str:
    return str(hit.payload.get(GROUP) or hit.id)


def checked(store: Store, results: list[list[Hit]]) -> list[list[Hit]]:
    """Cosine scores lie in [-1, 1]: anything else means damaged vectors, never an answer."""
    for hits in results:
        for hit in hits:
            if not -SCORE_SLACK <= hit.score <= SCORE_SLACK:  # also false for NaN
                raise StoreError(
                    f"{store.describe()} collection {store.collection!r} returned the score "
                    f"{hit.score!r} for point {hit.id}: its vectors are damaged; rebuild it "
                    f"with `ingest run --recreate` or `ingest restore --recreate`"
                )
    return results


def search(
    store: Store,
    queries,
    top: int,
    filters: Filters | None = None,
    params: SearchParams = APPROXIMATE,
    exclude: Exclude | Collection[str] = (),
    oversample: int = OVERSAMPLE,
) -> list[list[Hit]]:
    """For each query (a row of a vector array, or a Recommend) the best `top` points by
    cosine, best first; `exclude`: point ids (or an Exclude) never returned.

    A filtered approximate search first takes the `oversample` × `top` unfiltered neighbours
    and keeps those that pass the filter: when at least `top` pass, they are the filtered
    answer (every point outside the candidates scores lower). Queries with too few passing
    candidates (a selective filter, or a photo of another category) run as a filtered search,
    which keeps the recall of unfiltered HNSW where Qdrant's filtered traversal needs a larger
    ef for the same recall (the README's store table)."""
    queries, exclude, tuning = as_queries(queries), Exclude.of(exclude), store.tuning(params)
    where = Where.of(filters, exclude)
    if not filters or params.exact or oversample <= 1:
        return checked(store, store.query(queries, top, where, tuning))
    wide = top * oversample + len(exclude.ids)
    candidates = store.query(queries, wide, Where.of(None, Exclude(items=exclude.items)), tuning)
    results: list[list[Hit] | None] = []
    for hits in candidates:
        kept = [h for h in hits if passes(h, filters, exclude)]
        results.append(kept[:top] if len(kept) >= top else None)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        rest = store.query([queries[i] for i in missing], top, where, tuning)
        for i, hits in zip(missing, rest, strict=True):
            results[i] = hits
    return checked(store, results)


def search_groups(
    store: Store,
    queries,
    top: int,
    filters: Filters | None = None,
    params: SearchParams = APPROXIMATE,
    exclude: Exclude | Collection[str] = (),
    group_size: int = 10,
) -> list[list[Group]]:
    """The `top` best garments (grouped by item_id) for each query, each with up to
    `group_size` of its photos that pass the filters, best first.

    A backend with its own group query (a Qdrant server) answers it; otherwise candidates are
    grouped in score order and widened until `top` groups are seen (or every passing point
    is), then all passing photos of the chosen garments are ranked with one search restricted
    to them. With exact search this is the exact grouped answer."""
    exclude = Exclude.of(exclude)
    if store.groups_natively:
        where, tuning = Where.of(filters, exclude), store.tuning(params)
        return [
            _checked_groups(store, store.query_groups(q, top, group_size, where, tuning))
            for q in as_queries(queries)
        ]
    return [
        _checked_groups(store, _emulated(store, q, top, filters, params, exclude, group_size))
        for q in as_queries(queries)
    ]


def _checked_groups(store: Store, groups: list[Group]) -> list[Group]:
    checked(store, [g.hits for g in groups])
    return groups


def _emulated(store, query, top, filters, params, exclude, group_size) -> list[Group]:
    limit, total = max(top * 4, group_size), None  # counted only when the candidates widen
    while True:
        hits = search(store, [query], limit, filters, params, exclude)[0]
        groups: dict[str, list[Hit]] = {}
        for hit in hits:
            groups.setdefault(group_key(hit), []).append(hit)
        exhausted = len(hits) < limit
        if len(groups) >= top or exhausted:
            break
        total = store.count() if total is None else total
        if limit >= total:
            exhausted = True
            break
        limit = min(limit * 4, total)
    chosen = list(groups)[:top]
    if not exhausted:  # the chosen garments may have more photos below the candidates
        groups = _members(store, query, chosen, filters, params, exclude)
    return [Group(key, groups[key][:group_size]) for key in chosen]


def _members(
    store: Store,
    query: QueryVector,
    items: list[str],
    filters: Filters | None,
    params: SearchParams,
    exclude: Exclude,
) -> dict[str, list[Hit]]:
    """Every passing photo of `items`, best first per item: one search restricted to them
    (a selective filter: Qdrant scores them all from the payload index)."""
    within = {**(filters or {}), GROUP: items}
    limit = min(store.count(within), MAX_MEMBERS)
    members: dict[str, list[Hit]] = {}
    where = Where.of(within, exclude)
    for hit in store.query([query], max(limit, 1), where, store.tuning(params))[0]:
        members.setdefault(group_key(hit), []).append(hit)
    return members
