"""The one batch loop that turns image files into vectors, for ingest, evaluation and search.

reader (embedder.reader: batches decoded beside the model) → mapper (the encoder: a few
batches in flight, so the model never waits for Python between them) → the caller's writer.
The loop and a CPU reader need no torch, so that an exported model (embedder.runtime) embeds
and answers a query with Pillow, NumPy and its runtime alone."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedder.choices import Decode, Precision
from embedder.geometry import Box
from embedder.reader import Batch, batches
from embedder.spec import ModelSpec
from embedder.storage import LOCAL, Storage

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn


class Done:
    """A batch's vectors, already computed (what `submit` returns for a model that runs one
    batch at a time)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def result(self) -> np.ndarray:
        return self.vectors


@dataclass
class Embedded:
    """Vectors for `index` (positions in the input); `failed` holds (position, reason)."""

    index: list[int]
    vectors: np.ndarray
    failed: list[tuple[int, str]]
    seconds_wait: float = 0.0  # time spent waiting for the reader (decoded input on cpu)
    seconds_model: float = 0.0
    seconds_decode: float = 0.0  # device decode in the main process


class Encoder:
    """Mapper: runs the model on uint8 batches with the chosen device and precision."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        precision: Precision | str = Precision.auto,
        spec: ModelSpec | None = None,
        compile: bool = False,
    ):
        """`spec` is needed only for a model that does not carry one (a traced copy).

        compile: torch.compile the model (worth it for long runs: ~30 s to compile ResNet50 on
        2 CPU cores, then ~1.3x faster); batches are padded to the first batch's size so that
        a short last batch does not compile again.
        """
        import torch

        from embedder.device import autocast_dtype, resolve_device

        self.device = resolve_device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self.spec = spec or model.spec
        if isinstance(model, torch.jit.ScriptModule):
            self.model = model.eval()  # traced on CPU with its layout and autocast baked in
        else:
            self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.compile = compile
        self.compiled_batch: int | None = None  # the batch size compiled for (the first one)
        if compile:
            self.model = torch.compile(self.model)

    def describe(self) -> str:
        """Where and how the model runs, for reports: "cpu (torch bf16)"."""
        return f"{self.device} (torch {'bf16' if self.dtype else 'fp32'})"

    depth = 1  # batches in flight: torch runs one at a time

    def submit(self, pixels) -> Done:
        """Start embedding a batch (torch: at once); `.result()` gives its vectors."""
        return Done(self(pixels))

    def __call__(self, pixels) -> np.ndarray:
        """uint8 NCHW pixels (an array or a tensor) → L2-normalised float32 vectors."""
        import torch

        from embedder.device import autocast
        from embedder.transforms import normalize

        pixels = torch.as_tensor(pixels)
        n = len(pixels)
        if self.compile and self.compiled_batch is None:
            self.compiled_batch = n
        if self.compiled_batch and n < self.compiled_batch:  # pad: no second compilation
            pad = pixels.new_zeros((self.compiled_batch - n, *pixels.shape[1:]))
            pixels = torch.cat([pixels, pad])
        with torch.inference_mode():
            x = normalize(pixels, self.spec, self.device)
            with autocast(self.device, self.dtype):
                out = self.model(x)
            return out[:n].float().cpu().numpy()


def embed_batches(
    encoder: Encoder,
    paths: Sequence[str | Path],
    boxes: Sequence[Box | None] | None = None,
    *,
    batch_size: int = 32,
    workers: int = 1,
    decode: Decode | str = Decode.cpu,
    storage: Storage = LOCAL,
) -> Iterator[Embedded]:
    """Read (and on the CPU path decode) in `workers` processes, overlapping the model, with
    `encoder.depth` batches in the model at once; yield batch by batch, in input order.
    decode="device" decodes JPEGs on the encoder's device (nvjpeg); `storage` is where the
    paths are (embedder.storage: the local disk, or an object store)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    decode = Decode(decode)
    pin = getattr(encoder.device, "type", encoder.device) == "cuda"
    with batches(
        paths,
        boxes,
        encoder.spec,
        batch_size=batch_size,
        workers=workers,
        pin_memory=pin,
        decode=decode,
        storage=storage,
    ) as source:
        in_model: deque = deque()  # (batch, its pending vectors, seconds read, decode, model)
        exhausted = False
        while in_model or not exhausted:
            batch, t0 = None, time.perf_counter()
            if not exhausted:
                batch = next(source, None)
                exhausted = batch is None
            t1 = time.perf_counter()
            if batch is not None and decode is Decode.device:
                from embedder.device_decode import decode_batch

                batch = Batch(*decode_batch(batch, encoder.spec, encoder.device))
            t2 = time.perf_counter()
            if batch is not None:
                pending = encoder.submit(batch.pixels) if batch.pixels is not None else None
                in_model.append((batch, pending, t1 - t0, t2 - t1, time.perf_counter() - t2))
            if in_model and (exhausted or len(in_model) >= encoder.depth):
                yield _finished(encoder, *in_model.popleft())


def _finished(encoder, batch: Batch, pending, read: float, decode: float, started: float):
    """The batch's vectors (waited for), with a damaged model's vectors as failures."""
    t0 = time.perf_counter()
    vectors = (
        pending.result() if pending is not None else np.zeros((0, encoder.spec.out_dim), np.float32)
    )
    model = started + time.perf_counter() - t0
    good = usable(vectors)
    index, failed = batch.index, batch.failed
    if not good.all():  # a damaged model's vector is a failure of that photo, never a point
        failed = failed + [(i, NOT_FINITE) for i, ok in zip(index, good, strict=True) if not ok]
        index, vectors = [i for i, ok in zip(index, good, strict=True) if ok], vectors[good]
    return Embedded(index, vectors, failed, read, model, decode)


NOT_FINITE = "the model gave a vector that is not finite (damaged weights?)"


def usable(vectors: np.ndarray) -> np.ndarray:
    """Which rows are vectors a collection may hold: finite and of a length that is not zero
    (the models' outputs are unit length)."""
    vectors = np.asarray(vectors, np.float32)
    return np.isfinite(vectors).all(axis=1) & (np.abs(vectors).sum(axis=1) > 0)


def embed_files(
    encoder: Encoder,
    paths: Sequence[str | Path],
    boxes: Sequence[Box | None] | None = None,
    *,
    batch_size: int = 32,
    workers: int = 0,
    storage: Storage = LOCAL,
) -> np.ndarray:
    """All vectors in input order; raises ValueError naming the first file that failed."""
    out = np.zeros((len(paths), encoder.spec.out_dim), np.float32)
    parts = embed_batches(
        encoder, paths, boxes, batch_size=batch_size, workers=workers, storage=storage
    )
    for part in parts:
        if part.failed:
            i, reason = part.failed[0]
            raise ValueError(f"cannot read image {str(paths[i])!r}: {reason}")
        out[part.index] = part.vectors
    return out
