"""The store interface: one collection in one Qdrant, and the plain data that crosses it.

Only collection operations live here, each implemented once per backend (search.store.edge,
search.store.server); the search algorithms built from them (oversampling, grouping) are in
search.store.queries. Calls are stateless, as qdrant-client's are: search parameters travel
with each call; the collection's metadata is read once, when first needed."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedder.errors import UserError
from search.store.schema import GROUP, INDEXED

Filters = Mapping[str, "str | Sequence[str]"]  # field → value, or any of several values
RETRIEVE_CHUNK = 1000  # ids per retrieve request
SEGMENT_POINTS = 50_000  # points per segment indexed while a bulk load goes on (0: at the end)
RESCORE_OVERSAMPLING = 2.0  # quantized search: candidates rescored with the original vectors


class StoreError(UserError, RuntimeError):
    """A store problem a user can act on: missing collection, unreachable server, lock, mismatch."""


class StoreUnavailable(StoreError):
    """The store did not answer in time, could not be reached, or was busy (HTTP 429 or 5xx):
    the same call may succeed if tried again."""


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
    """A photo in an answer: its point id, cosine score (None where it was listed, not
    searched: a garment's photos) and payload."""

    id: str
    score: float | None
    payload: dict = field(default_factory=dict)


def hit_of(point) -> Hit:
    """A scored point of either library (both have .id .score .payload) as a Hit."""
    return Hit(str(point.id), float(point.score), point.payload or {})


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


@dataclass(frozen=True)
class Where:
    """A call's conditions, in neither library's terms: each field one of its values, and the
    ids and garments left out. Each backend turns it into its own filter in one function."""

    match: tuple[tuple[str, tuple[str, ...]], ...] = ()
    not_ids: tuple[str, ...] = ()
    not_items: tuple[str, ...] = ()

    @classmethod
    def of(cls, filters: Filters | None, exclude: Exclude | Collection[str] = ()) -> Where | None:
        """The conditions of `filters` (indexed schema fields only) less `exclude`; None: all."""
        exclude = Exclude.of(exclude)
        unknown = sorted(set(filters or ()) - set(INDEXED))
        if unknown:
            raise ValueError(f"cannot filter on {unknown}: the indexed fields are {INDEXED}")
        if not filters and not exclude:
            return None
        match = tuple(
            (k, (v,) if isinstance(v, str) else tuple(v)) for k, v in (filters or {}).items()
        )
        return cls(match, exclude.ids, exclude.items)

    @property
    def unlike(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The left-out garments as a field condition (must not match)."""
        return ((GROUP, self.not_items),) if self.not_items else ()


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
class Tuning:
    """A search's parameters resolved against the collection: exact, or HNSW ef and the
    oversampling of quantized candidates rescored with the original vectors."""

    exact: bool = False
    hnsw_ef: int | None = None
    rescore: float | None = None


@dataclass(frozen=True)
class IndexSettings:
    """HNSW and storage options applied when a collection is created."""

    m: int = 16
    ef_construct: int = 100
    hnsw_ef: int | None = 512  # search-time ef (the README's store table: recall and latency)
    quantization: bool = True  # int8 scalar quantization with rescoring (the README's table)
    segment_points: int = SEGMENT_POINTS  # embedded: index each segment of this many as it fills
    shard_number: int | None = None  # server only
    replication_factor: int | None = None  # server only
    write_consistency: int | None = None  # server only: replicas that acknowledge a write

    def __post_init__(self) -> None:
        if self.segment_points < 0:
            raise ValueError("--segment-points must be 0 (index at the end) or more")
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
            "segment_points": self.segment_points,
        }

    @classmethod
    def from_recorded(cls, index: dict) -> IndexSettings:
        """The settings a collection recorded (to make another one like it)."""
        return cls(
            m=index.get("m", 16),
            ef_construct=index.get("ef_construct", 100),
            hnsw_ef=index.get("hnsw_ef"),
            quantization=bool(index.get("quantization")),
            segment_points=int(index.get("segment_points", 0)),
        )


class Store(ABC):
    """One collection in one Qdrant. Cosine distance, keyword indexes on the schema's indexed
    fields (search.store.schema.INDEXED)."""

    kind: str
    collection: str
    groups_natively = False  # the backend answers grouped queries itself (query_groups)
    _metadata: dict | None = None  # read once per open store (see metadata())

    # the collection ----------------------------------------------------------------------------
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

    def require_metadata(self) -> dict:
        """The collection's metadata; StoreError when it does not exist."""
        if not self.exists():
            raise StoreError(
                f"collection {self.collection!r} does not exist in {self.describe()}"
                f"; create it with `ingest run --root DIR`"
            )
        return self.metadata()

    def index_settings(self) -> dict:
        """The index settings recorded with the collection (m, ef_construct, hnsw_ef, ...)."""
        return dict(self.metadata().get("index", {}))

    def tuning(self, params: SearchParams) -> Tuning | None:
        """`params` resolved against the collection's recorded index: ef and rescoring of an
        approximate search, else exact; None: the engine's defaults."""
        if params.exact:
            return Tuning(exact=True)
        index = self.index_settings()
        ef = params.hnsw_ef if params.hnsw_ef is not None else index.get("hnsw_ef")
        rescore = RESCORE_OVERSAMPLING if index.get("quantization") else None
        return None if ef is None and rescore is None else Tuning(False, ef, rescore)

    @abstractmethod
    def indexes(self) -> list[str]:
        """The payload fields the collection has an index on (search.store.schema.INDEXED)."""

    @abstractmethod
    def index_complete(self) -> bool:
        """Whether the vector index was built after the last write (see finish())."""

    # points --------------------------------------------------------------------------------------
    @abstractmethod
    def count(self, filters: Filters | None = None) -> int: ...

    def total(self) -> int:
        """How many points the collection holds, found the cheapest sound way: count() here;
        the embedded store answers from its own record while that stands, without loading
        the engine."""
        return self.count()

    def retrieve(self, ids: list[str], fields: list[str]) -> dict[str, dict]:
        """For the ids that are stored: id → their payload restricted to `fields`."""
        out: dict[str, dict] = {}
        for start in range(0, len(ids), RETRIEVE_CHUNK):
            out.update(self._retrieve(ids[start : start + RETRIEVE_CHUNK], fields))
        return out

    @abstractmethod
    def _retrieve(self, ids: list[str], fields: list[str]) -> dict[str, dict]:
        """retrieve() for one request's worth of ids."""

    @abstractmethod
    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """The stored vectors of the ids that exist."""

    def scroll(
        self,
        batch: int = 256,
        vectors: bool = True,
        filters: Filters | None = None,
        fields: Sequence[str] | None = None,
    ) -> Iterator[Points]:
        """Every point that passes `filters`, in id order, `batch` at a time; `fields`: only
        these payload fields (None: all)."""
        offset, where = None, Where.of(filters)
        while True:
            points, offset = self._page(offset, batch, where, vectors, fields)
            if len(points):
                yield points
            if offset is None:
                return

    @abstractmethod
    def _page(
        self, offset, limit: int, where: Where | None, vectors: bool, fields: Sequence[str] | None
    ) -> tuple[Points, object]:
        """One page of scroll(): the points from `offset` on, and the next page's offset (None
        after the last)."""

    @abstractmethod
    def facet(self, key: str, limit: int = 1000, filters: Filters | None = None) -> dict[str, int]:
        """Distinct values of a payload field with their counts, among the points that pass
        `filters`."""

    @abstractmethod
    def query(
        self, queries: list[QueryVector], top: int, where: Where | None, tuning: Tuning | None
    ) -> list[list[Hit]]:
        """The engine's own search (nearest neighbours or recommendations), in one batch."""

    def query_groups(
        self,
        query: QueryVector,
        top: int,
        group_size: int,
        where: Where | None,
        tuning: Tuning | None,
    ) -> list[Group]:
        """The engine's own grouped search (by item_id), where groups_natively says it has one."""
        raise NotImplementedError(f"{self.kind} stores have no grouped query")

    def upsert(self, points: Points) -> None:
        if len(points):
            self._upsert(points)

    def delete(self, ids: Sequence[str]) -> None:
        if len(ids):
            self._delete(list(ids))

    @abstractmethod
    def _upsert(self, points: Points) -> None:
        """upsert() of a batch that is not empty."""

    @abstractmethod
    def _delete(self, ids: list[str]) -> None:
        """delete() of ids that are not none."""

    @abstractmethod
    def set_payloads(self, updates: Mapping[str, dict]) -> None:
        """Merge each point's given payload fields into its stored payload (vectors untouched)."""

    @abstractmethod
    def finish(self) -> None:
        """After a bulk load: build the vector index and make everything durable."""

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        return self.kind

    def _call(self, what: str, fn, *args, **kwargs):
        """Every engine call of a backend goes through here: what the engine raises becomes
        the backend's one-line StoreError (`_failure`), or goes on as it is."""
        try:
            return fn(*args, **kwargs)
        except (StoreError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # an engine's Rust panic is a BaseException
            failure = self._failure(what, exc)
            if failure is exc:
                raise
            raise failure from None

    @abstractmethod
    def _failure(self, what: str, exc: BaseException) -> BaseException:
        """The error to raise for `exc`, met while trying to `what` (`exc` itself: unchanged)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # what a bulk writer (ingest, restore) needs to know of where the collection lives ----------
    def segment_points(self) -> int:
        """Points after which a bulk writer calls index_loaded() (0: never; a server indexes
        by itself once finish() turns its indexing on)."""
        return 0

    def index_loaded(self) -> None:
        """During a bulk load: index what has been loaded so far (the segment that filled), so
        that finish() after the last batch indexes one segment, not the collection."""
        return None  # a store whose segment_points() is 0 is never asked

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
