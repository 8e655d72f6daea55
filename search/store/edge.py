"""The embedded store: a qdrant-edge shard on local disk, in-process, no server."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from embedder.errors import first_line
from search.store.base import (
    Filters,
    Hit,
    IndexSettings,
    Points,
    QueryVector,
    Store,
    StoreError,
    Tuning,
    Where,
    hit_of,
    records_to_points,
)
from search.store.disk import require_free_space
from search.store.schema import INDEXED
from search.store.to_edge import edge_batch, edge_filter, edge_points, edge_vector

METADATA_FILE = "collection.json"
_RESTORE = "rebuild the collection with `ingest run --recreate` or `ingest restore --recreate`"
log = logging.getLogger(__name__)

SHARD_BYTES = 200_000_000  # a new shard's memory-mapped files (WAL, storages), mostly sparse
POINT_BYTES = 2048  # per point besides its vector: payload, indexes, WAL
# the engine writes its WAL (32 MB segments, two open) through memory maps even to open a
# shard: on a fuller disk a write there is a SIGBUS that kills the process with no message
WAL_BYTES = 64_000_000
INDEX_MARKER = "index.complete"  # written after the HNSW build; removed by the next write
SIDECARS = "sidecars"  # files derived from the points (see Store.sidecar); removed by writes
SEGMENT_FILES = ("version.info", "segment.json", "mutable_id_tracker.mappings",
                 "mutable_id_tracker.versions")  # fmt: skip
MAX_SEGMENTS = 16  # the optimizer merges segments only past this many
INDEXING_THRESHOLD_KB = 10_000  # Qdrant's: smaller segments are searched without an index
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


def _optimizers(dim: int, segment_points: int) -> qe.EdgeOptimizersConfig:
    """Segments indexed while points arrive stay as they were built (no merge rebuilds them),
    and a segment of `segment_points` is large enough to be indexed when it fills."""
    full = segment_points * dim * 4 // 1024  # a full segment's vectors, KB
    return qe.EdgeOptimizersConfig(
        default_segment_number=MAX_SEGMENTS,
        indexing_threshold=max(1, min(INDEXING_THRESHOLD_KB, full)) if segment_points else None,
    )


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
        self._engine = threading.RLock()  # the shard is driven by one thread at a time

    def _call(self, what: str, fn, *args, **kwargs):
        with self._engine:  # the web app's request threads share one open store
            return super()._call(what, fn, *args, **kwargs)

    def _failure(self, what: str, exc: BaseException) -> StoreError:
        """Anything the engine raises means a damaged or unreadable shard, unless the disk is
        full (then nothing needs rebuilding: space does)."""
        try:
            self._require_space(self.folder, WAL_BYTES, f"{self.describe()} to {what}")
        except StoreError as full:
            return full
        return StoreError(
            f"{self.describe()} collection {self.collection!r} in {str(self.folder)!r} is "
            f"damaged or unreadable (to {what}: {first_line(exc)[:160]}); rebuild it with "
            f"`ingest run --recreate` or `ingest restore --recreate --from SNAPSHOT`"
        )

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
        with self._engine:  # loaded once, whichever request thread asks first
            return self._shard or self._load()

    def _load(self) -> qe.EdgeShard:
        if self._shard is None:
            if not self.exists():
                self.require_metadata()
            self._acquire()
            shard = str(self.folder / "shard")
            recorded = self._recorded()
            self._check_files(recorded)
            if self.read_only and not os.access(shard, os.W_OK):
                # the engine memory-maps its files for writing: read a temporary copy
                log.warning("%s is read-only: searching a temporary copy of it", self.describe())
                self._copy = tempfile.mkdtemp(prefix="fashion-retrieval-ro-")
                _sparse_copy(Path(shard), Path(self._copy) / "shard")
                shard = str(Path(self._copy) / "shard")
            self._require_space(shard, WAL_BYTES, f"opening {self.describe()}")
            log.debug("loading the shard of collection %r", self.collection)
            self._shard = self._call("load the shard", qe.EdgeShard.load, shard)
            self._check_count(recorded)
        return self._shard

    # wholeness: what finish() recorded, checked on every open ---------------------------------
    def _recorded(self) -> dict | None:
        """What the last finish() recorded (points, the shard's segment files), or None: the
        collection was written since, or finished before such records were kept."""
        try:
            recorded = json.loads((self.folder / INDEX_MARKER).read_text())
        except (OSError, ValueError):
            return None
        return recorded if isinstance(recorded, dict) and "points" in recorded else None

    def _segment_files(self) -> dict[str, int]:
        """The files a finished segment cannot lose, with their sizes: its version and config,
        its id tracker and its vector storage (the engine itself removes journals and the like
        on load; none of these changes size until the next write)."""
        shard = self.folder / "shard"
        return {
            str(p.relative_to(shard)): p.stat().st_size
            for p in sorted((shard / "segments").rglob("*"))
            if p.is_file()
            and (p.name in SEGMENT_FILES or "vector_storage" in p.relative_to(shard).parts)
        }

    def _check_files(self, recorded: dict | None) -> None:
        """Every segment file the finished collection had is still there, at the size it had
        (a deleted or truncated id tracker, status or version file would otherwise leave the
        engine answering from part of it). A record of names alone (older stores) is checked
        by name."""
        if recorded is None:
            return
        shard, files = self.folder / "shard", recorded.get("files", [])
        sizes = files if isinstance(files, dict) else dict.fromkeys(files)
        missing = [name for name in sizes if not (shard / name).is_file()]
        if missing:
            raise self._failure(
                "open it",
                FileNotFoundError(f"{len(missing)} of its files are missing: {missing[0]}"),
            )
        changed = [
            name for name, size in sizes.items()
            if size is not None and (shard / name).stat().st_size != size
        ]  # fmt: skip
        if changed:
            raise self._failure(
                "open it", ValueError(f"{len(changed)} of its files changed size: {changed[0]}")
            )

    def _check_count(self, recorded: dict | None) -> None:
        """The engine sees as many points as the finished collection recorded."""
        if recorded is None:
            return
        seen = self._call("count points", self._shard.count, qe.CountRequest(exact=True))
        if seen != recorded["points"]:
            raise self._failure(
                "open it",
                ValueError(f"it holds {seen} of the {recorded['points']} points it recorded"),
            )

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
            optimizers=_optimizers(dim, settings.segment_points),
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
        self._metadata = None

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

    @staticmethod
    def _require_space(where, need: int, what: str) -> None:
        """require_free_space, saying that nothing needs rebuilding (space does)."""
        try:
            require_free_space(where, need, what)
        except StoreError as full:
            raise StoreError(f"{full} (the collection is not damaged: free some space)") from None

    def check_space(self, points: int) -> None:
        dim = self.metadata()["dim"] if self.exists() else 512
        need = points * (3 * 4 * dim + POINT_BYTES)  # vector, its copy in the index and WAL
        if points:
            self._require_space(self.folder, need + WAL_BYTES, f"{points:,} points")

    def _writing(self) -> None:
        """Before a write: the index is no longer complete until the next finish(), and what
        was derived from the points is stale."""
        (self.folder / INDEX_MARKER).unlink(missing_ok=True)
        if (self.folder / SIDECARS).exists():
            shutil.rmtree(self.folder / SIDECARS, ignore_errors=True)

    def sidecar(self, name: str) -> Path:
        return self.folder / SIDECARS / name

    def segment_points(self) -> int:
        return IndexSettings.from_recorded(self.metadata().get("index", {})).segment_points

    def index_loaded(self) -> None:
        self._call("index a loaded segment", self._open().optimize)

    def finish(self) -> None:
        shard = self._open()
        self._call("build the index", shard.optimize)
        self._call("flush", shard.flush)
        points = self._call("count points", shard.count, qe.CountRequest(exact=True))
        record = {"points": points, "files": self._segment_files()}
        tmp = self.folder / (INDEX_MARKER + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.folder / INDEX_MARKER)  # the index built, and what it holds

    def flush(self) -> None:
        if self._shard is not None:
            self._shard.flush()

    def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            try:
                if not self.read_only:  # what this process wrote is made durable
                    shard.flush()
                shard.close()
            except Exception as exc:  # e.g. a full disk: what was acknowledged is in the WAL
                log.warning("closing %s: %s", self.describe(), first_line(exc)[:200])
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    # data ------------------------------------------------------------------------------------
    def total(self) -> int:
        """The finish record's count while it stands (nothing written since; every file it
        lists present at its size; room on the disk to open the shard, as an open checks):
        no engine is loaded, which at 226,980 points saves an ingest rerun 2 s. Else count()."""
        if self._shard is not None:
            return self.count()
        self._acquire()  # as an open does: a writer elsewhere waits for this process
        recorded = self._recorded()
        if recorded is None or not isinstance(recorded.get("files"), dict):
            return self.count()
        self._check_files(recorded)
        self._require_space(self.folder, WAL_BYTES, f"opening {self.describe()}")
        return int(recorded["points"])

    def count(self, filters: Filters | None = None) -> int:
        request = qe.CountRequest(exact=True, filter=edge_filter(Where.of(filters)))
        return self._call("count points", self._open().count, request)

    def indexes(self) -> list[str]:
        return sorted(self._call("read the collection", self._open().info).payload_schema)

    def _retrieve(self, ids: list[str], fields: list[str]) -> dict[str, dict]:
        payload = fields or False
        records = self._call("read points", self._open().retrieve, ids, payload, False)
        return {str(rec.id): rec.payload or {} for rec in records}

    def _upsert(self, points: Points) -> None:
        self.check_space(len(points))  # each batch: another writer may have filled the disk
        batch = edge_points(points)
        self._writing()
        self._call("write points", self._open().update, qe.UpdateOperation.upsert_points(batch))

    def set_payloads(self, updates) -> None:
        shard = self._open()
        self._writing()
        for pid, fields in updates.items():
            self._call(
                "write payloads", shard.update, qe.UpdateOperation.set_payload([pid], fields)
            )

    def _delete(self, ids: list[str]) -> None:
        self._writing()
        self._call("delete points", self._open().update, qe.UpdateOperation.delete_points(ids))

    def query(
        self, queries: list[QueryVector], top: int, where: Where | None, tuning: Tuning | None
    ) -> list[list[Hit]]:
        batch = edge_batch(queries, top, where, tuning)
        return [
            [hit_of(p) for p in r] for r in self._call("search", self._open().query_batch, batch)
        ]

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        records = self._call(
            "read vectors", self._open().retrieve, list(ids), with_payload=False, with_vector=True
        )
        return {str(r.id): np.asarray(edge_vector(r), np.float32) for r in records}

    def _page(self, offset, limit, where, vectors, fields) -> tuple[Points, object]:
        payload = True if fields is None else list(fields)
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=edge_filter(where),
            with_payload=payload,
            with_vector=vectors,
        )
        records, offset = self._call("read points", self._open().scroll, request)
        return records_to_points(records, vectors, edge_vector), offset

    def facet(self, key: str, limit: int = 1000, filters: Filters | None = None) -> dict[str, int]:
        condition = edge_filter(Where.of(filters))
        request = qe.FacetRequest(key=key, limit=limit, exact=True, filter=condition)
        response = self._call("read payload values", self._open().facet, request)
        return {str(h.value): int(h.count) for h in response.hits}
