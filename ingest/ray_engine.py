"""The Ray Data engine (`ingest run --engine ray`): the plan's images through Ray Data across a
cluster's CPUs and GPUs, with the local engine's reader and encoder. Decode tasks feed an actor
pool (one actor per GPU, or CPU actors) that builds its encoder from the recipe; a Qdrant
server is written by parallel writer tasks, an embedded store by the driver. A bad file is a
row with its reason, a killed worker costs time (Ray retries it; upserts are idempotent)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from embedder.catalog import BOX
from embedder.errors import UserError, first_line
from embedder.inference import NOT_FINITE, usable
from ingest.control import Embedding, IngestSettings, StopOnInterrupt, writing
from ingest.plan import Plan, payload
from search.store import Points, Store, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from embedder.recipe import ModelRecipe

log = logging.getLogger(__name__)

EXTRA = "pip install 'fashion-retrieval[ray]'"
BLOCK_BATCHES = 4  # batches of decode work per Ray block (one decode task each)
# decode tasks reserve half a CPU: a reservation unlike the actors' keeps Ray Data from fusing
# decoding into the actors (ray-project/ray#54433), so decoding runs in parallel tasks
DECODE_CPUS = 0.5
WRITE_ATTEMPTS = 6  # tries of one upsert into a server before the run fails
FIRST_WAIT = 0.5  # seconds before the second try; doubled for each next one
ACTOR_START_S = 600  # seconds for the embedder actors to start (a model download included)


def import_ray():
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "CRITICAL")  # read when ray.data is imported;
    # a failed run is reported by this command, in one line
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(f"--engine ray needs Ray Data, which is not installed: {EXTRA}") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None) -> Iterator[object]:
    """Ray, connected for the run: a caller's Ray when this process already has one (left
    running); else the cluster at `address` or RAY_ADDRESS (disconnected after); else a local
    Ray with this machine's cores and GPUs, shut down after the run, leaving no process."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    logging.getLogger("ray").setLevel(logging.ERROR)  # its notices are not this command's
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"cannot connect to the Ray cluster at {address!r} (--ray-address / RAY_ADDRESS): "
            f"{first_line(exc)[:200]}"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _configure(ray, progress: bool) -> None:
    """Ray Data's own progress bars only where they are the run's progress (server writes);
    the embedder actors all started before the first block is handed out (else the first one
    ready takes the early blocks while the others still build their models), and a cluster that
    cannot start them is an error after ACTOR_START_S, not a wait without end."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    context.wait_for_min_actors_s = ACTOR_START_S


def work_rows(plan: Plan, image_base: str | None) -> pd.DataFrame:
    """The rows to embed as Ray reads them: point id, dataset path, file, box (-1: none) and
    payload (JSON), all made here once by the local engine's rules."""
    todo = plan.todo
    boxes = todo[list(BOX)].to_numpy(dtype=np.int64, na_value=-1)
    boxes[(boxes < 0).any(axis=1)] = -1
    return pd.DataFrame(
        {
            "id": todo["id"].to_numpy(dtype=object),
            "path": todo["path"].to_numpy(dtype=object),
            "file": plan.files(),
            **{name: boxes[:, k] for k, name in enumerate(BOX)},
            "payload": [json.dumps(payload(r, image_base)) for r in todo.itertuples(index=False)],
        }
    )


def decode_batch(batch: dict, spec, storage) -> dict:
    """Ray task body: files → uint8 CHW pixels by the local engine's reader (ImageFiles), a
    reason per file that cannot be read (its pixels left zero). The files are read here, on
    the worker, from their storage (the local disk, or an object store)."""
    from embedder.reader import ImageFiles

    t0 = time.perf_counter()
    boxes = np.stack([batch[name] for name in BOX], axis=1).tolist()
    files = ImageFiles(
        list(batch["file"]),
        [None if b[0] < 0 else tuple(b) for b in boxes],
        spec,
        storage=storage,
    ).fetch()
    pixels = np.zeros((len(files), 3, spec.img_size, spec.img_size), np.uint8)
    reasons = []
    for i in range(len(files)):
        _, decoded, reason = files[i]
        if decoded is not None:
            pixels[i] = decoded
        reasons.append("" if decoded is not None else reason)
    return {
        "id": batch["id"],
        "path": batch["path"],
        "payload": batch["payload"],
        "reason": np.array(reasons, dtype=object),
        "pixels": pixels,
        "decode_s": np.full(len(files), (time.perf_counter() - t0) / max(1, len(files))),
    }


class EmbedActor:
    """Ray actor: the encoder built once from the recipe (on the actor's GPU, or its CPU),
    then batches of pixels → vectors (zero for rows that failed to decode)."""

    def __init__(self, recipe: ModelRecipe):
        import ray

        self.encoder = recipe.build()
        self.dim = self.encoder.spec.out_dim
        self.node = ray.get_runtime_context().get_node_id()  # where this actor runs

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        good = batch["reason"] == ""
        vectors = np.zeros((len(good), self.dim), np.float32)
        if good.any():
            vectors[good] = self.encoder(batch["pixels"][good])
        damaged = good & ~usable(vectors)  # never a point: the row's reason says why
        reasons = np.where(damaged, NOT_FINITE, batch["reason"]).astype(object)
        out = {k: v for k, v in batch.items() if k not in ("pixels", "reason")}
        out["reason"] = reasons
        out["vector"] = vectors
        out["node"] = np.full(len(good), self.node, dtype=object)
        out["model_s"] = np.full(len(good), (time.perf_counter() - t0) / max(1, len(good)))
        return out


def to_points(batch: dict) -> tuple[Points, list[tuple[str, str]]]:
    """A batch of embedded rows → the points to write, and (path, reason) of the failed."""
    good = batch["reason"] == ""
    points = Points(
        [str(i) for i in batch["id"][good]],
        np.asarray(batch["vector"][good], np.float32).reshape(-1, batch["vector"].shape[-1]),
        [json.loads(p) for p in batch["payload"][good]],
    )
    paths, reasons = batch["path"][~good], batch["reason"][~good]
    failed = [(str(p), str(r)) for p, r in zip(paths, reasons, strict=True)]
    return points, failed


def upsert_retrying(
    store: Store,
    points: Points,
    attempts: int = WRITE_ATTEMPTS,
    first_wait: float | None = None,
) -> None:
    """Upsert, trying again with exponential backoff while the store is unavailable (timeouts,
    HTTP 429 and 5xx); then a StoreError naming how many points were not written. Upserts by
    point id: a retry after a write that did land writes the same points again, no more."""
    first_wait = FIRST_WAIT if first_wait is None else first_wait
    for attempt in range(attempts):
        try:
            store.upsert(points)
            return
        except StoreUnavailable as exc:
            if attempt == attempts - 1:
                raise StoreError(
                    f"{len(points)} points could not be written after {attempts} tries: {exc}"
                ) from None
            wait = first_wait * 2**attempt * random.uniform(1.0, 1.25)
            log.warning("%s; trying again in %.1f s", exc, wait)
            time.sleep(wait)


def _datasink_class():
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class QdrantDatasink(Datasink):
        """Parallel writer tasks into a Qdrant server: each opens the collection, upserts its
        blocks with retries (upsert_retrying) and returns what it wrote and what failed to
        decode; the driver adds them up in on_write_complete."""

        def __init__(self, opened: dict, attempts: int, first_wait: float | None):
            self.opened = opened  # open_store's keywords (url, api key, collection)
            self.attempts, self.first_wait = attempts, first_wait
            self.written, self.seconds, self.failures, self.nodes = 0, 0.0, [], set()

        def write(self, blocks, ctx) -> dict:
            from search.store import open_store

            written, seconds, failures, nodes = 0, 0.0, [], set()
            with open_store(**self.opened) as store:
                for block in blocks:
                    rows = BlockAccessor.for_block(block).to_numpy()
                    points, failed = to_points(rows)
                    t0 = time.perf_counter()
                    upsert_retrying(store, points, self.attempts, self.first_wait)
                    seconds += time.perf_counter() - t0
                    written, failures = written + len(points), failures + failed
                    nodes.update(str(n) for n in rows["node"])
            return {"written": written, "seconds": seconds, "failures": failures, "nodes": nodes}

        def on_write_complete(self, write_result) -> None:
            for part in write_result.write_returns:
                self.written += part["written"]
                self.seconds += part["seconds"]
                self.failures += part["failures"]
                self.nodes |= part["nodes"]

    return QdrantDatasink


def _pool(ray, recipe: ModelRecipe, actors: int | None) -> tuple[int, dict, str]:
    """How many embedder actors and what each reserves: one per GPU (num_gpus=1) when the
    cluster has GPUs and the recipe may use them; else CPU actors, one per node."""
    gpus = _resource(ray, "GPU")
    if gpus and not str(recipe.device).startswith("cpu"):
        return actors or gpus, {"num_gpus": 1, "num_cpus": 1}, "cuda"
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return actors or max(1, nodes), {"num_cpus": 1}, "cpu"


def embed_on_ray(
    store: Store, recipe: ModelRecipe, plan: Plan, settings: IngestSettings
) -> Embedding:
    """Embed the plan's rows on Ray Data and write them to `store` (see the module's doc):
    the counts, failures and stage times."""
    from embedder.recipe import ModelRecipe

    if not isinstance(recipe, ModelRecipe):
        raise ValueError("--engine ray needs a model recipe (embedder.recipe.ModelRecipe)")
    opened = store.opened_elsewhere()
    started = time.perf_counter()
    with ray_cluster(settings.ray_address) as ray:
        _configure(ray, progress=settings.progress and opened is not None)
        ray_start = time.perf_counter() - started
        actors, reserve, device = _pool(ray, recipe, settings.actors)
        settings = settings.for_device(device)
        batch = settings.batch_size
        rows = work_rows(plan, settings.image_base)
        block = batch * BLOCK_BATCHES
        data = ray.data.from_pandas([rows.iloc[i : i + block] for i in range(0, len(rows), block)])
        embedded = data.map_batches(
            decode_batch,
            fn_kwargs={"spec": recipe.spec, "storage": plan.root.storage},
            batch_size=batch,
            batch_format="numpy",
            num_cpus=DECODE_CPUS,
        ).map_batches(
            EmbedActor,
            fn_constructor_args=(recipe,),
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            **reserve,
        )
        runtime = (
            f"Ray ({_resource(ray, 'CPU')} CPUs, {_resource(ray, 'GPU')} GPUs): "
            f"{actors} embedder actor(s) on {device}, batch {batch}"
        )
        t0 = time.perf_counter()
        if opened is not None:
            done = write_in_tasks(embedded, opened)
        else:
            try:
                done = _write_in_driver(embedded, store, settings, len(rows))
            except Exception as exc:
                raise _unwrapped(exc) from None
    done.seconds = {"ray start": ray_start, **done.seconds}
    done.runtime = f"{runtime}; the actors embedded on {done.nodes} node(s)"
    done.wall = time.perf_counter() - t0
    return done


def _resource(ray, name: str) -> int:
    """How many of a resource ("CPU", "GPU") the Ray cluster has."""
    return int(ray.cluster_resources().get(name, 0))


def _write_in_driver(embedded, store: Store, settings, total: int) -> Embedding:
    """The local engine's writer, fed by the driver: the only writer of an embedded store."""
    decode = model = 0.0
    failures, nodes = [], set()
    with writing(store, total, settings.progress, "ingest (ray)") as (writer, bar, stop):
        for part in embedded.iter_batches(
            batch_size=settings.batch_size, batch_format="numpy", prefetch_batches=2
        ):
            points, failed = to_points(part)
            writer(points)
            failures += failed
            decode += float(part["decode_s"].sum())
            model += float(part["model_s"].sum())
            nodes.update(str(n) for n in part["node"])
            bar.update(len(part["id"]))
            stop.check()  # Ctrl-C: stop here, with this batch handed to the writer
    seconds = {"decode": decode, "model": model, **writer.stages()}
    return Embedding(writer.stored, failures, seconds, nodes=len(nodes))


def write_in_tasks(
    embedded, opened: dict, attempts: int = WRITE_ATTEMPTS, first_wait: float | None = None
) -> Embedding:
    """Parallel writer tasks into a Qdrant server (the Datasink); Ray shows the progress. A
    write that fails after its tries stops the run with that error (one line)."""
    sink = _datasink_class()(opened, attempts, first_wait)
    try:
        with StopOnInterrupt(at_once=True):
            embedded.write_datasink(sink)
    except Exception as exc:
        raise _unwrapped(exc) from None
    failures = [tuple(f) for f in sink.failures]
    return Embedding(sink.written, failures, {"write": sink.seconds}, nodes=len(sink.nodes))


def _unwrapped(exc: BaseException) -> BaseException:
    """The error a Ray task or actor raised, without Ray's wrapping (its traceback text): a
    user's error (a StoreError from a writer, a model that cannot be built) as one line."""
    seen = exc
    while seen is not None:
        if getattr(seen, "cause", None) is not None:  # Ray's wrapper: the task's own error
            seen = seen.cause
            continue
        if isinstance(seen, UserError | ValueError | OSError):
            kind = StoreError if isinstance(seen, StoreError) else UserError
            return kind(first_line(seen))
        seen = seen.__cause__
    return exc
