"""A bounded model pool: concurrent queries' photos go through one forward pass."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from embedder.errors import UserError


class Busy(UserError, RuntimeError):
    """More queries are waiting for the model than the queue holds (HTTP 503)."""


class _Request:
    __slots__ = ("pixels", "out", "error", "done")

    def __init__(self, pixels):
        self.pixels, self.out, self.error, self.done = pixels, None, None, False


class Batcher:
    """`batcher(pixels)` returns `encoder(pixels)`, running at most `workers` forwards at once;
    it stands in for the encoder (same `spec` and `device`), so the search service takes it as
    its model.

    Leader/follower batching, with no thread of its own: a caller that finds a free slot runs
    the forward itself, on its own photo and every photo waiting at that moment (up to
    `max_batch`); callers that arrive meanwhile wait, and when the forward ends one of them
    leads the next batch with everything that queued up. One client pays no thread hop; 8
    concurrent clients share batched forwards. A full queue raises Busy at once instead of
    letting latency grow without bound.
    """

    def __init__(
        self,
        encoder: Callable,
        *,
        workers: int = 1,
        max_batch: int = 16,
        max_queue: int = 64,
        on_batch: Callable[[int, float], object] | None = None,
    ):
        if workers < 1 or max_batch < 1:
            raise ValueError("the model pool needs at least one worker and a batch of one")
        self.forward, self.workers, self.max_batch = encoder, workers, max_batch
        self.spec, self.device = encoder.spec, getattr(encoder, "device", None)
        self.max_queue, self.on_batch = max_queue, on_batch
        self._waiting: deque[_Request] = deque()
        self._running = 0
        self._cond = threading.Condition()

    def __call__(self, pixels) -> np.ndarray:
        request = _Request(pixels)
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise Busy("the model is busy with other queries; try again in a moment")
            self._waiting.append(request)
            while not request.done:
                if self._running < self.workers and self._waiting:
                    self._lead()
                else:
                    self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.out

    def _lead(self) -> None:
        """Run one batch of the waiting requests (called holding the condition's lock)."""
        batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
        self._running += 1
        self._cond.release()
        try:
            sizes = [len(r.pixels) for r in batch]
            t0 = time.perf_counter()
            try:
                out = self.forward(np.concatenate([r.pixels for r in batch]))
            except BaseException as exc:  # every request of the batch gets the error
                for r in batch:
                    r.error = exc
            else:
                if self.on_batch:
                    self.on_batch(sum(sizes), time.perf_counter() - t0)
                start = 0
                for size, r in zip(sizes, batch, strict=True):
                    r.out = out[start : start + size]
                    start += size
        finally:
            self._cond.acquire()
            self._running -= 1
            for r in batch:
                r.done = True
            self._cond.notify_all()
