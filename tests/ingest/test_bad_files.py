"""Bad files: the run finishes, every good image is in, every bad one is reported with a reason."""

import csv
import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedder import read_catalog
from ingest.runner import ensure_collection
from search.cli import app as search_app
from search.store import open_store, point_id


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width × height (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # signature, then length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def make_bad_and_odd_files(folder):
    """Returns (good names, bad names) written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), np.uint8))
    good = {
        "cmyk.jpg": lambda p: rgb.convert("CMYK").save(p, "JPEG"),
        "grey.jpg": lambda p: rgb.convert("L").save(p, "JPEG"),
        "png_named.jpg": lambda p: rgb.save(p, "PNG"),
        "rgba.png": lambda p: rgb.convert("RGBA").save(p),
        "palette.png": lambda p: rgb.convert("P").save(p),
        "sixteen.png": lambda p: Image.fromarray(
            np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 20
        ).save(p),
        "exif_rotated.jpg": lambda p: _exif_rotated(rgb, p),
        "with space ünïcødé.jpg": lambda p: rgb.save(p, "JPEG"),
    }
    bad = {
        "zero.jpg": lambda p: p.write_bytes(b""),
        "truncated.jpg": lambda p: p.write_bytes(_jpeg_bytes(rgb)[:200]),
        "text.jpg": lambda p: p.write_text("this is not an image\n"),
        "bomb.png": lambda p: p.write_bytes(_png_with_size(40000, 40000)),
        "broken_link.jpg": lambda p: os.symlink(folder / "does-not-exist.jpg", p),
    }
    for name, make in {**good, **bad}.items():
        make(folder / name)
    return set(good), set(bad)


def _jpeg_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def _exif_rotated(img, path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° on display
    img.save(path, "JPEG", exif=exif)


@pytest.fixture()
def messy(dataset):
    good, bad = make_bad_and_odd_files(dataset / "img" / "TOPS" / "Odd" / "id_99999999")
    return dataset, good, bad


def test_bad_files_are_reported_and_good_ones_stored(messy, encoder, tmp_path, ingest_into):
    root, good, bad = messy
    with open_store(store_dir=str(tmp_path / "db"), collection="c") as store:
        ensure_collection(store, encoder.spec)
        summary = ingest_into(
            store, encoder, root, batch_size=8, workers=1, report=tmp_path / "failures.csv"
        )
        catalog = read_catalog(root)
        failed = {path.rsplit("/", 1)[1] for path, _ in summary.failures}
        assert failed == bad
        assert summary.embedded == len(catalog) - len(bad) == store.count()
        stored = store.retrieve([point_id(p) for p in catalog["path"]], ["path"])
        names = {p["path"].rsplit("/", 1)[1] for p in stored.values()}
        assert good <= names and not (bad & names)
    with open(summary.report) as fh:
        rows = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in csv.DictReader(fh)}
    assert set(rows) == bad and all(rows.values())
    assert "DecompressionBomb" in rows["bomb.png"]


def test_exif_orientation_is_applied(tmp_path):
    from embedder.transforms import load_image

    _exif_rotated(Image.new("RGB", (64, 48)), tmp_path / "r.jpg")
    assert load_image(tmp_path / "r.jpg").size == (48, 64)


def test_strict_makes_failures_an_error(messy, tmp_path, ingest_tiny):
    root, _, bad = messy
    report = ["--report", str(tmp_path / "f.csv")]
    lenient = ingest_tiny(root, tmp_path / "db", *report)
    assert lenient.exit_code == 0 and f"failed {len(bad)}" in lenient.output
    strict = ingest_tiny(root, tmp_path / "db", *report, "--strict")
    assert strict.exit_code == 1 and f"failed {len(bad)}" in strict.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_reported(dataset, encoder, tmp_path, ingest_into):
    locked = next(dataset.rglob("shop_01.jpg"))
    locked.chmod(0)
    try:
        with open_store(store_dir=str(tmp_path / "db"), collection="c") as store:
            ensure_collection(store, encoder.spec)
            summary = ingest_into(store, encoder, dataset, workers=0, report=tmp_path / "f.csv")
        assert [p for p, _ in summary.failures] == [locked.relative_to(dataset).as_posix()]
        assert "Permission" in summary.failures[0][1]
    finally:
        locked.chmod(0o644)


runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


def test_odd_annotation_lines_and_boxes_are_survived(dataset, tmp_path, ingest_tiny):
    anno = dataset / "Anno" / "list_bbox_consumer2shop.txt"
    lines = anno.read_text().splitlines()
    first, second, third = lines[2].split(), lines[3].split(), lines[4].split()
    lines[2] = " ".join(first[:3] + ["inf", "0", "10", "10"])
    lines[3] = " ".join(second[:3] + ["1e400", "1", "2", "3"])
    lines[4] = " ".join(third[:3] + ["-99999", "-99999", "99999", "99999"])
    anno.write_text("\n".join(lines) + "\n")
    result = ingest_tiny(dataset, str(tmp_path / "db"))
    assert result.exit_code == 0, result.output
    total = len(list(dataset.rglob("*.jpg")))
    assert f"embedded {total}" in result.output and "failed 0" in result.output
    huge = runner.invoke(
        search_app,
        [
            str(dataset / third[0]),
            "--store",
            str(tmp_path / "db"),
            "--top",
            "1",
            "--bbox",
            "-99999,-99999,99999,99999",
        ],
    )
    assert huge.exit_code == 0, huge.output


def test_a_fifo_and_a_name_that_is_not_utf8_are_reported_not_hung_on(dataset, tmp_path, tiny_args):
    """A FIFO named like a photo would block every reader that opens it, and a name whose
    bytes are not UTF-8 has no point id: both are failures in the report (the name shown
    escaped), every other photo is stored, and a rerun ends the same way."""
    import subprocess

    folder = dataset / "img" / "TOPS" / "Odd" / "id_99999998"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "shop_99.jpg")
    Image.new("RGB", (40, 60), "red").save(os.fsdecode(bytes(folder) + b"/shop_\xff\xfe.jpg"))
    report = tmp_path / "failures.csv"
    args = [BIN / "ingest", "run", "--root", dataset, "--store", tmp_path / "db", "--workers",
            "0", "--no-progress", "--report", report, *tiny_args]  # fmt: skip
    photos = len(read_catalog(dataset))
    for attempt in range(2):
        run = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "failed 2" in run.stdout and "Traceback" not in run.stderr
        with open(report) as fh:
            rows = {r["path"]: r["reason"] for r in csv.DictReader(fh)}
        assert rows == {
            "img/TOPS/Odd/id_99999998/shop_99.jpg": "not a regular file (a FIFO, socket or device)",
            "img/TOPS/Odd/id_99999998/shop_\\xff\\xfe.jpg": "its name is not valid UTF-8",
        }
        with open_store(store_dir=str(tmp_path / "db")) as store:
            assert store.count() == photos  # every photo that is one
        assert f"embedded {photos if attempt == 0 else 0}" in run.stdout
