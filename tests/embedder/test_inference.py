"""The one batch loop's reader: a file whose read never finishes is reported, not waited on."""

import os
import time

import pytest
from PIL import Image

import embedder.reader as reader
from embedder.inference import embed_batches


@pytest.mark.parametrize("workers", [0, 1])
def test_a_read_that_never_finishes_is_reported_and_the_rest_embedded(
    tmp_path, encoder, monkeypatch, workers
):
    """A FIFO stands for a hung network disk: opening it blocks in the kernel until the
    deadline interrupts it, in this process and in a reader process alike."""
    monkeypatch.setattr(reader, "READ_DEADLINE", 1.0)
    good = []
    for n in range(3):
        Image.new("RGB", (48, 64), (40 * n, 90, 160)).save(tmp_path / f"{n}.jpg")
        good.append(str(tmp_path / f"{n}.jpg"))
    os.mkfifo(tmp_path / "stuck.jpg")
    paths = [good[0], str(tmp_path / "stuck.jpg"), *good[1:]]
    started = time.monotonic()
    parts = list(embed_batches(encoder, paths, batch_size=2, workers=workers))
    embedded = sorted(i for part in parts for i in part.index)
    failed = [(i, reason) for part in parts for i, reason in part.failed]
    assert embedded == [0, 2, 3] and [i for i, _ in failed] == [1]
    assert "did not finish reading within 1 s" in failed[0][1]
    assert time.monotonic() - started < 20
