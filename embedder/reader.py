"""Reader: image files → batches of uint8 NCHW pixels, decoded beside the model.

Three ways to read, one Batch out:

- in this process (no readers: a query, a test);
- reader processes that decode straight into shared memory (SharedReader: a CPU model), so a
  batch crosses no pipe and no pickle and the model never waits on Python's GIL;
- torch's DataLoader, where torch is running anyway and wants its own memory: pinned batches
  for a GPU, JPEG bytes for the GPU's decoder (embedder.device_decode).

None of them needs torch for CPU decoding into a CPU model: an exported model's ingest and
query run on Pillow, NumPy and OpenVINO alone."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import shared_memory
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedder.choices import Decode
from embedder.errors import UserError, describe_failure
from embedder.geometry import Box
from embedder.spec import ModelSpec
from embedder.storage import LOCAL, Storage, reader_context
from embedder.transforms import eval_transform, load_pixels

if TYPE_CHECKING:
    import torch

READ_DEADLINE = 60.0  # seconds for one file to be read and decoded


class ReadTooSlow(TimeoutError):
    """A file that did not finish reading in time (a hung network disk, a FIFO)."""


class ReaderDied(UserError, RuntimeError):
    """A reader process was killed (out of memory?): the run stops, what was written stays."""


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
    """File i → (i, uint8 CHW array, "") or (i, None, reason) when it cannot be decoded, or
    was not read within `read_deadline` seconds (a map-style dataset for torch's DataLoader,
    or read in order). Files in an object store (`storage`) are read one by one, or all at
    once by fetch() (concurrent requests) before they are decoded."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        boxes: Sequence[Box | None] | None,
        spec: ModelSpec,
        read_deadline: float | None = None,
        storage: Storage = LOCAL,
    ):
        self.paths, self.boxes, self.spec = list(paths), boxes, spec
        self.transform = eval_transform(spec)
        self.read_deadline = READ_DEADLINE if read_deadline is None else read_deadline
        self.storage, self.fetched = storage, None

    def fetch(self) -> ImageFiles:
        """Every file's bytes from the object store at once (no-op on the local disk)."""
        if not self.storage.local:
            with deadline(self.read_deadline * max(1, len(self.paths) / 16)):
                try:
                    self.fetched = self.storage.fetch([str(p) for p in self.paths])
                except Exception as exc:  # the store stopped answering: every file fails
                    self.fetched = [exc] * len(self.paths)
        return self

    def _source(self, i: int):
        if self.fetched is None:
            return self.storage.source(str(self.paths[i]))
        got = self.fetched[i]
        if isinstance(got, BaseException):
            raise got
        return io.BytesIO(got)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        box = self.boxes[i] if self.boxes is not None else None
        try:
            with deadline(self.read_deadline):
                return i, load_pixels(self._source(i), box, self.transform), ""
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


def die_with_parent(_worker: int = 0) -> None:
    """A reader's initialiser: the kernel kills the reader when its parent dies (kill -9), so
    no orphan keeps running, or keeps the store's lock that it inherited."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no such guarantee
        pass
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


# --- reader processes writing into shared memory ---------------------------------------------

_reader: dict = {}  # in a reader process: the shared slots, the model's spec, the deadline


def _start_reader(
    name: str, shape: tuple, spec: ModelSpec, read_deadline: float, storage: Storage
) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    memory = shared_memory.SharedMemory(name=name)  # kept open for the process's life
    slots = np.ndarray(shape, np.uint8, buffer=memory.buf)
    _reader.update(memory=memory, slots=slots, spec=spec, deadline=read_deadline, storage=storage)


def _read_into(slot: int, paths: list, boxes: list | None) -> tuple[list[int], list]:
    """Decode `paths` into rows 0.. of `slot`: (rows written, [(row, reason)] that failed)."""
    files = ImageFiles(paths, boxes, _reader["spec"], _reader["deadline"], _reader["storage"])
    files.fetch()
    slots = _reader["slots"]
    good, failed = [], []
    for row in range(len(paths)):
        _, pixels, reason = files[row]
        if pixels is None:
            failed.append((row, reason))
        else:
            slots[slot, len(good)] = pixels
            good.append(row)
    return good, failed


class SharedReader:
    """`readers` processes decode batch after batch straight into shared-memory slots, a few
    batches ahead of the model; batches come out in order, each a view of its slot that stays
    valid until the next batch is taken (the model copies its input when it starts)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        boxes: Sequence[Box | None] | None,
        spec: ModelSpec,
        *,
        batch_size: int,
        readers: int,
        ahead: int | None = None,
        read_deadline: float | None = None,
        storage: Storage = LOCAL,
    ):
        self.paths, self.boxes, self.batch_size = [str(p) for p in paths], boxes, batch_size
        self.ahead = ahead or 2 * readers
        self.nslots = self.ahead + 1
        size = spec.img_size
        shape = (self.nslots, batch_size, 3, size, size)
        self.memory = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
        self.slots = np.ndarray(shape, np.uint8, buffer=self.memory.buf)
        deadline_s = READ_DEADLINE if read_deadline is None else read_deadline
        self.pool = ProcessPoolExecutor(
            readers,
            mp_context=reader_context(storage),
            initializer=_start_reader,
            initargs=(self.memory.name, shape, spec, deadline_s, storage),
        )

    def __iter__(self) -> Iterator[Batch]:
        try:
            yield from self._batches()
        except BrokenProcessPool:  # from a job's result, or from the next submit: the same
            raise ReaderDied(
                "a reader process died (out of memory?); rerun to continue where it stopped"
            ) from None

    def _batches(self) -> Iterator[Batch]:
        starts = iter(range(0, len(self.paths), self.batch_size))
        pending: deque = deque()
        for number in itertools.count():
            while len(pending) < self.ahead and (start := next(starts, None)) is not None:
                slot = (number + len(pending)) % self.nslots
                stop = min(start + self.batch_size, len(self.paths))
                boxes = list(self.boxes[start:stop]) if self.boxes is not None else None
                job = self.pool.submit(_read_into, slot, self.paths[start:stop], boxes)
                pending.append((start, slot, job))
            if not pending:
                return
            start, slot, job = pending.popleft()
            good, failed = job.result()
            pixels = self.slots[slot, : len(good)] if good else None
            yield Batch([start + r for r in good], pixels, [(start + r, why) for r, why in failed])

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.slots = None
        self.memory.close()
        self.memory.unlink()


@contextlib.contextmanager
def batches(
    paths: Sequence[str | Path],
    boxes: Sequence[Box | None] | None,
    spec: ModelSpec,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    decode: Decode = Decode.cpu,
    storage: Storage = LOCAL,
) -> Iterator[Iterator[Batch]]:
    """The batches of `paths` (in `storage`), read as the model needs them: decoded in this
    process (no workers), by `workers` reader processes into shared memory (a CPU model), or by
    torch's DataLoader (pinned for a GPU; JPEG bytes for the GPU's decoder)."""
    if decode is Decode.device:
        from embedder.device_decode import JpegFiles, collate_items

        files = JpegFiles(paths, boxes, spec, storage)
        yield iter(_data_loader(files, collate_items, batch_size, workers, storage=storage))
        return
    if pin_memory:
        data = ImageFiles(paths, boxes, spec, storage=storage)
        collate_fn = partial(collate, as_tensor=True)
        yield iter(
            _data_loader(data, collate_fn, batch_size, workers, pin_memory=True, storage=storage)
        )
        return
    if workers == 0:
        yield (
            _read_here(paths, boxes, spec, storage, start, batch_size)
            for start in range(0, len(paths), batch_size)
        )
        return
    reader = SharedReader(
        paths, boxes, spec, batch_size=batch_size, readers=workers, storage=storage
    )
    try:
        yield iter(reader)
    finally:
        reader.close()


def _read_here(paths, boxes, spec, storage: Storage, start: int, size: int) -> Batch:
    stop = min(start + size, len(paths))
    part = ImageFiles(paths[start:stop], boxes[start:stop] if boxes else None, spec, None, storage)
    part.fetch()
    return collate([(start + i, t, why) for i, t, why in (part[j] for j in range(len(part)))])


def _data_loader(
    data, collate_fn, batch_size: int, workers: int, pin_memory=False, storage: Storage = LOCAL
):
    from torch.utils.data import DataLoader

    return DataLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=die_with_parent if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context=reader_context(storage) if workers > 0 else None,
    )
