"""The one store interface over Qdrant: an embedded shard (default) or a Qdrant server.

Calls are stateless, as qdrant-client's are: search parameters (HNSW ef, exact) travel with each
call; the collection's metadata is read once, when first needed, and kept with the open store."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedder.errors import UserError
from search.schema import GROUP

DEFAULT_STORE_DIR = "./qdrant_data"
POINT_NAMESPACE = uuid.UUID("5b0c3f7e-8a41-4d0e-9c57-6a3f1f0de2b1")

Filters = Mapping[str, "str | Sequence[str]"]  # field → value, or any of several values
MAX_MEMBERS = 4096  # photos read to fill the groups of one grouped query
RESCORE_OVERSAMPLING = 2.0  # quantized search: candidates rescored with the original vectors
SCORE_SLACK = 1.0 + 1e-3  # cosine scores beyond ±this (or NaN) mean damaged vectors


class StoreError(UserError, RuntimeError):
    """A store problem a user can act on: missing collection, unreachable server, lock, mismatch."""


class StoreUnavailable(StoreError):
    """The store did not answer in time, could not be reached, or was busy (HTTP 429 or 5xx):
    the same call may succeed if tried again."""


def mount_of(path: str | Path) -> str:
    """The mount point holding `path` (or the nearest folder above it that exists)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


def require_free_space(where: str | Path, need: int, what: str) -> None:
    """Refuse, in one line, to start writing `need` bytes where fewer are free: a full disk
    met halfway through a memory-mapped write is a crash (SIGBUS), not an error."""
    folder = Path(where).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < need:
        raise StoreError(
            f"no space left on {mount_of(folder)} for {what}: need ~{need / 1e6:,.0f} MB, "
            f"{free / 1e6:,.0f} MB free"
        )


def point_id(path: str) -> str:
    """Deterministic point id of an image: uuid5 of its dataset-relative path."""
    return str(uuid.uuid5(POINT_NAMESPACE, path))


_UUID_GROUPS = ((0, 8), (9, 13), (14, 18), (19, 23), (24, 36))  # where the hex digits go


def point_ids(paths: Sequence[str]) -> np.ndarray:
    """point_id of every path at once (an array of str): the SHA-1 of each path as uuid5 takes
    it, then the version and variant bits and the dashed hex for all of them in NumPy, several
    times faster than uuid.uuid5 in a loop."""
    namespace, sha1 = POINT_NAMESPACE.bytes, hashlib.sha1
    digests = b"".join([sha1(namespace + p.encode()).digest()[:16] for p in paths])
    raw = np.frombuffer(digests, np.uint8).reshape(-1, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x50  # version 5
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = np.frombuffer(raw.tobytes().hex().encode(), np.uint8).reshape(-1, 32)
    out = np.full((len(raw), 36), ord("-"), np.uint8)
    start = 0
    for a, b in _UUID_GROUPS:
        out[:, a:b] = hexed[:, start : start + b - a]
        start += b - a
    return out.view("S36").ravel().astype(str)


@dataclass
class Points:
    """A batch of points: ids, float32 vectors (n, dim) and payloads, aligned."""

    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict]

    def __len__(self) -> int:
        return len(self.ids)


def records_to_points(records, with_vectors: bool, vector=lambda record: record.vector) -> Points:
    """Scrolled records (edge or client; both have .id .vector .payload) as one Points batch."""
    vectors = (
        np.asarray([vector(r) for r in records], np.float32)
        if with_vectors
        else np.zeros((len(records), 0), np.float32)
    )
    return Points([str(r.id) for r in records], vectors, [r.payload or {} for r in records])


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """One garment in a grouped answer: its best photos, best first (hits[0] ranks the group)."""

    id: str
    hits: list[Hit]

    @property
    def score(self) -> float:
        return self.hits[0].score


@dataclass(frozen=True)
class Exclude:
    """What a search leaves out: these point ids ("more like this" leaves out the photo itself)
    and every photo of these garments (the ones a user marked as not it)."""

    ids: tuple[str, ...] = ()
    items: tuple[str, ...] = ()

    @classmethod
    def of(cls, exclude: Exclude | Collection[str]) -> Exclude:
        """An Exclude, or point ids to leave out as one."""
        return exclude if isinstance(exclude, Exclude) else cls(ids=tuple(exclude))

    def __bool__(self) -> bool:
        return bool(self.ids or self.items)


NOTHING = Exclude()


@dataclass(frozen=True)
class Recommend:
    """A query by examples: like the `positive` vectors, unlike the `negative` ones (Qdrant's
    best-score strategy: a candidate scores its best similarity to a positive; one closer to a
    negative than to every positive scores below all the others)."""

    positive: np.ndarray  # (p, dim), p >= 1
    negative: np.ndarray  # (n, dim), n >= 0


QueryVector = np.ndarray | Recommend  # a vector to find the nearest of, or examples


def as_queries(queries) -> list[QueryVector]:
    """Rows of a vector array, one Recommend, or a list of either, as a list of queries."""
    if isinstance(queries, Recommend):
        return [queries]
    if isinstance(queries, np.ndarray):
        return list(np.asarray(queries, np.float32).reshape(-1, queries.shape[-1]))
    return [q if isinstance(q, Recommend) else np.asarray(q, np.float32) for q in queries]


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


@dataclass(frozen=True)
class SearchParams:
    """How one search runs: exact (brute force in the store), or HNSW with this ef (None: the
    ef recorded with the collection)."""

    exact: bool = False
    hnsw_ef: int | None = None

    def __post_init__(self) -> None:
        if self.hnsw_ef is not None and self.hnsw_ef < 1:
            raise ValueError(f"--hnsw-ef must be positive, got {self.hnsw_ef}")


APPROXIMATE = SearchParams()


@dataclass(frozen=True)
class IndexSettings:
    """HNSW and storage options applied when a collection is created."""

    m: int = 16
    ef_construct: int = 100
    hnsw_ef: int | None = 512  # search-time ef: recall@20 ≥ 0.99 at 226,980 points, p50 < 3 ms
    quantization: bool = False  # int8 scalar quantization with rescoring
    shard_number: int | None = None  # server only
    replication_factor: int | None = None  # server only
    write_consistency: int | None = None  # server only: replicas that acknowledge a write

    def __post_init__(self) -> None:
        if self.write_consistency and self.write_consistency > (self.replication_factor or 1):
            raise ValueError(
                f"--write-consistency {self.write_consistency} is more than the "
                f"{self.replication_factor or 1} copies of --replication-factor"
            )

    def recorded(self) -> dict:
        """What a collection's metadata records as its "index" (both stores alike)."""
        return {
            "m": self.m,
            "ef_construct": self.ef_construct,
            "hnsw_ef": self.hnsw_ef,
            "quantization": self.quantization,
        }

    @classmethod
    def from_recorded(cls, index: dict) -> IndexSettings:
        """The settings a collection recorded (to make another one like it)."""
        return cls(
            m=index.get("m", 16),
            ef_construct=index.get("ef_construct", 100),
            hnsw_ef=index.get("hnsw_ef"),
            quantization=bool(index.get("quantization")),
        )


class Store(ABC):
    """One collection in one Qdrant. Cosine distance, keyword indexes on the schema's indexed
    fields (search.schema.INDEXED)."""

    kind: str
    collection: str
    _metadata: dict | None = None  # read once per open store (see metadata())

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def create(self, dim: int, metadata: dict, settings: IndexSettings = IndexSettings()) -> None:
        """Create the collection (it must not exist) with its payload indexes and metadata."""

    @abstractmethod
    def drop(self) -> None:
        """Delete the collection and all its points, if it exists."""

    @abstractmethod
    def _read_metadata(self) -> dict:
        """The collection's metadata as stored (it exists)."""

    def metadata(self) -> dict:
        """The collection's metadata (model, dim, index settings), read from the store once;
        create() and drop() keep it current."""
        if self._metadata is None:
            self._metadata = self._read_metadata()
        return self._metadata

    @abstractmethod
    def count(self, filters: Filters | None = None) -> int: ...

    @abstractmethod
    def indexes(self) -> list[str]:
        """The payload fields the collection has an index on (search.schema.INDEXED)."""

    @abstractmethod
    def retrieve(self, ids: list[str], fields: list[str]) -> dict[str, dict]:
        """For the ids that are stored: id → their payload restricted to `fields`."""

    @abstractmethod
    def upsert(self, points: Points) -> None: ...

    @abstractmethod
    def delete(self, ids: list[str]) -> None: ...

    @abstractmethod
    def set_payloads(self, updates: Mapping[str, dict]) -> None:
        """Merge each point's given payload fields into its stored payload (vectors untouched)."""

    oversample: int = 4  # filtered search: unfiltered candidates per requested hit

    def index_settings(self) -> dict:
        """The index settings recorded with the collection (m, ef_construct, hnsw_ef, ...)."""
        return dict(self.metadata().get("index", {}))

    def search_options(self, params: SearchParams) -> tuple[int | None, float | None] | None:
        """(HNSW ef, rescoring oversampling of quantized vectors) of an approximate search:
        `params`' ef, else the collection's recorded one; None: the engine's own."""
        index = self.index_settings()
        ef = params.hnsw_ef if params.hnsw_ef is not None else index.get("hnsw_ef")
        oversampling = RESCORE_OVERSAMPLING if index.get("quantization") else None
        if ef is None and oversampling is None:
            return None
        return ef, oversampling

    def library_params(self, params: SearchParams, library):
        """`params` as the client library's own search parameters: `library` is qdrant_edge or
        qdrant_client.models (both name them SearchParams and QuantizationSearchParams);
        None: the engine's defaults."""
        if params.exact:
            return library.SearchParams(exact=True)
        if (options := self.search_options(params)) is None:
            return None
        ef, oversampling = options
        rescore = (
            library.QuantizationSearchParams(rescore=True, oversampling=oversampling)
            if oversampling
            else None
        )
        return library.SearchParams(hnsw_ef=ef, quantization=rescore)

    def search(
        self,
        queries,
        top: int,
        filters: Filters | None = None,
        params: SearchParams = APPROXIMATE,
        exclude: Exclude | Collection[str] = (),
    ) -> list[list[Hit]]:
        """For each query (a row of a vector array, or a Recommend) the best `top` points by
        cosine, best first; `exclude`: point ids (or an Exclude) never returned.

        A filtered approximate search first takes the `oversample` × `top` unfiltered
        neighbours and keeps those that pass the filter: when at least `top` pass, they are
        the filtered answer (every point outside the candidates scores lower). Queries with
        too few passing candidates (a selective filter, or a photo of another category) run
        as a filtered search. At 226,980 points this keeps the recall of unfiltered HNSW,
        where Qdrant's filtered traversal needs a four times larger ef for the same recall.
        """
        queries, exclude = as_queries(queries), Exclude.of(exclude)
        if not filters or params.exact or self.oversample <= 1:
            return self._checked(self._search(queries, top, filters, params, exclude))
        wide = top * self.oversample + len(exclude.ids)
        candidates = self._search(queries, wide, None, params, Exclude(items=exclude.items))
        results: list[list[Hit] | None] = []
        for hits in candidates:
            kept = [h for h in hits if passes(h, filters, exclude)]
            results.append(kept[:top] if len(kept) >= top else None)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            rest = self._search([queries[i] for i in missing], top, filters, params, exclude)
            for i, hits in zip(missing, rest, strict=True):
                results[i] = hits
        return self._checked(results)

    def _checked(self, results: list[list[Hit]]) -> list[list[Hit]]:
        """Cosine scores lie in [-1, 1]: anything else means damaged vectors, never an answer."""
        for hits in results:
            for hit in hits:
                if not -SCORE_SLACK <= hit.score <= SCORE_SLACK:  # also false for NaN
                    raise StoreError(
                        f"{self.describe()} collection {self.collection!r} returned the score "
                        f"{hit.score!r} for point {hit.id}: its vectors are damaged; rebuild it "
                        f"with `ingest run --recreate` or `ingest restore --recreate`"
                    )
        return results

    def index_complete(self) -> bool:
        """Whether the vector index was built after the last write (see finish())."""
        return True

    def check_space(self, points: int) -> None:
        """Before writing `points` new points: StoreError when the disk cannot hold them."""
        return None  # a server manages (and reports) its own disk

    def opened_elsewhere(self) -> dict | None:
        """open_store's keywords for opening this collection in other processes that write
        into it at the same time (a Ray cluster's writer tasks); None where this process is
        the only writer (the embedded store, qdrant-client's local mode)."""
        return None

    def sidecar(self, name: str) -> Path | None:
        """A file kept beside the collection that is valid only as long as nothing is written
        to the collection (the embedded store deletes its sidecars at every first write after a
        finish); None where there is no such place (a server, which others may write)."""
        return None

    @contextlib.contextmanager
    def replacement(self) -> Iterator[Store]:
        """A store to build a whole new version of this collection in; it takes this
        collection's place when the block ends without an error. Here the collection itself
        (Qdrant has no rename: a server's collection is replaced in place); the embedded store
        builds beside the old one and swaps only when complete."""
        yield self

    def verify(self) -> dict:
        """Read every point: vectors finite and unit length, payloads with a path, the count
        right; returns what was checked, raises StoreError naming the first problem."""
        meta, seen = self.require_metadata(), 0
        for points in self.scroll(1024, vectors=True):
            vectors = np.asarray(points.vectors, np.float64)
            if vectors.shape[1] != meta["dim"]:
                raise StoreError(f"vectors of size {vectors.shape[1]}, expected {meta['dim']}")
            norms = np.linalg.norm(vectors, axis=1)
            bad = ~np.isfinite(norms) | (np.abs(norms - 1) > 1e-3)
            if bad.any():
                pid = points.ids[int(np.argmax(bad))]
                raise StoreError(
                    f"point {pid} of collection {self.collection!r} has a damaged vector "
                    f"({int(bad.sum())} in this batch); rebuild it with `ingest run --recreate` "
                    f"or `ingest restore --recreate`"
                )
            missing = [
                i for i, p in zip(points.ids, points.payloads, strict=True) if "path" not in p
            ]
            if missing:
                raise StoreError(f"point {missing[0]} has no path in its payload")
            seen += len(points)
        counted = self.count()
        if counted != seen:
            raise StoreError(f"the collection counts {counted} points but {seen} could be read")
        return {"points": seen, "index_complete": self.index_complete()}

    def search_groups(
        self,
        queries,
        top: int,
        filters: Filters | None = None,
        params: SearchParams = APPROXIMATE,
        exclude: Exclude | Collection[str] = (),
        group_size: int = 10,
    ) -> list[list[Group]]:
        """The `top` best garments (grouped by item_id) for each query, each with up to
        `group_size` of its photos that pass the filters, best first.

        Emulated with plain calls (Qdrant's group query is a server feature): take candidates,
        group them in score order, widen the candidates until `top` groups are seen (or every
        passing point is), then rank all passing photos of the chosen garments with one search
        restricted to them. With exact search this is the exact
        grouped answer; the server store uses Qdrant's own group query.
        """
        exclude = Exclude.of(exclude)
        total: int | None = None  # counted only when the candidates must widen
        out = []
        for query in as_queries(queries):
            limit = max(top * 4, group_size)
            while True:
                hits = self.search([query], limit, filters, params, exclude)[0]
                groups: dict[str, list[Hit]] = {}
                for hit in hits:
                    groups.setdefault(group_key(hit), []).append(hit)
                exhausted = len(hits) < limit
                if len(groups) >= top or exhausted:
                    break
                total = self.count() if total is None else total
                if limit >= total:
                    exhausted = True
                    break
                limit = min(limit * 4, total)
            chosen = list(groups)[:top]
            if not exhausted:  # the chosen garments may have more photos below the candidates
                groups = self._members(query, chosen, filters, params, exclude)
            out.append([Group(key, groups[key][:group_size]) for key in chosen])
            self._checked([g.hits for g in out[-1]])
        return out

    def _members(
        self,
        query: QueryVector,
        items: list[str],
        filters: Filters | None,
        params: SearchParams,
        exclude: Exclude,
    ) -> dict[str, list[Hit]]:
        """Every passing photo of `items`, best first per item: one search restricted to them
        (a selective filter: Qdrant scores them all from the payload index)."""
        within = {**(filters or {}), GROUP: items}
        limit = min(self.count(within), MAX_MEMBERS)
        members: dict[str, list[Hit]] = {}
        for hit in self._search([query], max(limit, 1), within, params, exclude)[0]:
            members.setdefault(group_key(hit), []).append(hit)
        return members

    @abstractmethod
    def _search(
        self,
        queries: list[QueryVector],
        top: int,
        filters: Filters | None,
        params: SearchParams,
        exclude: Exclude = NOTHING,
    ) -> list[list[Hit]]:
        """The store's own search (nearest neighbours or recommendations), in one batch."""

    @abstractmethod
    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """The stored vectors of the ids that exist."""

    @abstractmethod
    def scroll(
        self,
        batch: int = 256,
        vectors: bool = True,
        filters: Filters | None = None,
        exclude: Sequence[str] = (),
        fields: Sequence[str] | None = None,
    ) -> Iterator[Points]:
        """Every point (that passes `filters`, less `exclude`), in id order, `batch` at a time;
        `fields`: only these payload fields (None: all)."""

    @abstractmethod
    def facet(self, key: str, limit: int = 1000, filters: Filters | None = None) -> dict[str, int]:
        """Distinct values of a payload field with their counts (a facet), among the points
        that pass `filters`."""

    @abstractmethod
    def finish(self) -> None:
        """After a bulk load: build the vector index and make everything durable."""

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def require_metadata(self) -> dict:
        """The collection's metadata; StoreError when it does not exist."""
        if not self.exists():
            raise StoreError(
                f"collection {self.collection!r} does not exist in {self.describe()}"
                f"; create it with `ingest run --root DIR`"
            )
        return self.metadata()

    def describe(self) -> str:
        return self.kind

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
