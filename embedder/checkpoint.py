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
from embedder.spec import ModelSpec

if TYPE_CHECKING:
    import torch

FORMAT = "fashion-embedder/1"


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


def save_checkpoint(model: torch.nn.Module, path: str | Path, **info) -> ModelSpec:
    """Write the model's parameters and spec (plus `info`: epoch, metrics, ...) to `path`."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    spec = replace(model.spec, weights=weights_digest(state))
    metadata = {"format": FORMAT, "spec": spec.to_json(), "info": json.dumps(info, default=str)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint under `path`
    return spec


def read_metadata(path: str | Path) -> tuple[ModelSpec, dict]:
    """The spec and info recorded in a checkpoint, without loading its tensors (or torch)."""
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
    if meta.get("format") != FORMAT or "spec" not in meta:
        raise WeightsError(f"weights file {str(path)!r} was not written by `embedder train`")
    return ModelSpec.from_json(meta["spec"]), json.loads(meta.get("info") or "{}")


def read_state(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and the tensors of a checkpoint (the model builder makes the model)."""
    from safetensors.torch import load_file

    spec, _ = read_metadata(path)
    try:
        return spec, load_file(str(path))
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = first_line(exc)[:200]
        raise WeightsError(f"weights file {str(path)!r} cannot be read: {first}") from None
