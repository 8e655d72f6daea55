"""The ingest runner: plan → decode/embed → write, timing each stage and owning resumption."""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from embedder.choices import Decode
from embedder.spec import ModelSpec, model_difference
from ingest.control import Embedding, Engine, IngestSettings, Summary, writing
from ingest.plan import (
    Plan,
    Work,
    detect_boxes,
    image_url,
    keep_state,
    make_plan,
    payload,
    read_work,
)
from search.store import IndexSettings, Points, Store, StoreError

if TYPE_CHECKING:
    from embedder.recipe import Built, DetectorRecipe, ModelRecipe

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
    detector: DetectorRecipe | None = None,
) -> None:
    """Create the collection for `spec` (and the garment `detector` that chose the boxes of
    photos without one), or check that an existing one was made by this model and detector.
    `encoded_by`: what ran the model (runtime, precision), recorded for information."""
    if recreate and store.exists():
        log.warning("dropping collection %r (--recreate)", store.collection)
        store.drop()
    found = detector.describe() if detector else None
    if not store.exists():
        store.create(
            spec.out_dim,
            {
                "model": spec.identity(),
                "model_spec": spec.to_json(),
                "weights_file": str(Path(weights_file).resolve()) if weights_file else None,
                "dataset_root": root,
                **({"encoded_by": encoded_by} if encoded_by else {}),
                **(
                    {"detector": found, "detector_file": str(Path(detector.weights).resolve())}
                    if detector
                    else {}
                ),
            },
            settings,
        )
        return
    metadata = store.metadata()
    diff = model_difference(metadata.get("model"), spec)
    if diff:
        raise StoreError(
            f"collection {store.collection!r} was embedded with another model "
            f"({diff}); use the same model, another --collection, or --recreate"
        )
    recorded = (metadata.get("detector") or {}).get("weights")
    if found and recorded != found["weights"]:
        made = f"with detector {recorded}" if recorded else "without a detector"
        raise StoreError(
            f"collection {store.collection!r} was made {made}, not detector "
            f"{found['weights']}; use the same detector, another --collection, or --recreate"
        )


def check_writable(path: Path, what: str) -> None:
    """Found before the work, not after it: a file that could not be written at the end."""
    folder = path.parent if str(path.parent) else Path(".")
    ok = (
        (path.is_file() and os.access(path, os.W_OK))
        if path.exists()
        else (folder.is_dir() and os.access(folder, os.W_OK))
    )
    if not ok:
        raise ValueError(f"cannot write {what} {str(path)!r}: not a writable file or folder")


def ingest(
    open_store: Callable[[], Store],
    root: str | Path,
    recipe: ModelRecipe,
    settings: IngestSettings = IngestSettings(),
    index: IndexSettings = IndexSettings(),
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    recreate: bool = False,
    announce: Callable[[str], object] = log.info,
    storage_options: dict | None = None,
    detector: str | None = None,
) -> Summary:
    """`ingest run`: the catalog first (a bad root fails before a model is built or a
    collection made; an object-store root is opened with `storage_options`), then the
    collection made for the recipe's model and the garment `detector` (a checkpoint; else
    the one an existing collection records), or checked to be theirs, then run_ingest.
    Calibration photos of an int8 model default to the dataset's."""
    from embedder.recipe import DetectorRecipe, RunOptions

    check_writable(Path(settings.report), "the failure report (--report)")
    work = read_work(root, limit=limit, shard=shard, storage_options=storage_options)
    recipe = recipe if recipe.calibration else recipe.with_(calibration=work.root)
    run = RunOptions(recipe.device, recipe.precision, recipe.runtime)
    with open_store() as store:
        existing = store.metadata() if store.exists() and not recreate else {}
        if existing:
            recipe = recipe.against(existing)
        spec = recipe.spec  # a checkpoint's or a collection's record: no torch
        finder = (
            DetectorRecipe(detector, run.device, run.precision, run.runtime) if detector else None
        )
        if finder is None and existing:
            finder = DetectorRecipe.for_collection(existing, run=run)
        if finder is not None:
            _ = finder.spec  # a file that is no detector fails here, before anything is made
        ensure_collection(
            store,
            spec,
            weights_file=recipe.weights,
            recreate=recreate,
            settings=index,
            root=work.root.url(),
            encoded_by=recipe.describe(),
            detector=finder,
        )
        announce(
            f"ingest {work.root.url()} → {store.describe()} collection {store.collection!r} "
            f"({spec.backbone}, weights {spec.weights}"
            + (f"; boxes by detector {finder.spec.weights})" if finder else ")")
        )
        return run_ingest(store, recipe, work, settings, detector=finder)


def run_ingest(
    store: Store,
    recipe: ModelRecipe | Built,
    work: Work,
    settings: IngestSettings = IngestSettings(),
    detector: DetectorRecipe | None = None,
) -> Summary:
    """Embed every image of `work` (ingest.plan.read_work) not already stored unchanged, and
    upsert it into `store`; with a `detector`, photos without an annotated box are embedded
    in the box it finds (ingest.plan.detect_boxes).

    `recipe` builds the encoder (embedder.recipe): only a run that has something to embed
    builds the model (and imports torch). `settings.engine` says what runs the embedding:
    this process, or Ray Data (each actor builds its encoder from the recipe); everything else
    (the plan, pruning, the index, the report) is the same for both.

    Point ids are uuid5(path), so a rerun (after a crash, Ctrl-C or new files) continues
    where the last one stopped; the collection must already exist (see ensure_collection).
    Stored points that lack the image_url of `settings.image_base` get it without
    re-embedding.
    """
    if settings.prune and work.limit is not None:
        raise ValueError("--prune cannot be combined with --limit (it would delete the rest)")
    image_base = settings.image_base
    started = time.perf_counter()
    plan = make_plan(work, store, image_base=image_base)
    if plan.relabel:
        store.set_payloads({pid: {"image_url": image_url(image_base, pid)} for pid in plan.relabel})
    if settings.prune:
        store.delete(plan.gone)
    store.check_space(len(plan.todo))
    seconds = {"catalog": work.seconds, "plan": time.perf_counter() - started}
    if detector is not None and len(plan.todo):
        t0 = time.perf_counter()
        detect_boxes(plan, detector.build(throughput=True), settings.progress)
        seconds["detect"] = time.perf_counter() - t0
    done = Embedding()
    if len(plan.todo) and settings.engine is Engine.ray:
        from ingest.ray_engine import embed_on_ray

        done = embed_on_ray(store, recipe, plan, settings)
    elif len(plan.todo):
        done = _embed(store, recipe.build(), plan, settings)
    seconds.update(done.seconds)
    pruned = len(plan.gone) if settings.prune else 0
    if done.embedded or pruned or not store.index_complete():
        t0 = time.perf_counter()  # also finishes an index build that a crash interrupted
        store.finish()
        seconds["index"] = time.perf_counter() - t0
    if not settings.image_base:  # the next plan reads this instead of every stored payload
        keep_state(store, plan, {p for p, _ in done.failures}, settings.prune)
    failures = [*work.skipped, *done.failures]  # named like photos but not photos, first
    report = _write_report(failures, Path(settings.report)) if failures else None
    return Summary(
        seen=len(plan.catalog),
        embedded=done.embedded,
        present=plan.present,
        changed=plan.changed,
        pruned=pruned,
        failures=failures,
        seconds=seconds,
        total_seconds=work.seconds + time.perf_counter() - started,
        report=report,
        collection_points=store.total(),
        runtime=done.runtime,
        embedding_seconds=done.wall,
    )


def _write_report(failures: list[tuple[str, str]], path: Path) -> Path:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "reason"])
        out.writerows(failures)
    return path


def _embed(store: Store, encoder, plan: Plan, settings: IngestSettings) -> Embedding:
    """Decode and embed the plan's images, writing each batch as it comes; what was written,
    what failed and the read, model and write times. Ctrl-C/SIGTERM stop after the batch in
    hand."""
    from embedder.inference import embed_batches

    settings = settings.for_device(encoder.device)
    runtime = (
        f"{encoder.describe()}, batch {settings.batch_size}, {settings.workers} reader process(es)"
    )
    todo, failures = plan.todo, []
    read = model = decode = 0.0
    with writing(store, len(todo), settings.progress) as (writer, bar, stop):
        for part in embed_batches(
            encoder,
            plan.files(),
            plan.boxes(),
            batch_size=settings.batch_size,
            workers=settings.workers,
            decode=settings.decode,
            storage=plan.root.storage,
        ):
            rows = todo.iloc[part.index]
            writer(
                Points(
                    rows["id"].tolist(),
                    part.vectors,
                    [payload(r, settings.image_base) for r in rows.itertuples(index=False)],
                )
            )
            failures += [(str(todo["path"].iat[i]), reason) for i, reason in part.failed]
            read, model = read + part.seconds_wait, model + part.seconds_model
            decode += part.seconds_decode
            bar.update(len(part.index) + len(part.failed))
            stop.check()  # Ctrl-C: stop here, with this batch handed to the writer
    seconds = {"read": read, "model": model, **writer.stages()}
    if settings.decode is Decode.device:
        seconds["decode"] = decode
    return Embedding(writer.stored, failures, seconds, runtime)
