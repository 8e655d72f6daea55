"""The query side's model: rebuild (or load a traced copy of) the model a collection records."""

from __future__ import annotations

import logging
from pathlib import Path

from embedder.spec import model_difference
from search.store import StoreError

log = logging.getLogger(__name__)


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


def serving_encoder(
    metadata: dict,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    traced: bool = True,
):
    """The encoder for a long-running server, loaded (and checked) now: on CPU the traced copy
    of the collection's model, written to the cache first when there is none. TorchScript runs
    the whole forward without taking Python's GIL between layers, so concurrent requests'
    decoding and HTTP work do not stall it."""
    encoder, cache = query_encoder(metadata, weights, device, precision, traced)
    if cache is None:
        return encoder
    try:
        cache()
    except OSError as exc:
        log.warning("could not cache the traced model: %s", exc)
        return encoder
    return query_encoder(metadata, weights, device, precision, traced)[0]
