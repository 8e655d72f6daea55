"""`search evaluate`: the consumer-to-shop report with the k-NN answered by a collection (HNSW
and the split/source filters, as user queries are answered), beside exact search over the very
vectors the collection holds, so that index and filter recall show."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedder.evaluate import (
    Knn,
    Report,
    accuracy,
    agreement,
    embed_table,
    exact_knn,
    query_boxes,
    split_sets,
)
from search.store import APPROXIMATE, SearchParams, Store, StoreError, point_id, search

CHUNK = 1024  # ids per store call


def store_knn(
    store: Store, gallery_ids: Sequence[str], split: str, params: SearchParams = APPROXIMATE
) -> Knn:
    """A k-NN function for evaluation that asks the collection: the split's shop photos.
    Returns gallery positions, -1 where the store returned fewer hits or another photo."""
    position = {pid: i for i, pid in enumerate(gallery_ids)}

    def knn(queries: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(queries), k), -1, np.int64)
        for start in range(0, len(queries), 256):
            results = search(
                store, queries[start : start + 256], k, {"split": split, "source": "shop"}, params
            )
            for row, hits in enumerate(results, start):
                for col, hit in enumerate(hits):
                    out[row, col] = position.get(hit.id, -1)
        return out

    return knn


def stored_vectors(store: Store, ids: Sequence[str]) -> np.ndarray:
    """The collection's vectors of `ids`, in order; StoreError naming how many are missing."""
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), CHUNK):
        found.update(store.vectors(list(ids[start : start + CHUNK])))
    missing = [pid for pid in ids if pid not in found]
    if missing:
        raise StoreError(
            f"collection {store.collection!r} lacks {len(missing)} of the split's {len(ids)} "
            f"shop photos; ingest the dataset into it first (`ingest run --root DIR`)"
        )
    return np.stack([found[pid] for pid in ids])


@dataclass
class CollectionReport:
    """The collection's answer, exact search's over the same vectors, and how far they agree."""

    store: Report
    exact: Report
    agreement: dict[str, float]


def evaluate_collection(
    store: Store,
    encoder,
    root: str | Path,
    *,
    split: str = "test",
    ks: Sequence[int] = (1, 5, 10, 20, 50),
    params: SearchParams = APPROXIMATE,
    batch_size: int = 64,
    workers: int = 1,
    boxes: str = "annotated",
    finder=None,
) -> CollectionReport:
    """Embed the split's consumer photos with the collection's model, each in its `boxes`
    (embedder.evaluate.query_boxes; `finder` for detected ones), and look them up in the
    collection; the gallery is the split's shop photos as stored."""
    queries, gallery = split_sets(root, split)
    ids = [point_id(p) for p in gallery["path"]]
    vectors = stored_vectors(store, ids)
    queries, fit = query_boxes(queries, root, boxes, finder)
    q = embed_table(encoder, root, queries, batch_size=batch_size, workers=workers)
    via_store = store_knn(store, ids, split, params)(q, max(ks))
    exact = exact_knn(vectors)(q, max(ks))
    reports = [accuracy(found, queries, gallery, ks, split) for found in (via_store, exact)]
    for report in reports:
        report.boxes, report.box_iou = boxes, fit
    return CollectionReport(*reports, agreement(via_store, exact))


def evaluate_store(store: Store, root: str | Path, *, weights=None, run=None, detector=None, **how):
    """`search evaluate`: evaluate_collection with the collection's own model (built from its
    record, run as `run` says) and, for detected boxes, its detector (or `detector`, a
    checkpoint); `how`: evaluate_collection's options."""
    from embedder.recipe import DetectorRecipe, ModelRecipe, RunOptions

    metadata = store.require_metadata()
    run = run or RunOptions()
    recipe = ModelRecipe.for_collection(metadata, weights, run)
    finder = None
    if how.get("boxes") == "detected":
        found = DetectorRecipe.for_collection(metadata, detector, run)
        if found is None:
            raise ValueError(
                "--boxes detected needs a garment detector: the collection records none; "
                "pass --detector FILE"
            )
        finder = found.build()
    return evaluate_collection(store, recipe.build(throughput=True), root, finder=finder, **how)


TITLES = {"store": "via the collection (HNSW)", "exact": "exact search"}


def report_lines(found: CollectionReport, store: Store, split: str) -> list[str]:
    """The report as the terminal shows it: both tables and their agreement."""
    out = [
        f"{store.describe()} collection {store.collection!r}: {found.store.queries} queries, "
        f"gallery {found.store.gallery} ({split})",
        found.store.boxes_line(),
    ]
    for name, title in TITLES.items():
        out += [f"{title}:", *getattr(found, name).table()]
    agreed = ", ".join(f"{key} {value:.3f}" for key, value in found.agreement.items())
    return [*out, f"agreement with exact search: {agreed}"]


def write_outputs(found: CollectionReport, plot: Path | None, as_json: Path | None) -> list[str]:
    """The top-k curve PNG and the JSON report, where asked for; what was written."""
    reports = {name: getattr(found, name) for name in TITLES}
    written = []
    if plot:
        from embedder.plots import topk_curve

        topk_curve({n: r.overall for n, r in reports.items()}, plot)
        written.append(f"top-k curve: {plot}")
    if as_json:
        body = {n: r.to_json() for n, r in reports.items()}
        as_json.write_text(json.dumps({**body, "agreement": found.agreement}, indent=1))
    return written
