"""The query side's model: rebuild (or load a traced copy of) the model a collection records."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from embedder.choices import Precision, Runtime
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


@dataclass(frozen=True)
class ModelOptions:
    """How a command runs a collection's model (the model itself is the one it records)."""

    weights: str | None = None  # the collection's weights file, if it moved since ingest
    device: str = "auto"
    precision: Precision | str = Precision.auto
    traced: bool = True  # torch on a CPU: a cached traced copy for fast starts
    runtime: Runtime | str = Runtime.auto  # auto: OpenVINO on a CPU, torch on a GPU
    int8: bool = False  # OpenVINO's int8 model (quantised once on the collection's photos)


def query_encoder(metadata: dict, options: ModelOptions = ModelOptions(), throughput: bool = False):
    """The encoder for a collection's queries, and a callable that caches a traced copy of it
    (or None).

    On OpenVINO (a CPU's default) the exported model is loaded from the cache with neither
    torch nor timm, and exported (or quantised) first when it is not there. With torch on a
    CPU a cached traced copy is used when there is one (torch only: about half the start-up
    time of building it with timm); otherwise the model is built and the returned callable (run
    it after answering) writes that copy for the next start.
    """
    from embedder.runtime import resolve

    if options.int8 and Runtime(options.runtime) is Runtime.torch:
        raise ValueError("--int8 runs on OpenVINO: use --runtime openvino (or auto on a CPU)")
    if resolve(options.runtime, options.device) is Runtime.openvino:
        return exported_query_encoder(metadata, options, throughput), None
    return torch_query_encoder(metadata, options)


def _recorded_spec(metadata: dict, weights: str | None):
    """The collection's model spec (from --weights' header when given), checked against the
    model identity it records; None for a collection made before specs were recorded."""
    from embedder.checkpoint import read_metadata
    from embedder.spec import ModelSpec

    if weights:
        if not Path(weights).is_file():
            from embedder.errors import WeightsError

            raise WeightsError(f"weights file {weights!r} not found")
        spec = read_metadata(weights)[0]
    elif metadata.get("model_spec"):
        spec = ModelSpec.from_json(metadata["model_spec"])
    else:
        return None
    if model_difference(metadata.get("model"), spec):
        from embedder.errors import WeightsError

        raise WeightsError(
            f"weights {spec.weights} do not match the collection's model "
            f"{metadata['model']['weights']}; the collection must be searched with the model "
            f"that made it"
        )
    return spec


def exported_query_encoder(metadata: dict, options: ModelOptions, throughput: bool = False):
    """The collection's model on OpenVINO: no torch when the exported copy is cached."""
    from embedder.runtime import calibration_photos, exported_encoder

    spec = _recorded_spec(metadata, options.weights) or model_for(metadata, options.weights).spec

    def photos():
        root = metadata.get("dataset_root")
        if not root or not Path(root).is_dir():
            raise ValueError(
                "an int8 model needs calibration photos: run `embedder export "
                "--int8 --calibration DIR` first"
            )
        from embedder.catalog import bbox_of, locate, read_catalog

        where = locate(root)
        table = read_catalog(where)
        boxes = [bbox_of(r) for r in table.itertuples(index=False)]
        return calibration_photos([str(where.base / p) for p in table["path"]], boxes, spec)

    return exported_encoder(
        spec,
        lambda: model_for(metadata, options.weights),
        int8=options.int8,
        calibration=photos,
        precision=options.precision,
        throughput=throughput,
    )


def torch_query_encoder(metadata: dict, options: ModelOptions):
    from embedder.device import autocast_dtype, resolve_device
    from embedder.inference import Encoder
    from embedder.spec import ModelSpec

    dev = resolve_device(options.device)
    dtype = autocast_dtype(dev, options.precision)
    spec = ModelSpec.from_json(metadata["model_spec"]) if metadata.get("model_spec") else None
    # an explicit --weights file is always loaded and checked against the collection
    usable = options.traced and dev.type == "cpu" and spec is not None and not options.weights
    if usable and not model_difference(metadata.get("model"), spec):
        from embedder.compiled import load_traced

        if (module := load_traced(spec, dtype)) is not None:
            return Encoder(module, dev, options.precision, spec=spec), None
    model = model_for(metadata, options.weights)
    encoder = Encoder(model, dev, options.precision)
    if not usable:
        return encoder, None

    def cache() -> None:
        from embedder.compiled import save_traced

        save_traced(model, dtype)

    return encoder, cache


def serving_encoder(metadata: dict, options: ModelOptions = ModelOptions()):
    """The encoder for a long-running server, loaded (and checked) now: OpenVINO's with
    asynchronous requests over every core, or on CPU with torch the traced copy of the
    collection's model, written to the cache first when there is none (TorchScript runs the
    whole forward without taking Python's GIL between layers, so concurrent requests' decoding
    and HTTP work do not stall it)."""
    encoder, cache = query_encoder(metadata, options, throughput=True)
    if cache is None:
        return encoder
    try:
        cache()
    except OSError as exc:
        log.warning("could not cache the traced model: %s", exc)
        return encoder
    return query_encoder(metadata, options, throughput=True)[0]
