"""Device and precision choice: CUDA when present, bf16 autocast where the hardware has it."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from embedder.choices import Precision


@functools.cache
def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-bf16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' → cuda when available, else cpu; explicit names are checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def autocast_dtype(
    device: torch.device, precision: Precision | str = Precision.auto
) -> torch.dtype | None:
    """The autocast dtype to run under, or None for plain fp32."""
    precision = Precision(precision)
    if precision is Precision.fp32:
        return None
    if precision is Precision.bf16:
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype`, or a no-op one for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
