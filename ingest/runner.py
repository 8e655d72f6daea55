"""The ingest runner: plan → decode/embed → write, timing each stage and owning resumption."""

from __future__ import annotations

import csv
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from embedder.choices import Decode
from embedder.spec import ModelSpec, model_difference
from ingest.plan import Plan, Work, image_url, keep_state, make_plan, payload
from ingest.writer import Writer
from search.store import IndexSettings, Points, Store, StoreError

if TYPE_CHECKING:
    from embedder.inference import Encoder
    from embedder.recipe import EncoderRecipe

log = logging.getLogger(__name__)


class StopOnInterrupt:
    """The first Ctrl-C or SIGTERM (docker stop, Kubernetes, systemd) asks the run to stop
    after the batch in hand (everything embedded is stored, then KeyboardInterrupt); a second
    one interrupts at once. A no-op off the main thread, where Python delivers no signals."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
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

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        busy = sum(self.seconds.get(k, 0) for k in ("read", "decode", "model"))
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


def ensure_collection(
    store: Store,
    spec: ModelSpec,
    *,
    weights_file: str | None = None,
    recreate: bool = False,
    settings: IndexSettings = IndexSettings(),
    root: str | None = None,
    encoded_by: dict | None = None,
) -> None:
    """Create the collection for `spec`, or check that an existing one was made by this model.
    `encoded_by`: what ran the model (runtime, precision), recorded for information."""
    if recreate and store.exists():
        log.warning("dropping collection %r (--recreate)", store.collection)
        store.drop()
    if not store.exists():
        store.create(
            spec.out_dim,
            {
                "model": spec.identity(),
                "model_spec": spec.to_json(),
                "weights_file": str(Path(weights_file).resolve()) if weights_file else None,
                "dataset_root": root,
                **({"encoded_by": encoded_by} if encoded_by else {}),
            },
            settings,
        )
        return
    diff = model_difference(store.metadata().get("model"), spec)
    if diff:
        raise StoreError(
            f"collection {store.collection!r} was embedded with another model "
            f"({diff}); use the same model, another --collection, or --recreate"
        )


@dataclass(frozen=True)
class IngestSettings:
    """How to run an ingest; batch size and readers left None take the model's device's
    defaults (for_device, applied once the model is built)."""

    batch_size: int | None = None  # images per forward pass [32 on CPU, 256 on CUDA]
    workers: int | None = None  # reader processes [1 on CPU, up to 8 on CUDA]
    decode: Decode = Decode.cpu  # cpu: workers decode; device: JPEGs decode on the GPU
    report: str | Path = "ingest-failures.csv"  # failed files and reasons
    progress: bool = True
    prune: bool = False  # delete points (of this share) whose files are gone
    image_base: str | None = None  # image_url = BASE<point id>.jpg in every payload

    def __post_init__(self) -> None:
        if (self.batch_size is not None and self.batch_size < 1) or (
            self.workers is not None and self.workers < 0
        ):
            raise ValueError("the batch size must be positive and the readers at least 0")
        object.__setattr__(self, "decode", Decode(self.decode))

    def for_device(self, device) -> IngestSettings:
        """These settings with `device`'s defaults where they were left None (the one place
        of device defaults): batch 32 on CPU, 256 on CUDA; 1 reader on CPU, up to 8 on CUDA."""
        on_gpu = getattr(device, "type", device) == "cuda"
        return replace(
            self,
            batch_size=self.batch_size or (256 if on_gpu else 32),
            workers=self.workers
            if self.workers is not None
            else (max(1, min(8, (os.cpu_count() or 2) - 1)) if on_gpu else 1),
        )


def run_ingest(
    store: Store,
    encoder: Encoder | EncoderRecipe,
    work: Work,
    settings: IngestSettings = IngestSettings(),
) -> Summary:
    """Embed every image of `work` (ingest.plan.read_work) not already stored unchanged, and
    upsert it into `store`.

    `encoder`: an Encoder, or a recipe that builds one (embedder.recipe): only a run that has
    something to embed builds the model (and imports torch). Point ids are uuid5(path), so a
    rerun (after a crash, Ctrl-C or new files) continues where the last one stopped; the
    collection must already exist (see ensure_collection). Stored points that lack the
    image_url of `settings.image_base` get it without re-embedding.
    """
    if settings.prune and work.limit is not None:
        raise ValueError("--prune cannot be combined with --limit (it would delete the rest)")
    image_base = settings.image_base
    started = time.perf_counter()
    summary = Summary(seconds={"catalog": work.seconds})
    plan = make_plan(work, store, image_base=image_base)
    if plan.relabel:
        store.set_payloads({pid: {"image_url": image_url(image_base, pid)} for pid in plan.relabel})
    if settings.prune:
        store.delete(plan.gone)
        summary.pruned = len(plan.gone)
    summary.seen, summary.present, summary.changed = len(plan.catalog), plan.present, plan.changed
    store.check_space(len(plan.todo))
    summary.seconds["plan"] = time.perf_counter() - started
    if len(plan.todo):
        _embed(store, encoder.build(), plan, settings, summary)
    if summary.embedded or summary.pruned or not store.index_complete():
        t0 = time.perf_counter()  # also finishes an index build that a crash interrupted
        store.finish()
        summary.seconds["index"] = time.perf_counter() - t0
    summary.collection_points = store.count()
    if not settings.image_base:  # the next plan reads this instead of every stored payload
        keep_state(store, plan.state_after({p for p, _ in summary.failures}, settings.prune))
    if summary.failures:
        summary.report = Path(settings.report)
        with summary.report.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["path", "reason"])
            out.writerows(summary.failures)
    summary.total_seconds = work.seconds + time.perf_counter() - started
    return summary


def _embed(
    store: Store, encoder: Encoder, plan: Plan, settings: IngestSettings, summary: Summary
) -> None:
    """Decode and embed the plan's images, writing each batch as it comes (read, model and
    write times into the summary); Ctrl-C/SIGTERM stop after the batch in hand."""
    from embedder.inference import embed_batches

    settings = settings.for_device(encoder.device)
    runs = (
        f"OpenVINO {encoder.precision}"
        if getattr(encoder, "runtime", None) == "openvino"
        else f"torch {'bf16' if encoder.dtype else 'fp32'}"
    )
    summary.runtime = (
        f"{encoder.device} ({runs}), batch {settings.batch_size}, "
        f"{settings.workers} reader process(es)"
    )
    todo = plan.todo
    writer = Writer(store)
    bar = tqdm(
        total=len(todo), unit="img", desc="ingest", disable=not settings.progress, smoothing=0.05
    )
    read = model = decode = 0.0
    with StopOnInterrupt() as stop:
        try:
            for part in embed_batches(
                encoder,
                plan.files(),
                plan.boxes(),
                batch_size=settings.batch_size,
                workers=settings.workers,
                decode=settings.decode,
            ):
                rows = todo.iloc[part.index]
                writer(
                    Points(
                        rows["id"].tolist(),
                        part.vectors,
                        [payload(r, settings.image_base) for r in rows.itertuples(index=False)],
                    )
                )
                summary.failures += [
                    (str(todo["path"].iat[i]), reason) for i, reason in part.failed
                ]
                read, model = read + part.seconds_wait, model + part.seconds_model
                decode += part.seconds_decode
                bar.update(len(part.index) + len(part.failed))
                stop.check()  # Ctrl-C: stop here, with this batch handed to the writer
        finally:
            bar.close()
            writer.close()  # on Ctrl-C too: what was embedded is stored
            store.flush()
            summary.embedded = writer.stored
    summary.seconds.update(read=read, model=model, write=writer.seconds)
    if settings.decode is Decode.device:
        summary.seconds["decode"] = decode
