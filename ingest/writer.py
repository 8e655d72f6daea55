"""Writer side of ingest: upserts batches on a background thread so writes overlap the model."""

from __future__ import annotations

import queue
import threading
import time

from search.store import Points, Store


class Writer:
    """`writer(points)` queues a batch; `close()` waits for every queued batch to be stored.

    Errors in the background are raised on the next call. `stored` counts acknowledged points.
    """

    def __init__(self, store: Store, depth: int = 4, flush_every: int = 20_000):
        self.store = store
        self.stored = 0
        self.seconds = 0.0  # upserting and flushing
        self.indexing = 0.0  # indexing segments while points arrive
        self.flush_every = flush_every
        self.segment_points = store.segment_points()
        self._since_flush = self._since_index = 0
        self._queue: queue.Queue[Points | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (points := self._queue.get()) is not None:
            if self._error is None:
                try:
                    t0 = time.perf_counter()
                    self.store.upsert(points)
                    self._since_flush += len(points)
                    if self._since_flush >= self.flush_every:  # a durable checkpoint
                        self.store.flush()
                        self._since_flush = 0
                    self.seconds += time.perf_counter() - t0
                    self.stored += len(points)
                    self._since_index += len(points)
                    if self.segment_points and self._since_index >= self.segment_points:
                        t0 = time.perf_counter()  # built while the model embeds the next ones
                        self.store.index_loaded()
                        self.indexing += time.perf_counter() - t0
                        self._since_index = 0
                except BaseException as exc:  # surfaced in the caller's thread
                    self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def __call__(self, points: Points) -> None:
        self._check()
        if len(points):
            self._queue.put(points)

    def stages(self) -> dict[str, float]:
        """The writer's stage seconds for a run's summary."""
        return {"write": self.seconds, **({"segments": self.indexing} if self.indexing else {})}

    def close(self) -> None:
        """Drain the queue and stop the thread; raises a background error if there was one."""
        self._queue.put(None)
        self._thread.join()
        self._check()
