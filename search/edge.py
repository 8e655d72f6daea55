"""The embedded store: a qdrant-edge shard on local disk, in-process, no server."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from search.schema import GROUP, INDEXED
from search.store import (
    NOTHING,
    Exclude,
    Filters,
    Hit,
    IndexSettings,
    Points,
    QueryVector,
    Recommend,
    SearchParams,
    Store,
    StoreError,
    records_to_points,
    require_free_space,
)

METADATA_FILE = "collection.json"
_RESTORE = "rebuild the collection with `ingest run --recreate` or `ingest restore --recreate`"
log = logging.getLogger(__name__)


def edge_filter(
    filters: Filters | None, exclude: Exclude | Collection[str] = ()
) -> qe.Filter | None:
    exclude = Exclude.of(exclude)
    if not filters and not exclude:
        return None
    must_not = [qe.HasIdCondition(set(exclude.ids))] if exclude.ids else []
    if exclude.items:
        must_not.append(qe.FieldCondition(GROUP, match=qe.MatchAny(list(exclude.items))))
    return qe.Filter(
        must=[
            qe.FieldCondition(
                k, match=qe.MatchValue(v) if isinstance(v, str) else qe.MatchAny(list(v))
            )
            for k, v in (filters or {}).items()
        ]
        or None,
        must_not=must_not or None,
    )


def edge_query(query: QueryVector) -> qe.Query:
    if isinstance(query, Recommend):
        examples = qe.RecommendQuery(
            positives=query.positive.tolist(), negatives=query.negative.tolist()
        )
        return qe.Query.RecommendBestScore(examples)
    return qe.Query.Nearest(query.tolist())


def _vector(record) -> list[float]:
    vec = record.vector
    return vec[""] if isinstance(vec, dict) else vec


SHARD_BYTES = 200_000_000  # a new shard's memory-mapped files (WAL, storages), mostly sparse
POINT_BYTES = 2048  # per point besides its vector: payload, indexes, WAL
INDEX_MARKER = "index.complete"  # written after the HNSW build; removed by the next write
SIDECARS = "sidecars"  # files derived from the points (see Store.sidecar); removed by writes
LOCK_WAIT = 5.0  # seconds to wait for a lock left by a process that has just exited


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _sparse_copy(src: Path, dst: Path, chunk: int = 1 << 20) -> None:
    """Copy a folder tree keeping files sparse (the shard's memory maps are mostly holes)."""
    for folder, _dirs, files in os.walk(src):
        target = dst / Path(folder).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            with open(Path(folder) / name, "rb") as fin, open(target / name, "wb") as fout:
                while block := fin.read(chunk):
                    if block.count(0) == len(block):
                        fout.seek(len(block), os.SEEK_CUR)
                    else:
                        fout.write(block)
                fout.truncate()


class EdgeStore(Store):
    """Layout: DIR/<collection>/shard (qdrant-edge), DIR/<collection>/collection.json (metadata).

    One process at a time may open a collection; a second one gets a clear StoreError. Engine
    failures (a damaged shard) become one-line StoreErrors naming the folder and the way out.
    """

    kind = "embedded"

    def __init__(self, store_dir: str | Path, collection: str, read_only: bool = False):
        self.root = Path(store_dir).expanduser()
        self.collection = collection
        self.folder = self.root / collection
        self.read_only = read_only  # a command that only reads: a read-only folder is fine
        self._shard: qe.EdgeShard | None = None
        self._lock = None
        self._copy: str | None = None  # a temporary copy of a read-only shard
        self._indexed: bool | None = None

    def _damaged(self, exc: BaseException) -> StoreError:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreError(
            f"{self.describe()} collection {self.collection!r} in {str(self.folder)!r} is "
            f"damaged or unreadable ({text[:160]}); rebuild it with `ingest run --recreate` or "
            f"`ingest restore --recreate --from SNAPSHOT`"
        )

    def _engine(self, what, *args):
        """Run a shard call; anything the engine raises is a damaged-store StoreError."""
        try:
            return what(*args)
        except StoreError:
            raise
        except Exception as exc:
            raise self._damaged(exc) from None

    def describe(self) -> str:
        return f"embedded store {str(self.root)!r}"

    # lifecycle -------------------------------------------------------------------------------
    def _acquire(self) -> None:
        if self._lock is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.folder / ".lock", "a+")
        except OSError as exc:
            if self.read_only and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return  # nobody can write a read-only store: no lock needed to read it
            raise
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                if not _alive(holder) and time.monotonic() < deadline:
                    time.sleep(0.1)  # its reader processes are on their way out
                    continue
                fh.close()
                who = (
                    f"another process (pid {holder})"
                    if _alive(holder)
                    else f"leftover processes of pid {holder}, which has exited"
                )
                raise StoreError(
                    f"{self.describe()} collection {self.collection!r} is in use by "
                    f"{who}; wait for it or stop it"
                ) from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock = fh

    def _open(self) -> qe.EdgeShard:
        if self._shard is None:
            if not self.exists():
                self.require_metadata()
            self._acquire()
            shard = str(self.folder / "shard")
            if self.read_only and not os.access(shard, os.W_OK):
                # the engine memory-maps its files for writing: read a temporary copy
                log.warning("%s is read-only: searching a temporary copy of it", self.describe())
                self._copy = tempfile.mkdtemp(prefix="fashion-retrieval-ro-")
                _sparse_copy(Path(shard), Path(self._copy) / "shard")
                shard = str(Path(self._copy) / "shard")
            try:
                self._shard = qe.EdgeShard.load(shard)
            except Exception as exc:
                raise self._damaged(exc) from None
        return self._shard

    def exists(self) -> bool:
        return (self.folder / METADATA_FILE).is_file() and (self.folder / "shard").is_dir()

    def create(self, dim: int, metadata: dict, settings: IndexSettings = IndexSettings()) -> None:
        if self.exists():
            raise StoreError(f"collection {self.collection!r} already exists")
        self._acquire()
        require_free_space(self.folder, SHARD_BYTES, "a new collection")
        quant = (
            qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True)
            if settings.quantization
            else None
        )
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=settings.m, ef_construct=settings.ef_construct, full_scan_threshold=10_000
            ),
            quantization_config=quant,
        )
        shutil.rmtree(self.folder / "shard", ignore_errors=True)  # leftovers of a failed create
        self._shard = qe.EdgeShard.create(str(self.folder / "shard"), config)
        for name in INDEXED:
            self._shard.update(
                qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword)
            )
        index = settings.recorded()
        meta = {**metadata, "dim": dim, "distance": "cosine", "index": index}
        tmp = self.folder / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.replace(self.folder / METADATA_FILE)  # written last: its presence means "created"
        self._metadata = meta
        self._shard.flush()

    def drop(self) -> None:
        self._acquire()
        if self._shard is not None:
            self._shard.close()
            self._shard = None
        for child in self.folder.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        self._metadata = None

    @contextmanager
    def replacement(self) -> Iterator[EdgeStore]:
        """An empty collection beside this one; swapped in when the block succeeds, deleted in
        any case: a failure at any point leaves this collection as it was."""
        staging = EdgeStore(self.root, f".staging-{self.collection}")
        if staging.folder.exists():
            staging.drop()  # leftovers of an earlier failed restore
        try:
            yield staging
            self._swap_in(staging)
        finally:
            staging._discard()

    def _swap_in(self, other: EdgeStore) -> None:
        """Replace this collection by `other` (complete and flushed), entry by entry; a crash
        halfway leaves both on disk, never neither."""
        other.close()
        self._acquire()
        if self._shard is not None:
            self._shard.close()
            self._shard = None
        old = self.root / f".replaced-{self.collection}"
        shutil.rmtree(old, ignore_errors=True)
        old.mkdir(parents=True)
        for child in self.folder.iterdir():
            if child.name != ".lock":
                child.rename(old / child.name)
        for name in ("shard", INDEX_MARKER, METADATA_FILE):  # the metadata last: "created"
            if (other.folder / name).exists():
                (other.folder / name).rename(self.folder / name)
        shutil.rmtree(old, ignore_errors=True)
        self._metadata, self._indexed = None, None

    def _discard(self) -> None:
        """Delete this (staging) collection and its folder."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _read_metadata(self) -> dict:
        path = self.folder / METADATA_FILE
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{str(path)!r} is not valid JSON ({exc}); {_RESTORE}") from None
        except UnicodeDecodeError:
            raise StoreError(f"{str(path)!r} is not a text file; {_RESTORE}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("dim"), int):
            raise StoreError(f"{str(path)!r} does not describe a collection; {_RESTORE}")
        return meta

    def index_complete(self) -> bool:
        return (self.folder / INDEX_MARKER).is_file()

    def check_space(self, points: int) -> None:
        dim = self.metadata()["dim"] if self.exists() else 512
        need = points * (3 * 4 * dim + POINT_BYTES)  # vector, its copy in the index and WAL
        if points:
            require_free_space(self.folder, need, f"{points:,} points")

    def _writing(self) -> None:
        """Before a write: the index is no longer complete until the next finish(), and what
        was derived from the points is stale."""
        if self._indexed is not False:
            (self.folder / INDEX_MARKER).unlink(missing_ok=True)
            shutil.rmtree(self.folder / SIDECARS, ignore_errors=True)
            self._indexed = False

    def sidecar(self, name: str) -> Path:
        return self.folder / SIDECARS / name

    def finish(self) -> None:
        shard = self._open()
        self._engine(shard.optimize)
        self._engine(shard.flush)
        (self.folder / INDEX_MARKER).write_text("hnsw built\n")
        self._indexed = True

    def flush(self) -> None:
        if self._shard is not None:
            self._shard.flush()

    def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            try:
                if self._indexed is not None:  # this process wrote: make it durable
                    shard.flush()
                shard.close()
            except Exception as exc:  # e.g. a full disk: what was acknowledged is in the WAL
                log.warning("closing %s: %s", self.describe(), str(exc).splitlines()[0][:200])
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    # data ------------------------------------------------------------------------------------
    def count(self, filters: Filters | None = None) -> int:
        return self._engine(
            self._open().count, qe.CountRequest(exact=True, filter=edge_filter(filters))
        )

    def indexes(self) -> list[str]:
        return sorted(self._engine(self._open().info).payload_schema)

    def retrieve(self, ids: list[str], fields: list[str]) -> dict[str, dict]:
        shard, out = self._open(), {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for rec in self._engine(
                lambda c=chunk: shard.retrieve(c, with_payload=fields or False, with_vector=False)
            ):
                out[str(rec.id)] = rec.payload or {}
        return out

    def upsert(self, points: Points) -> None:
        if not len(points):
            return
        vectors = np.asarray(points.vectors, np.float32)
        batch = [  # row by row: half the time of one big tolist() (measured, 227k × 512)
            qe.Point(pid, vec.tolist(), payload)
            for pid, vec, payload in zip(points.ids, vectors, points.payloads, strict=True)
        ]
        self._writing()
        self._engine(self._open().update, qe.UpdateOperation.upsert_points(batch))

    def set_payloads(self, updates) -> None:
        shard = self._open()
        self._writing()
        for pid, fields in updates.items():
            self._engine(shard.update, qe.UpdateOperation.set_payload([pid], fields))

    def delete(self, ids: list[str]) -> None:
        if ids:
            self._writing()
            self._engine(self._open().update, qe.UpdateOperation.delete_points(list(ids)))

    def _search(
        self,
        queries: list[QueryVector],
        top: int,
        filters: Filters | None,
        params: SearchParams,
        exclude: Exclude = NOTHING,
    ) -> list[list[Hit]]:
        shard = self._open()
        engine_params, where = self.library_params(params, qe), edge_filter(filters, exclude)
        requests = [
            qe.QueryRequest(
                limit=top,
                query=edge_query(query),
                with_payload=True,
                filter=where,
                params=engine_params,
            )
            for query in queries
        ]
        results = self._engine(shard.query_batch, qe.QueryBatchRequest(requests))
        return [[Hit(str(p.id), float(p.score), p.payload or {}) for p in res] for res in results]

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        shard = self._open()
        records = self._engine(
            lambda: shard.retrieve(list(ids), with_payload=False, with_vector=True)
        )
        return {str(r.id): np.asarray(_vector(r), np.float32) for r in records}

    def scroll(
        self,
        batch: int = 256,
        vectors: bool = True,
        filters: Filters | None = None,
        exclude: Sequence[str] = (),
        fields: Sequence[str] | None = None,
    ) -> Iterator[Points]:
        shard, offset = self._open(), None
        payload = True if fields is None else list(fields)
        while True:
            records, offset = self._engine(
                shard.scroll,
                qe.ScrollRequest(
                    offset=offset,
                    limit=batch,
                    filter=edge_filter(filters, exclude),
                    with_payload=payload,
                    with_vector=vectors,
                ),
            )
            if records:
                yield records_to_points(records, vectors, _vector)
            if offset is None:
                return

    def facet(self, key: str, limit: int = 1000, filters: Filters | None = None) -> dict[str, int]:
        response = self._engine(
            self._open().facet,
            qe.FacetRequest(key=key, limit=limit, exact=True, filter=edge_filter(filters)),
        )
        return {str(h.value): int(h.count) for h in response.hits}
