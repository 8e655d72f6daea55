"""A bounded pool of model workers: concurrent queries' photos go through one forward pass."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from embedder.errors import UserError


class Busy(UserError, RuntimeError):
    """More queries are waiting for the model than the queue holds (HTTP 503)."""


class Batcher:
    """`batcher(pixels)` runs `forward` on a worker thread and returns its rows for `pixels`.

    Requests that arrive while a worker is busy wait in a bounded queue; a free worker takes
    everything waiting (up to `max_batch` images) as one batch, so 8 concurrent clients cost
    about one batched forward, not 8 single ones. A full queue raises Busy at once instead of
    letting latency grow without bound.
    """

    def __init__(
        self,
        forward: Callable,
        *,
        workers: int = 1,
        max_batch: int = 16,
        max_queue: int = 64,
        on_batch: Callable[[int, float], object] | None = None,
    ):
        if workers < 1 or max_batch < 1:
            raise ValueError("the model pool needs at least one worker and a batch of one")
        self.forward, self.max_batch, self.on_batch = forward, max_batch, on_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._threads = [
            threading.Thread(target=self._run, name=f"model-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def __call__(self, pixels) -> np.ndarray:
        done: Future = Future()
        try:
            self._queue.put_nowait((pixels, done))
        except queue.Full:
            raise Busy("the model is busy with other queries; try again in a moment") from None
        return done.result()

    def _run(self) -> None:
        import time

        import torch

        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # closing: finish this batch, then stop
                    self._queue.put(None)
                    break
                batch.append(more)
            sizes = [len(p) for p, _ in batch]
            try:
                t0 = time.perf_counter()
                out = self.forward(torch.cat([p for p, _ in batch]))
                if self.on_batch:
                    self.on_batch(sum(sizes), time.perf_counter() - t0)
            except BaseException as exc:  # every waiting request gets the error
                for _, done in batch:
                    done.set_exception(exc)
                continue
            start = 0
            for size, (_, done) in zip(sizes, batch, strict=True):
                done.set_result(out[start : start + size])
                start += size

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
