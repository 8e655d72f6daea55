"""What every engine of an ingest run shares: its settings, the summary it reports, stopping
cleanly on Ctrl-C or SIGTERM, and the writer loop's frame."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from embedder.choices import Choice, Decode
from ingest.writer import Writer
from search.store import Store

log = logging.getLogger(__name__)


class SampleStyle(Choice):
    """How `ingest sample` draws consumer photos (ingest.sample.STYLES)."""

    phone = "phone"
    street = "street"


class Engine(Choice):
    """What runs an ingest: this process (its reader processes and model), or Ray Data across a
    cluster's CPUs and GPUs."""

    local = "local"
    ray = "ray"


class StopOnInterrupt:
    """The first Ctrl-C or SIGTERM (docker stop, Kubernetes, systemd) asks the run to stop
    after the batch in hand (everything embedded is stored, then KeyboardInterrupt); a second
    one interrupts at once. A no-op off the main thread, where Python delivers no signals."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, at_once: bool = False):
        """at_once: the first signal interrupts (for a run that has no batch in hand to finish:
        a Ray job, which stops its own tasks)."""
        self.requested = at_once
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if os.getpid() != self._pid:
            return  # a forked decode worker: the main process decides
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this batch (signal again to stop at once)")

    def __enter__(self) -> StopOnInterrupt:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@dataclass
class Summary:
    """What a run did. `seconds` maps stage → wall seconds (plan, read, model, write, index)."""

    seen: int = 0
    embedded: int = 0
    present: int = 0
    changed: int = 0
    pruned: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    report: Path | None = None
    collection_points: int = 0
    runtime: str = ""  # where the model ran: device, precision, batch, readers
    embedding_seconds: float | None = None  # wall time of concurrent stages (Ray)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        busy = self.embedding_seconds or sum(
            self.seconds.get(k, 0) for k in ("read", "decode", "model")
        )
        return self.embedded / busy if busy else 0.0

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        out = [
            f"seen {self.seen}, embedded {self.embedded} ({self.changed} changed), "
            f"already present {self.present}, failed {self.failed}"
            + (f", pruned {self.pruned}" if self.pruned else ""),
            f"{self.images_per_second:.1f} img/s embedding; stages: {stages}; "
            f"total {self.total_seconds:.1f}s; collection now holds {self.collection_points}",
        ]
        if self.runtime:
            out.append(f"model on {self.runtime}")
        if self.report:
            out.append(f"failed files and reasons: {self.report}")
        return out


@dataclass
class Embedding:
    """What an engine did with a plan: points written, files that failed (path, reason),
    stage seconds, where the model ran, and the wall time of concurrent stages (Ray)."""

    embedded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    runtime: str = ""
    wall: float | None = None
    nodes: int = 1  # machines (Ray nodes) whose embedder actors produced the vectors


@dataclass(frozen=True)
class IngestSettings:
    """How to run an ingest; batch size and readers left None take the model's device's
    defaults (for_device, applied once the model is built)."""

    batch_size: int | None = None  # images per forward pass [32 on CPU, 256 on CUDA]
    workers: int | None = None  # reader processes [a quarter of the cores on CPU, up to 8 on CUDA]
    decode: Decode = Decode.cpu  # cpu: workers decode; device: JPEGs decode on the GPU
    report: str | Path = "ingest-failures.csv"  # failed files and reasons
    progress: bool = True
    prune: bool = False  # delete points (of this share) whose files are gone
    image_base: str | None = None  # image_url = BASE<point id>.jpg in every payload
    engine: Engine = Engine.local  # ray: Ray Data across a cluster (ingest.ray_engine)
    ray_address: str | None = None  # the Ray cluster [RAY_ADDRESS, else one started for the run]
    actors: int | None = None  # Ray: embedder actors [one per GPU; without GPUs one per node]

    def __post_init__(self) -> None:
        if (self.batch_size is not None and self.batch_size < 1) or (
            self.workers is not None and self.workers < 0
        ):
            raise ValueError("the batch size must be positive and the readers at least 0")
        if self.actors is not None and self.actors < 1:
            raise ValueError("--actors must be at least 1")
        object.__setattr__(self, "decode", Decode(self.decode))
        object.__setattr__(self, "engine", Engine(self.engine))
        if self.engine is Engine.ray and self.decode is Decode.device:
            raise ValueError("--decode device runs with --engine local; Ray decodes on CPUs")

    def for_device(self, device) -> IngestSettings:
        """These settings with `device`'s defaults where they were left None (the one place
        of device defaults): batch 32 on CPU, 256 on CUDA; readers: on CPU a quarter of the
        cores, at least one (the model takes the rest: one reader keeps up with ResNet50 and
        resnet18 at 128 px on 2 cores, where two readers slowed both), on CUDA up to 8."""
        on_gpu, cores = getattr(device, "type", device) == "cuda", os.cpu_count() or 2
        return replace(
            self,
            batch_size=self.batch_size or (256 if on_gpu else 32),
            workers=self.workers
            if self.workers is not None
            else (max(1, min(8, cores - 1)) if on_gpu else max(1, cores // 4)),
        )


@contextmanager
def writing(
    store: Store, total: int, progress: bool, desc: str = "ingest"
) -> Iterator[tuple[Writer, tqdm, StopOnInterrupt]]:
    """One writer thread into `store`, a progress bar and the signal handling, for a loop that
    hands the writer its embedded batches and calls `stop.check()` after each. However the
    loop ends (done, Ctrl-C, an error) what was handed to the writer is stored and flushed
    (`writer.stored` counts it)."""
    writer = Writer(store)
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, smoothing=0.05)
    with StopOnInterrupt() as stop:
        try:
            yield writer, bar, stop
        finally:
            bar.close()
            writer.close()  # on Ctrl-C too: what was embedded is stored
            store.flush()
