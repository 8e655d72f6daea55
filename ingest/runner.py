"""The ingest runner: plan → decode/embed → write, timing each stage and owning resumption."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from embedder.choices import Decode, Engine
from embedder.spec import ModelSpec, model_difference
from ingest.control import IngestSettings, Summary, writing
from ingest.plan import Plan, Work, image_url, keep_state, make_plan, payload
from search.store import IndexSettings, Points, Store, StoreError

if TYPE_CHECKING:
    from embedder.inference import Encoder
    from embedder.recipe import EncoderRecipe

log = logging.getLogger(__name__)


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


def run_ingest(
    store: Store,
    encoder: Encoder | EncoderRecipe,
    work: Work,
    settings: IngestSettings = IngestSettings(),
) -> Summary:
    """Embed every image of `work` (ingest.plan.read_work) not already stored unchanged, and
    upsert it into `store`.

    `encoder`: an Encoder, or a recipe that builds one (embedder.recipe): only a run that has
    something to embed builds the model (and imports torch). `settings.engine` says what runs
    the embedding: this process, or Ray Data (each actor builds its encoder from the recipe);
    everything else (the plan, pruning, the index, the report) is the same for both.

    Point ids are uuid5(path), so a rerun (after a crash, Ctrl-C or new files) continues
    where the last one stopped; the collection must already exist (see ensure_collection).
    Stored points that lack the image_url of `settings.image_base` get it without
    re-embedding.
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
    if len(plan.todo) and settings.engine is Engine.ray:
        from ingest.ray_engine import embed_on_ray

        embed_on_ray(store, encoder, plan, settings, summary)
    elif len(plan.todo):
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
    read = model = decode = 0.0
    with writing(store, summary, len(todo), settings.progress) as (writer, bar, stop):
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
            summary.failures += [(str(todo["path"].iat[i]), reason) for i, reason in part.failed]
            read, model = read + part.seconds_wait, model + part.seconds_model
            decode += part.seconds_decode
            bar.update(len(part.index) + len(part.failed))
            stop.check()  # Ctrl-C: stop here, with this batch handed to the writer
    summary.seconds.update(read=read, model=model, write=writer.seconds)
    if settings.decode is Decode.device:
        summary.seconds["decode"] = decode
