"""The web app's model pool: photos that arrive while the model runs share its next forward
pass, each caller gets its own rows, and a full queue is refused at once (HTTP 503)."""

import threading
import time

import numpy as np
import pytest

from search.batcher import Batcher, Busy


class Gated:
    """The real encoder, with its first forward held until `release` is set."""

    def __init__(self, encoder):
        self.encoder, self.spec, self.device = encoder, encoder.spec, encoder.device
        self.started, self.release, self.calls = threading.Event(), threading.Event(), 0

    def __call__(self, pixels):
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            assert self.release.wait(30)
        return self.encoder(pixels)


def _photos(encoder, n: int) -> list[np.ndarray]:
    size = encoder.spec.img_size
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (1, 3, size, size), dtype=np.uint8) for _ in range(n)]


def _until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_requests_that_wait_share_the_next_forward(encoder):
    gated, batches = Gated(encoder), []
    pool = Batcher(gated, workers=1, on_batch=lambda n, _seconds: batches.append(n))
    photos, answers = _photos(encoder, 4), {}

    def ask(i):
        answers[i] = pool(photos[i])

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    assert gated.started.wait(30)
    rest = [threading.Thread(target=ask, args=(i,)) for i in (1, 2, 3)]
    for thread in rest:
        thread.start()
    _until(lambda: len(pool._waiting) == 3)
    gated.release.set()
    for thread in [first, *rest]:
        thread.join(30)
    assert batches == [1, 3] and gated.calls == 2  # the three waiting photos: one forward
    for i, photo in enumerate(photos):  # each caller got its own photo's vector
        np.testing.assert_allclose(answers[i], encoder(photo), atol=1e-5)


def test_a_full_queue_is_refused_at_once(encoder):
    gated = Gated(encoder)
    pool = Batcher(gated, workers=1, max_queue=2)
    photos = _photos(encoder, 4)
    threads = [threading.Thread(target=pool, args=(photos[0],))]
    threads[0].start()
    assert gated.started.wait(30)
    threads += [threading.Thread(target=pool, args=(p,)) for p in photos[1:3]]
    for thread in threads[1:]:
        thread.start()
    _until(lambda: len(pool._waiting) == 2)
    started = time.monotonic()
    with pytest.raises(Busy, match="busy"):
        pool(photos[3])
    assert time.monotonic() - started < 1.0  # refused, not queued behind the others
    gated.release.set()
    for thread in threads:
        thread.join(30)
    assert gated.calls == 2
