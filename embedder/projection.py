"""PCA or whitening of embeddings, fitted on the train gallery and built into the model."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from embedder.evaluate import embed_table, split_sets
from embedder.model import EmbeddingNet

log = logging.getLogger(__name__)


def fit_projection(
    vectors: np.ndarray, dim: int, whiten: bool = False, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, matrix) mapping vectors to their top-`dim` principal components, scaled to unit
    variance when `whiten`."""
    if not 1 <= dim <= min(vectors.shape):
        raise ValueError(
            f"projection size {dim} must be between 1 and {min(vectors.shape)} (the gallery's rank)"
        )
    mean = vectors.mean(axis=0)
    _, singular, vt = np.linalg.svd(vectors - mean, full_matrices=False)
    matrix = vt[:dim].T
    if whiten:
        matrix = matrix / np.sqrt(singular[:dim] ** 2 / (len(vectors) - 1) + eps)
    return mean.astype(np.float32), matrix.astype(np.float32)


def with_projection(
    model: EmbeddingNet, mean: np.ndarray, matrix: np.ndarray, whiten: bool
) -> EmbeddingNet:
    """A copy of `model` whose output goes through the projection."""
    if model.spec.projection:
        raise ValueError("the model already has a projection; start from the unprojected one")
    spec = replace(model.spec, projection=int(matrix.shape[1]), whiten=whiten)
    out = EmbeddingNet(model.backbone, spec)
    out.head, out.dropout = model.head, model.dropout
    out.pca_mean = torch.from_numpy(mean)
    out.pca_matrix = torch.from_numpy(matrix)
    return out.eval()


def fit_on_gallery(
    encoder, root: str | Path, dim: int, whiten: bool = False, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on the shop images of the train split (never on the test gallery)."""
    _, gallery = split_sets(root, "train")
    vectors = embed_table(encoder, root, gallery, workers=workers)
    log.info(
        "fitting %s to %d on %d train gallery vectors",
        "whitening" if whiten else "PCA",
        dim,
        len(vectors),
    )
    return fit_projection(vectors, dim, whiten)
