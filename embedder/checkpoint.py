"""The checkpoint format: safetensors files that carry their model spec, epoch and metrics.

Below the model builder: this module reads and writes tensors and specs; embedder.model makes
the model from them. Reading a checkpoint's spec needs no torch (a rerun with nothing to embed
never imports it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from embedder.errors import WeightsError, first_line
from embedder.spec import DetectorSpec, ModelSpec
from embedder.storage import remembered_digest

if TYPE_CHECKING:
    import torch

FORMAT = "fashion-embedder/1"
DETECTOR_FORMAT = "fashion-detector/1"
# each kind of model: its checkpoints' format tag, the command that writes them, what it is
KINDS = {
    ModelSpec: (FORMAT, "embedder train", "an embedder"),
    DetectorSpec: (DETECTOR_FORMAT, "embedder train-detector", "a garment detector"),
}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A content hash of the parameters: the weights' identity in collections."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(
            state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return "sha256:" + h.hexdigest()[:32]


def file_digest(path: str | Path) -> str:
    """weights_digest of a checkpoint file's tensors as they are on disk, read with NumPy (no
    torch); remembered in the model cache per version of the file (remembered_digest)."""
    return remembered_digest(path, _tensors_digest)


def _tensors_digest(path: Path) -> str:
    import numpy as np

    h = hashlib.sha256()
    try:
        with safe_open(str(path), framework="numpy") as fh:
            for name in sorted(fh.keys()):
                h.update(name.encode())
                h.update(np.ascontiguousarray(fh.get_tensor(name)).reshape(-1).view(np.uint8))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise WeightsError(
            f"weights file {str(path)!r} cannot be read: {first_line(exc)}"
        ) from None
    return "sha256:" + h.hexdigest()[:32]


def read_verified(path: str | Path, kind: type = ModelSpec) -> tuple[ModelSpec, dict]:
    """read_metadata, with the recorded identity checked against the tensors themselves: a
    file whose tensors changed but whose metadata did not is refused, not taken for the model
    it says it is (nor its cached exports)."""
    spec, info = read_metadata(path, kind)
    check_identity(path, spec, file_digest(path))
    return spec, info


def check_identity(path: str | Path, spec, actual: str) -> None:
    """The one rule: a checkpoint's tensors are the identity its metadata records."""
    if actual != spec.weights:
        raise WeightsError(
            f"weights file {str(path)!r} says it holds {spec.weights} but its tensors are "
            f"{actual}: it was changed after `{KINDS[type(spec)][1]}` wrote it; use the original"
        )


def save_checkpoint(model: torch.nn.Module, path: str | Path, **info) -> ModelSpec:
    """Write the model's parameters and spec (plus `info`: epoch, metrics, ...) to `path`; the
    format tag says which kind of model (KINDS) it is."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    spec = replace(model.spec, weights=weights_digest(state))
    tag = KINDS[type(spec)][0]
    metadata = {"format": tag, "spec": spec.to_json(), "info": json.dumps(info, default=str)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint under `path`
    return spec


def read_metadata(path: str | Path, kind: type = ModelSpec) -> tuple[ModelSpec, dict]:
    """The spec and info recorded in a checkpoint of `kind` (ModelSpec: an embedder,
    DetectorSpec: a garment detector), without loading its tensors (or torch); a checkpoint
    of the other kind is refused in one line that says what it is."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} not found")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"weights file {str(path)!r} is not a valid safetensors file ({exc})"
        ) from None
    tag, command, what = KINDS[kind]
    for other, (other_tag, _, other_what) in KINDS.items():
        if other is not kind and meta.get("format") == other_tag:
            flag = "--detector" if other is DetectorSpec else "--weights"
            raise WeightsError(
                f"weights file {str(path)!r} holds {other_what}, not {what}: pass it as {flag}"
            )
    if meta.get("format") != tag or "spec" not in meta:
        raise WeightsError(f"weights file {str(path)!r} was not written by `{command}`")
    return kind.from_json(meta["spec"]), json.loads(meta.get("info") or "{}")


def kind_of(path: str | Path) -> type:
    """Which kind of model (a KINDS key: ModelSpec or DetectorSpec) a checkpoint holds, from
    its header; WeightsError for a file that is neither."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            tag = (fh.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError):
        tag = None
    for kind, (format_tag, _, _) in KINDS.items():
        if tag == format_tag:
            return kind
    return read_metadata(path)[0].__class__  # not found, not safetensors, not ours: its error


def read_state(
    path: str | Path, kind: type = ModelSpec
) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and the tensors of a checkpoint (the model builder makes the model)."""
    from safetensors.torch import load_file

    spec, _ = read_metadata(path, kind)
    try:
        return spec, load_file(str(path))
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = first_line(exc)[:200]
        raise WeightsError(f"weights file {str(path)!r} cannot be read: {first}") from None
