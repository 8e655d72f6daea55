"""Answering queries: embed photos with the collection's own model, then nearest neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from search.store import Filters, Hit, Store, StoreError


def model_for(metadata: dict, weights: str | None = None):
    """Rebuild the model recorded in a collection; refuse any other one."""
    from embedder.model import WeightsError, build_model

    identity = metadata.get("model")
    if not identity:
        raise StoreError("the collection records no model; it was not made by `ingest run`")
    origin = identity["weights"]
    if origin.startswith("sha256:"):
        path = weights or metadata.get("weights_file")
        if not path or not Path(path).is_file():
            raise WeightsError(
                f"the collection was embedded with weights {origin}; the recorded "
                f"file {path!r} is missing: pass --weights FILE.safetensors"
            )
        model = build_model(weights=path)
    else:
        if weights:
            raise WeightsError(
                f"the collection was embedded with {origin!r}, not a weights file; drop --weights"
            )
        tag = "none" if origin == "none" else origin.removeprefix("timm:").partition(".")[2]
        model = build_model(
            identity["backbone"],
            dim=identity["dim"],
            img_size=identity["img_size"],
            pretrained=tag or "default",
        )
    if model.spec.identity() != identity:
        raise WeightsError(
            f"weights {model.spec.weights} do not match the collection's model "
            f"{origin}; the collection must be searched with the model that made it"
        )
    return model


def check_filters(store: Store, filters: Filters) -> None:
    """An unknown filter value is an error that lists the known ones, not an empty answer."""
    for key, value in filters.items():
        known = store.values(key)
        if value not in known:
            listing = ", ".join(sorted(known)) or "none"
            raise StoreError(f"unknown --{key} {value!r}; the collection has: {listing}")


def search_images(
    store: Store,
    encoder,
    images: Sequence[str | Path],
    *,
    top: int = 20,
    filters: Filters | None = None,
    exact: bool = False,
) -> list[list[Hit]]:
    """Top-`top` neighbours of each query photo (all embedded in one batch loop)."""
    from embedder.inference import embed_files

    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    for image in images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"query image {str(image)!r} not found")
    vectors = embed_files(encoder, [str(i) for i in images], batch_size=32)
    return store.search(vectors, top, filters or None, exact=exact)
