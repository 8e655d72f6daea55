"""The one batch loop that turns image files into vectors, for ingest, evaluation and search.

The loop and its reader need no torch: with reader processes the reading goes through torch's
DataLoader, without them it runs in this process, so that an exported model (embedder.runtime)
answers a query with Pillow, NumPy and its runtime alone."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedder.choices import Decode, Precision
from embedder.errors import describe_failure
from embedder.geometry import Box
from embedder.spec import ModelSpec
from embedder.transforms import eval_transform, load_image

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn


READ_DEADLINE = 60.0  # seconds for one file to be read and decoded


class ReadTooSlow(TimeoutError):
    """A file that did not finish reading in time (a hung network disk, a FIFO)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """ReadTooSlow when the block takes longer than `seconds` (a read blocked in the kernel
    is interrupted); a no-op off the main thread, where no signal arrives."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def late(_signum, _frame):
        raise ReadTooSlow(f"the file did not finish reading within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class ImageFiles:
    """Reader: file i → (i, uint8 CHW array, "") or (i, None, reason) when it cannot be
    decoded, or was not read within `read_deadline` seconds (a map-style dataset for torch's
    DataLoader, or read in order in-process)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        boxes: Sequence[Box | None] | None,
        spec: ModelSpec,
        read_deadline: float | None = None,
    ):
        self.paths, self.boxes, self.spec = list(paths), boxes, spec
        self.transform = eval_transform(spec)
        self.min_side = int(spec.img_size / spec.crop_pct)
        self.read_deadline = READ_DEADLINE if read_deadline is None else read_deadline

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        box = self.boxes[i] if self.boxes is not None else None
        try:
            with deadline(self.read_deadline):
                image = load_image(self.paths[i], box, self.min_side)
            return i, self.transform(image), ""
        except Exception as exc:  # every undecodable or stuck file becomes a reported failure
            return i, None, describe_failure(exc)


@dataclass
class Batch:
    """A decoded batch: positions in the input, uint8 NCHW pixels (an array, or a tensor for a
    GPU's pinned copies), and the files that failed."""

    index: list[int]
    pixels: np.ndarray | torch.Tensor | None
    failed: list[tuple[int, str]] = field(default_factory=list)


def collate(samples, as_tensor: bool = False) -> Batch:
    good = [(i, t) for i, t, _ in samples if t is not None]
    failed = [(i, reason) for i, t, reason in samples if t is None]
    pixels = np.stack([t for _, t in good]) if good else None
    if as_tensor and pixels is not None:
        import torch

        pixels = torch.from_numpy(pixels)
    return Batch([i for i, _ in good], pixels, failed)


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


def die_with_parent(_worker: int = 0) -> None:
    """DataLoader worker_init_fn: the kernel kills the reader when its parent dies (kill -9),
    so no orphan keeps running, or keeps the store's lock that it inherited."""
    import ctypes
    import signal as signals

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signals.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no such guarantee
        pass
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


def loader(
    paths: Sequence[str | Path],
    boxes: Sequence[Box | None] | None,
    spec: ModelSpec,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    decode: Decode = Decode.cpu,
):
    """Reader: workers decode to uint8 pixels (cpu), or read JPEG bytes (device decode); with
    no workers and CPU decode, batches read in this process (no torch)."""
    if decode is Decode.device:
        from embedder.device_decode import JpegFiles, collate_items

        data, collate_fn = JpegFiles(paths, boxes, spec), collate_items
    else:
        data, collate_fn = ImageFiles(paths, boxes, spec), partial(collate, as_tensor=pin_memory)
        if workers == 0:
            return (
                collate_fn([data[i] for i in range(start, min(start + batch_size, len(data)))])
                for start in range(0, len(data), batch_size)
            )
    from torch.utils.data import DataLoader

    return DataLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory and decode is Decode.cpu,
        persistent_workers=False,
        worker_init_fn=die_with_parent if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )


def embed_batches(
    encoder: Encoder,
    paths: Sequence[str | Path],
    boxes: Sequence[Box | None] | None = None,
    *,
    batch_size: int = 32,
    workers: int = 1,
    decode: Decode | str = Decode.cpu,
) -> Iterator[Embedded]:
    """Read (and on the CPU path decode) in `workers` processes, overlapping the model; embed;
    yield batch by batch. decode="device" decodes JPEGs on the encoder's device (nvjpeg)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    decode = Decode(decode)
    pin = getattr(encoder.device, "type", encoder.device) == "cuda"
    batches = iter(
        loader(
            paths,
            boxes,
            encoder.spec,
            batch_size=batch_size,
            workers=workers,
            pin_memory=pin,
            decode=decode,
        )
    )
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        if batch is None:
            return
        if decode is Decode.device:
            from embedder.device_decode import decode_batch

            batch = Batch(*decode_batch(batch, encoder.spec, encoder.device))
        t2 = time.perf_counter()
        vectors = (
            encoder(batch.pixels)
            if batch.pixels is not None
            else np.zeros((0, encoder.spec.out_dim), np.float32)
        )
        good = usable(vectors)
        index, failed = batch.index, batch.failed
        if not good.all():  # a damaged model's vector is a failure of that photo, never a point
            failed = failed + [(i, NOT_FINITE) for i, ok in zip(index, good, strict=True) if not ok]
            index, vectors = [i for i, ok in zip(index, good, strict=True) if ok], vectors[good]
        yield Embedded(index, vectors, failed, t1 - t0, time.perf_counter() - t2, t2 - t1)


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
) -> np.ndarray:
    """All vectors in input order; raises ValueError naming the first file that failed."""
    out = np.zeros((len(paths), encoder.spec.out_dim), np.float32)
    for part in embed_batches(encoder, paths, boxes, batch_size=batch_size, workers=workers):
        if part.failed:
            i, reason = part.failed[0]
            raise ValueError(f"cannot read image {str(paths[i])!r}: {reason}")
        out[part.index] = part.vectors
    return out
