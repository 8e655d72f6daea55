"""The reader beside the model: reader processes write batches into shared memory that are the
same pixels, in the same order, with the same failures, as reading in this process; an
exported model with several batches in flight gives the vectors it gives one batch at a time;
an upright photo is not copied for its EXIF orientation, a turned one is turned."""

import numpy as np
import pytest
from PIL import Image

from embedder import embed_files, read_catalog
from embedder.catalog import bbox_of
from embedder.inference import embed_batches
from embedder.reader import batches
from embedder.runtime import exported_encoder
from embedder.transforms import load_image


def _photos(sample_root, n):
    table = read_catalog(sample_root).head(n)
    return [str(sample_root / p) for p in table["path"]], [bbox_of(r) for r in table.itertuples()]


def _read(paths, boxes, spec, workers):
    with batches(paths, boxes, spec, batch_size=4, workers=workers) as source:
        return [(b.index, None if b.pixels is None else b.pixels.copy(), b.failed) for b in source]


def test_reader_processes_give_the_pixels_read_here(sample_root, tiny_model, tmp_path):
    paths, boxes = _photos(sample_root, 21)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    paths[5], boxes[5] = str(tmp_path / "broken.jpg"), None
    here = _read(paths, boxes, tiny_model.spec, workers=0)
    there = _read(paths, boxes, tiny_model.spec, workers=2)
    assert [(i, f) for i, _, f in here] == [(i, f) for i, _, f in there]
    assert sum((len(i) for i, _, _ in there), 0) == 20
    assert [i for _, _, f in there for i, _ in f] == [5]
    for (_, a, _), (_, b, _) in zip(here, there, strict=True):
        np.testing.assert_array_equal(a, b)


def test_batches_in_flight_give_the_vectors_of_one_batch_at_a_time(
    sample_root, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", str(tmp_path / "models"))
    exported = exported_encoder(tiny_model.spec, lambda: tiny_model, throughput=True)
    assert exported.depth > 1
    # bulk work shares the cores with the readers: no stream is pinned to one of them
    assert exported.compiled.get_property("ENABLE_CPU_PINNING") is False
    paths, boxes = _photos(sample_root, 30)
    one_by_one = embed_files(exported, paths, boxes, batch_size=30)
    streamed = np.zeros_like(one_by_one)
    for part in embed_batches(exported, paths, boxes, batch_size=3, workers=1):
        streamed[part.index] = part.vectors
    np.testing.assert_allclose(streamed, one_by_one, atol=1e-5)


def test_an_upright_photo_needs_no_exif_copy_and_a_turned_one_is_turned(tmp_path):
    photo = Image.new("RGB", (40, 60), (200, 10, 10))
    photo.save(tmp_path / "upright.jpg")
    exif = photo.getexif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90°
    photo.save(tmp_path / "turned.jpg", exif=exif)
    assert load_image(tmp_path / "upright.jpg").size == (40, 60)
    assert load_image(tmp_path / "turned.jpg").size == (60, 40)


@pytest.mark.parametrize("pause", [0.0, 1.0])
def test_a_reader_process_killed_mid_run_is_a_one_line_error(sample_root, tiny_model, pause):
    """A reader killed from outside (the kernel's OOM killer) stops the run with ReaderDied,
    whose message says what happened and that a rerun continues; the batches read before it
    came out whole. Whether the loop learns it from a batch it waits for or (after `pause`,
    once the pool knows) from the next batch it hands out."""
    import os
    import signal
    import time
    from pathlib import Path

    from embedder import Encoder
    from embedder.reader import ReaderDied

    paths, boxes = _photos(sample_root, 400)
    paths = (paths * 4)[:400]  # enough batches that the run is still going when one dies
    boxes = (boxes * 4)[:400]
    seen = []
    with pytest.raises(ReaderDied, match="a reader process died .* rerun to continue"):
        for part in embed_batches(Encoder(tiny_model, "cpu"), paths, boxes, batch_size=4):
            seen.append(len(part.index))
            if len(seen) == 2:
                me = Path(f"/proc/{os.getpid()}/cmdline").read_bytes()
                children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text()
                for pid in children.split():  # the forked readers, not the resource tracker
                    if Path(f"/proc/{pid}/cmdline").read_bytes() == me:
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(pause)
    assert seen[:2] == [4, 4] and sum(seen) < 400
