"""A traced TorchScript copy of a model, cached on disk, for a fast process start on CPU.

Loading it needs torch alone: no timm, no torchvision (whose import costs about as much as torch's
on a 2-core machine). The cache key is the model's full spec (including the weights' content
hash), the torch version and the autocast dtype, so a stale copy is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

from embedder.device import autocast
from embedder.errors import first_line
from embedder.spec import ModelSpec
from embedder.storage import cache_dir

log = logging.getLogger(__name__)
TOLERANCE = 2e-2  # bf16 traces differ from eager by rounding only


def cache_path(spec: ModelSpec, dtype: torch.dtype | None) -> Path:
    key = f"{spec.to_json()}|{torch.__version__}|{dtype}".encode()
    return cache_dir() / f"{spec.backbone}-{hashlib.sha256(key).hexdigest()[:24]}.pt"


def load_traced(spec: ModelSpec, dtype: torch.dtype | None) -> torch.jit.ScriptModule | None:
    """The cached traced model for (spec, dtype), or None when there is none or it is unusable."""
    path = cache_path(spec, dtype)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export,
            warnings.simplefilter("ignore", FutureWarning)  # whose load is as slow as timm's import
            module = torch.jit.load(str(path), map_location="cpu")
        _check(module, spec)
        return module
    except Exception as exc:  # a corrupt or incompatible cache entry is rebuilt, not fatal
        log.warning("rebuilding the cached model %s: %s", path, first_line(exc)[:200])
        path.unlink(missing_ok=True)
        return None


def _check(module, spec: ModelSpec) -> None:
    """A usable copy gives finite, unit-length vectors of the spec's size."""
    probe = torch.linspace(-2, 2, 3 * spec.img_size * spec.img_size).reshape(
        1, 3, spec.img_size, spec.img_size
    )
    with torch.inference_mode():
        out = module(probe.contiguous(memory_format=torch.channels_last)).float()
    norms = out.norm(dim=-1)
    if out.shape != (1, spec.out_dim) or not torch.isfinite(out).all():
        raise ValueError(f"it gives output of shape {tuple(out.shape)} or non-finite values")
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-2):
        raise ValueError("its vectors are not unit length")


def save_traced(model: torch.nn.Module, dtype: torch.dtype | None) -> Path | None:
    """Trace `model` (CPU, eval, channels_last) under the autocast dtype, check it against eager,
    and store it atomically; returns the path, or None when tracing is not faithful."""
    spec: ModelSpec = model.spec
    device = torch.device("cpu")
    example = torch.randn(2, 3, spec.img_size, spec.img_size).contiguous(
        memory_format=torch.channels_last
    )
    model = model.eval()
    try:
        with torch.inference_mode(), autocast(device, dtype), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(model, example))
            check = torch.randn(3, 3, spec.img_size, spec.img_size).contiguous(
                memory_format=torch.channels_last
            )
            error = (traced(check).float() - model(check).float()).abs().max().item()
    except Exception as exc:
        log.info(
            "model %s cannot be traced (%s); starts stay on the eager path", spec.backbone, exc
        )
        return None
    if error > TOLERANCE:
        log.info("traced %s differs from eager by %.3g; not cached", spec.backbone, error)
        return None
    path = cache_path(spec, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    traced.save(str(tmp))
    tmp.replace(path)
    return path
