"""Checkpoints as safetensors files that carry their model spec, epoch and metrics."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from embedder.model import EmbeddingNet, ModelSpec, WeightsError, create_backbone

FORMAT = "fashion-embedder/1"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A content hash of the parameters: the weights' identity in collections."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(
            state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return "sha256:" + h.hexdigest()[:32]


def save_checkpoint(model: EmbeddingNet, path: str | Path, **info) -> ModelSpec:
    """Write the model's parameters and spec (plus `info`: epoch, metrics, ...) to `path`."""
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
    """The spec and info recorded in a checkpoint, without loading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"weights file {str(path)!r} is not a valid safetensors file ({exc})"
        ) from None
    if meta.get("format") != FORMAT or "spec" not in meta:
        raise WeightsError(f"weights file {str(path)!r} was not written by `embedder train`")
    return ModelSpec.from_json(meta["spec"]), json.loads(meta.get("info") or "{}")


def load_checkpoint(
    path: str | Path, *, dim: int | None = None, img_size: int | None = None
) -> EmbeddingNet:
    """Rebuild the model recorded in a checkpoint and load its parameters."""
    spec, _ = read_metadata(path)
    for name, asked, have in (("dim", dim, spec.dim), ("img_size", img_size, spec.img_size)):
        if asked is not None and asked != have:
            raise ValueError(
                f"--{name.replace('_', '-')} {asked} conflicts with {have} recorded in {path}"
            )
    try:
        state = load_file(str(path))
        with torch.device("meta"):  # no random init: every tensor comes from the file
            model = EmbeddingNet(create_backbone(spec.backbone, "none")[0], spec)
        model.load_state_dict(state, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            # a backbone with non-persistent buffers: build it for real, then load
            model = EmbeddingNet(create_backbone(spec.backbone, "none")[0], spec)
            model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise WeightsError(
            f"weights file {str(path)!r} does not fit {spec.backbone}: {first}"
        ) from None
    return model.eval()
