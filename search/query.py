"""The query side's model: rebuild (or load a traced copy of) the model a collection records."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from embedder.spec import model_difference
from search.store import Store, StoreError


def model_for(metadata: dict, weights: str | None = None):
    """Rebuild the model recorded in a collection; refuse any other one."""
    from embedder.model import WeightsError, build_model

    identity = metadata.get("model")
    if not identity:
        raise StoreError("the collection records no model; it was not made by `ingest run`")
    origin = identity["weights"]
    if origin.startswith("sha256:"):
        path = weights or metadata.get("weights_file")
        if weights and not Path(weights).is_file():
            raise WeightsError(f"weights file {weights!r} not found")
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
    if model_difference(identity, model.spec):
        raise WeightsError(
            f"weights {model.spec.weights} do not match the collection's model "
            f"{origin}; the collection must be searched with the model that made it"
        )
    return model


def query_encoder(
    metadata: dict,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    traced: bool = True,
):
    """The encoder for a collection's queries, and a callable that caches a traced copy of it.

    On CPU a cached traced copy of the collection's model is used when there is one (torch
    only: about half the start-up time of building it with timm); otherwise the model is built
    and the returned callable (run it after answering) writes that copy for the next start.
    """
    from embedder.device import autocast_dtype, resolve_device
    from embedder.inference import Encoder
    from embedder.spec import ModelSpec

    dev = resolve_device(device)
    dtype = autocast_dtype(dev, precision)
    spec = ModelSpec.from_json(metadata["model_spec"]) if metadata.get("model_spec") else None
    # an explicit --weights file is always loaded and checked against the collection
    usable = traced and dev.type == "cpu" and spec is not None and not weights
    if usable and not model_difference(metadata.get("model"), spec):
        from embedder.compiled import load_traced

        if (module := load_traced(spec, dtype)) is not None:
            return Encoder(module, dev, precision, spec=spec), None
    model = model_for(metadata, weights)
    encoder = Encoder(model, dev, precision)
    if not usable:
        return encoder, None

    def cache() -> None:
        from embedder.compiled import save_traced

        save_traced(model, dtype)

    return encoder, cache


def store_knn(store: Store, gallery_paths: Sequence[str], split: str, chunk: int = 256):
    """A k-NN function for evaluation that asks the collection (HNSW) instead of brute force.

    Searches the split's shop photos; returns gallery positions, -1 where the store returned
    fewer hits or an image outside `gallery_paths`.
    """
    import numpy as np

    from search.store import point_id

    position = {point_id(p): i for i, p in enumerate(gallery_paths)}

    def knn(queries, k: int):
        out = np.full((len(queries), k), -1, np.int64)
        for start in range(0, len(queries), chunk):
            results = store.search(
                queries[start : start + chunk], k, {"split": split, "source": "shop"}
            )
            for row, hits in enumerate(results, start):
                for col, hit in enumerate(hits):
                    out[row, col] = position.get(hit.id, -1)
        return out

    return knn


@contextlib.contextmanager
def collection_knn(
    store_dir: str | None,
    url: str | None,
    collection: str,
    spec,
    gallery_paths: Sequence[str],
    split: str,
):
    """`embedder evaluate --via-store`'s k-NN: the collection built by `spec`'s model, searched
    with HNSW. Found by embedder through the "fashion_retrieval.knn" entry point, so that
    embedder never imports search. Yields (knn, the store's description)."""
    from search.stores import open_store

    with open_store(store_dir=store_dir, url=url, collection=collection, read_only=True) as store:
        diff = model_difference(store.require_metadata().get("model"), spec)
        if diff:
            raise StoreError(f"collection {collection!r} was built with another model ({diff})")
        yield store_knn(store, gallery_paths, split), store.describe()
