"""The embedding model: a timm backbone, dropout, a linear head to `dim`, L2 normalisation."""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import timm
import torch
import torch.nn.functional as F
from torch import nn

from embedder.checkpoint import check_identity, read_state, weights_digest
from embedder.errors import WeightsError, describe_failure, first_line
from embedder.spec import DEFAULT_BACKBONE, DEFAULT_DIM, ModelSpec

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0


class EmbeddingNet(nn.Module):
    """backbone → pooled features → dropout → Linear(dim) → L2-normalised float32 vectors."""

    def __init__(self, backbone: nn.Module, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(backbone.num_features, spec.dim)
        if spec.projection:  # fitted by embedder.projection, saved with the weights
            self.register_buffer("pca_mean", torch.zeros(spec.dim))
            self.register_buffer("pca_matrix", torch.zeros(spec.dim, spec.projection))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        out = F.normalize(self.head(self.dropout(features)).float(), dim=-1)
        if self.spec.projection:
            out = F.normalize((out - self.pca_mean) @ self.pca_matrix, dim=-1)
        return out


def create_backbone(name: str, pretrained: str) -> tuple[nn.Module, str]:
    """Create the timm backbone without classifier; `pretrained` is 'none', 'default' or a tag."""
    if not timm.is_model(name):
        raise ValueError(f"unknown timm backbone {name!r} (see timm.list_models())")
    if pretrained == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # 'none' is reproducible: same model every run
            return timm.create_model(name, pretrained=False, num_classes=0), "none"
    full = name if pretrained == "default" or "." in name else f"{name}.{pretrained}"
    model = _pretrained(full)
    tag = model.pretrained_cfg.get("tag") or ""
    return model, f"timm:{name.split('.')[0]}.{tag}" if tag else f"timm:{full}"


HUB_WAIT = 3.0  # seconds to find out whether the model hub can be reached at all
OFFLINE_ADVICE = "pass --weights FILE.safetensors, or --pretrained none for an untrained model"


def _pretrained(full: str) -> nn.Module:
    """timm's pretrained backbone: from the local cache alone first (no network, no wait);
    else from the hub, once it answers at all: offline, that is one line at once, not a
    minute of retries and warnings."""
    from huggingface_hub import constants

    def create():
        return timm.create_model(full, pretrained=True, num_classes=0)

    offline = constants.HF_HUB_OFFLINE
    try:
        with _quiet_hub():
            constants.HF_HUB_OFFLINE = True
            return create()
    except Exception:  # not cached (or a damaged cache entry): the hub may have it
        pass
    finally:
        constants.HF_HUB_OFFLINE = offline
    host = urlsplit(constants.ENDPOINT).hostname or constants.ENDPOINT
    if offline or not _reachable(constants.ENDPOINT):
        raise WeightsError(
            f"cannot load pretrained weights {full!r}: they are not in the local cache and "
            f"{host} cannot be reached (offline?); {OFFLINE_ADVICE}"
        )
    try:
        with _quiet_hub():
            return create()
    except Exception as exc:  # hub errors vary: 404, auth, a corrupt download
        raise WeightsError(
            f"cannot load pretrained weights {full!r} ({describe_failure(exc)[:200]}); "
            f"{OFFLINE_ADVICE}"
        ) from None


def _reachable(endpoint: str, timeout: float = HUB_WAIT) -> bool:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except (OSError, TypeError):
        return False
    return True


@contextlib.contextmanager
def _quiet_hub():
    """The hub client's own retry warnings are not this command's output."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_model(
    backbone: str = DEFAULT_BACKBONE,
    *,
    dim: int | None = None,
    img_size: int | None = None,
    dropout: float | None = None,
    pretrained: str = "default",
    weights: str | None = None,
) -> EmbeddingNet:
    """The one model builder.

    weights: a `.safetensors` checkpoint (its recorded spec wins; other options must agree or be
    None). Otherwise `pretrained` picks the backbone init: 'default' (timm's pretrained tag),
    another tag, or 'none'. Options left as None keep the backbone's or checkpoint's own values;
    preprocessing (mean, std, size, crop, interpolation) is read from timm's data config.
    """
    if weights is not None:
        return load_checkpoint(weights, dim=dim, img_size=img_size)
    if dim is not None and dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    net, origin = create_backbone(backbone, pretrained)
    cfg = timm.data.resolve_model_data_config(net)
    spec = ModelSpec(
        backbone=backbone,
        dim=dim or DEFAULT_DIM,
        img_size=img_size or int(cfg["input_size"][-1]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        weights=origin,
    )
    if dropout is not None:
        spec = replace(spec, dropout=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)  # the head too is reproducible for a given backbone
        model = EmbeddingNet(net, spec)
    log.info("model: %s dim=%d img=%d weights=%s", backbone, spec.dim, spec.img_size, origin)
    return model.eval()


def load_checkpoint(
    path: str | Path, *, dim: int | None = None, img_size: int | None = None
) -> EmbeddingNet:
    """Rebuild the model recorded in a checkpoint and load its parameters."""
    spec, state = read_state(path)
    check_identity(path, spec, weights_digest(state))
    for name, asked, have in (("dim", dim, spec.dim), ("img_size", img_size, spec.img_size)):
        if asked is not None and asked != have:
            raise ValueError(
                f"--{name.replace('_', '-')} {asked} conflicts with {have} recorded in {path}"
            )
    try:
        with torch.device("meta"):  # no random init: every tensor comes from the file
            model = EmbeddingNet(create_backbone(spec.backbone, "none")[0], spec)
        model.load_state_dict(state, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            # a backbone with non-persistent buffers: build it for real, then load
            model = EmbeddingNet(create_backbone(spec.backbone, "none")[0], spec)
            model.load_state_dict(state)
    except RuntimeError as exc:
        first = first_line(exc)[:200]
        raise WeightsError(
            f"weights file {str(path)!r} does not fit {spec.backbone}: {first}"
        ) from None
    return model.eval()
