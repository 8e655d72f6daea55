"""Consumer-to-shop retrieval accuracy: top-k hit rate of consumer queries against shop images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from embedder.catalog import bbox_of, locate, read_catalog

log = logging.getLogger(__name__)
DEFAULT_KS = (1, 5, 10, 20, 50)
Knn = Callable[[np.ndarray, int], np.ndarray]  # (queries, k) → gallery positions (n, k)


@dataclass
class Report:
    """Top-k accuracy overall and per category, for queries and gallery of one split."""

    split: str
    ks: tuple[int, ...]
    overall: dict[int, float]
    per_category: dict[str, dict[int, float]] = field(default_factory=dict)
    queries: int = 0
    gallery: int = 0
    boxes: str = "annotated"  # the queries' boxes (embedder.choices.Boxes)
    box_iou: float | None = None  # detected boxes: mean IoU with the annotated ones

    def table(self) -> list[str]:
        head = f"{'category':<12}{'queries':>8}" + "".join(f"{'top-' + str(k):>9}" for k in self.ks)
        rows = [head]
        for name, acc in [*sorted(self.per_category.items()), ("ALL", self.overall)]:
            n = self.queries if name == "ALL" else acc.get("queries", 0)
            rows.append(f"{name:<12}{n:>8}" + "".join(f"{acc[k]:>9.3f}" for k in self.ks))
        return rows

    def boxes_line(self) -> str:
        """How the queries were cropped, for the report's heading."""
        line = {
            "annotated": "queries in their annotated boxes",
            "detected": "queries in the detector's box of their category's type",
            "none": "queries whole (no box)",
        }[self.boxes]
        if self.box_iou is not None:
            line += f"; mean IoU with the annotated boxes {self.box_iou:.3f}"
        return line

    def to_json(self) -> dict:
        return {
            "split": self.split,
            "boxes": self.boxes,
            **({"box_iou": self.box_iou} if self.box_iou is not None else {}),
            "queries": self.queries,
            "gallery": self.gallery,
            "overall": {f"top{k}": v for k, v in self.overall.items()},
            "per_category": {
                c: {f"top{k}": v for k, v in a.items() if k != "queries"}
                for c, a in self.per_category.items()
            },
        }


def exact_knn(gallery: np.ndarray) -> Knn:
    """Brute-force cosine k-NN over unit vectors, in chunks (the reference k-NN)."""

    def knn(queries: np.ndarray, k: int) -> np.ndarray:
        k = min(k, len(gallery))
        out = np.empty((len(queries), k), np.int64)
        for start in range(0, len(queries), 1024):
            scores = queries[start : start + 1024] @ gallery.T
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
            out[start : start + 1024] = np.take_along_axis(part, order, 1)
        return out

    return knn


def hits_at(
    neighbours: np.ndarray,
    query_items: Sequence[str],
    gallery_items: Sequence[str],
    ks: Sequence[int],
) -> np.ndarray:
    """(n_queries, len(ks)) booleans: an image of the query's item is among its first k."""
    gallery_items = np.asarray(gallery_items)
    found = neighbours >= 0  # -1: no gallery image at that rank (a store returned fewer)
    same = found & (
        gallery_items[np.where(found, neighbours, 0)] == np.asarray(query_items)[:, None]
    )
    return np.stack([same[:, :k].any(axis=1) for k in ks], axis=1)


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How far two neighbour lists agree: mean overlap of the top-k sets and same top-1."""
    k = min(a.shape[1], b.shape[1])
    overlap = [len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a, b, strict=True)]
    return {
        f"overlap@{k}": float(np.mean(overlap)),
        "same_top1": float(np.mean(a[:, 0] == b[:, 0])),
    }


def accuracy(
    neighbours: np.ndarray,
    queries: pd.DataFrame,
    gallery: pd.DataFrame,
    ks: Sequence[int],
    split: str,
) -> Report:
    """Aggregate hits overall and per category of the query."""
    hits = hits_at(neighbours, queries["item_id"].tolist(), gallery["item_id"].tolist(), ks)
    ks = tuple(ks)
    report = Report(
        split,
        ks,
        {k: float(hits[:, i].mean()) for i, k in enumerate(ks)},
        queries=len(queries),
        gallery=len(gallery),
    )
    for category, rows in queries.groupby("category", observed=True).indices.items():
        acc = {k: float(hits[rows, i].mean()) for i, k in enumerate(ks)}
        report.per_category[str(category)] = {**acc, "queries": len(rows)}
    return report


def split_sets(root: str | Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Queries (consumer images) and gallery (shop images) of `split`."""
    table = read_catalog(root)
    part = table[table["split"] == split]
    queries = part[part["source"] == "consumer"].reset_index(drop=True)
    gallery = part[part["source"] == "shop"].reset_index(drop=True)
    if queries.empty or gallery.empty:
        raise ValueError(
            f"split {split!r} has {len(queries)} consumer and {len(gallery)} shop "
            f"images; evaluation needs Eval/list_eval_partition.txt with that split"
        )
    return queries, gallery


BOX = ["x1", "y1", "x2", "y2"]


def query_boxes(
    queries: pd.DataFrame, root, boxes: str = "annotated", finder=None
) -> tuple[pd.DataFrame, float | None]:
    """The queries with the boxes they are searched in (`boxes`: annotated as they are; none:
    no box; detected: the best box of the type the photo's category implies that `finder`, a
    GarmentFinder, finds, else none) and, for detected boxes, their mean IoU with the
    annotated ones (0 for a photo where none is found)."""
    from embedder.boxes import box_iou, of_category
    from embedder.transforms import load_image

    if boxes == "annotated":
        return queries, None
    out = queries.copy()
    if boxes == "none":
        out[BOX] = pd.NA
        return out, None
    if finder is None:
        raise ValueError("--boxes detected needs a garment detector: pass --detector FILE")
    where, fits, found = locate(root), [], []
    for row in tqdm(list(queries.itertuples(index=False)), desc="detecting", leave=False):
        img = load_image(where.source(row.path))
        best = next(iter(of_category(finder(img), row.category)), None)
        found.append(list(best.box) if best else [pd.NA] * 4)
        if (truth := bbox_of(row)) is not None:
            fits.append(box_iou(best.box, truth) if best else 0.0)
    out[BOX] = pd.DataFrame(found, index=out.index, columns=BOX).astype("Int64")
    return out, round(float(np.mean(fits)), 4) if fits else None


def embed_table(
    encoder, root: str | Path, table: pd.DataFrame, *, batch_size: int = 64, workers: int = 1
) -> np.ndarray:
    from embedder.inference import embed_files

    where = locate(root)
    return embed_files(
        encoder,
        [where.file(p) for p in table["path"]],
        [bbox_of(r) for r in table.itertuples(index=False)],
        batch_size=batch_size,
        workers=workers,
        storage=where.storage,
    )


def evaluate(
    encoder,
    root: str | Path,
    *,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 64,
    workers: int = 1,
    knn: Knn | None = None,
    sets: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    boxes: str = "annotated",
    finder=None,
) -> tuple[Report, dict]:
    """Embed the split's queries and gallery and score top-k retrieval.

    `knn` defaults to exact search over the gallery; `boxes`, `finder`: the queries' boxes
    (query_boxes); returns the report and the embeddings ({"queries", "gallery"} arrays with
    their tables) for plots or store comparisons.
    """
    queries, gallery = sets or split_sets(root, split)
    queries, fit = query_boxes(queries, root, boxes, finder)
    q = embed_table(encoder, root, queries, batch_size=batch_size, workers=workers)
    g = embed_table(encoder, root, gallery, batch_size=batch_size, workers=workers)
    neighbours = (knn or exact_knn(g))(q, max(ks))
    report = accuracy(neighbours, queries, gallery, ks, split)
    report.boxes, report.box_iou = boxes, fit
    return report, {
        "queries": q,
        "gallery": g,
        "query_table": queries,
        "gallery_table": gallery,
        "neighbours": neighbours,
    }


@dataclass
class Evaluation:
    """One model's evaluation: its name, spec, report and embeddings (see evaluate)."""

    name: str
    spec: object
    report: Report
    vectors: dict


def evaluate_models(
    models: Sequence[tuple[str, object]],
    root: str | Path,
    *,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 64,
    workers: int = 1,
    boxes: str = "annotated",
    detector=None,
) -> Iterator[Evaluation]:
    """`embedder evaluate`'s service: each (name, encoder recipe) evaluated on the same split,
    one at a time (one model in memory), yielded as it finishes. A recipe is anything whose
    build() gives an encoder: a ModelRecipe (torch or OpenVINO), or Built(an encoder).
    `boxes`: the queries' boxes; `detector`: a DetectorRecipe, for detected boxes."""
    sets = split_sets(root, split)
    if boxes == "detected" and detector is None:
        raise ValueError("--boxes detected needs a garment detector: pass --detector FILE")
    fit = None
    if boxes != "annotated":  # the same boxes for every model
        boxed, fit = query_boxes(sets[0], root, boxes, detector and detector.build())
        sets = (boxed, sets[1])
    for name, recipe in models:
        encoder = recipe.build()
        report, vectors = evaluate(
            encoder, root, split=split, ks=ks, batch_size=batch_size, workers=workers, sets=sets
        )
        report.boxes, report.box_iou = boxes, fit
        yield Evaluation(name, encoder.spec, report, vectors)
