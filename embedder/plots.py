"""Plots: training curves, the top-k accuracy curve and a 2-D map of embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(rows: list[dict], out: str | Path, loss: str | None = None) -> Path:
    """A training run's loss and validation figures by epoch (metrics.png): top-k accuracy
    for the embedder, box AP and IoU for the detector."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["loss"] for r in rows], marker="o")
    left.set(title=loss or "triplet loss", xlabel="epoch")
    keys = [k for k in rows[-1] if k.startswith("val_")]
    for key in keys:
        values = [r.get(key) if r.get(key) != "" else None for r in rows]
        right.plot(epochs, values, marker="o", label=key[4:])
    what = "top-k accuracy" if all(k.startswith("val_top") for k in keys) else "box AP and IoU"
    right.set(title=f"validation {what}", xlabel="epoch", ylim=(0, 1))
    if right.lines:
        right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return Path(out)


def topk_curve(curves: Mapping[str, Mapping[int, float]], out: str | Path) -> Path:
    """One line per model: top-k accuracy against k."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, acc in curves.items():
        ks = sorted(acc)
        ax.plot(ks, [acc[k] for k in ks], marker="o", label=Path(name).name)
    ax.set(xlabel="k", ylabel="top-k accuracy", ylim=(0, 1), title="consumer-to-shop retrieval")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def embedding_map(
    vectors: np.ndarray, labels: Sequence[str], out: str | Path, method: str = "pca"
) -> Path:
    """The embeddings in 2-D (PCA, or t-SNE through scikit-learn), one colour per label."""
    plt = _pyplot()
    centred = vectors - vectors.mean(axis=0)
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(
            2, init="pca", perplexity=min(30, len(vectors) - 1), random_state=0
        ).fit_transform(centred)
    elif method == "pca":
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
    else:
        raise ValueError(f"map method {method!r}: use pca or tsne")
    labels = np.asarray([str(v) for v in labels])
    fig, ax = plt.subplots(figsize=(6, 5))
    for name in sorted(set(labels)):
        pts = xy[labels == name]
        ax.scatter(pts[:, 0], pts[:, 1], s=8, label=name, alpha=0.7)
    ax.set(title=f"gallery embeddings ({method.upper()})", xticks=[], yticks=[])
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
