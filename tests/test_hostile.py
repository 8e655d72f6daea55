"""What a careful, hostile user tried: damaged backups and stores, full disks, odd boxes, stray
settings. Each case: a clear one-line error (exit 2) or the right answer, and nothing lost."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ingest.cli import app as ingest_app
from search.cli import app as search_app
from search.stores import open_store

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


@pytest.fixture()
def db(sample_root, tmp_path, ingest_tiny) -> Path:
    db = tmp_path / "db"
    result = ingest_tiny(sample_root, str(db))
    assert result.exit_code == 0, result.output
    return db


def _count(db, **kw) -> int:
    with open_store(store_dir=str(db), **kw) as store:
        return store.count()


def _query(sample_root) -> str:
    return str(sorted(sample_root.rglob("comsumer_01.jpg"))[0])


def _search(db, *args):
    return runner.invoke(search_app, [*args, "--store", str(db), "--top", "3"])


def _one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.output
    for word in words:
        assert word in error[0], error[0]


# 1. snapshots -------------------------------------------------------------------------------
def _snapshot(db, tmp_path) -> Path:
    out = tmp_path / "c.snap"
    result = runner.invoke(ingest_app, ["snapshot", "--out", str(out), "--store", str(db)])
    assert result.exit_code == 0, result.output
    return out


def _rewrite(snapshot: Path, out: Path, change, fix_checksums: bool) -> Path:
    """Copy a snapshot, changing the first vector part's bytes; optionally re-sign it."""
    with tarfile.open(snapshot) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members["part-000000.npy"] = change(members["part-000000.npy"])
    header = json.loads(members["snapshot.json"])
    if fix_checksums:
        import hashlib

        header["parts"]["part-000000.npy"] = hashlib.sha256(members["part-000000.npy"]).hexdigest()
    members["snapshot.json"] = json.dumps(header).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _nan(data: bytes) -> bytes:
    vectors = np.load(io.BytesIO(data))
    vectors[0, 0] = np.nan
    buf = io.BytesIO()
    np.save(buf, vectors)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("change", "signed", "reason"),
    [(_flip, False, "does not match its checksum"), (_nan, True, "NaN or infinite")],
)
@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_a_damaged_snapshot_never_replaces_a_good_collection(
    db, tmp_path, sample_root, change, signed, reason, kind
):
    good = _snapshot(db, tmp_path)
    bad = _rewrite(good, tmp_path / "bad.snap", change, signed)
    where = ["--store", str(db)] if kind == "embedded" else ["--qdrant-url", f"file:{tmp_path}/s"]
    if kind == "server":
        restored = runner.invoke(ingest_app, ["restore", "--from", str(good), *where])
        assert restored.exit_code == 0, restored.output
    total = len(list(sample_root.rglob("*.jpg")))
    result = runner.invoke(ingest_app, ["restore", "--from", str(bad), "--recreate", *where])
    _one_line_error(result, "damaged", reason, "nothing was changed")
    info = runner.invoke(ingest_app, ["info", *where])
    assert info.exit_code == 0 and f"{total} points" in info.output


def test_a_good_restore_replaces_the_collection_and_leaves_no_staging(db, tmp_path, sample_root):
    good = _snapshot(db, tmp_path)
    assert json.loads(tarfile.open(good).extractfile("snapshot.json").read())["parts"]
    result = runner.invoke(
        ingest_app, ["restore", "--from", str(good), "--recreate", "--store", str(db)]
    )
    assert result.exit_code == 0, result.output
    assert _count(db) == len(list(sample_root.rglob("*.jpg")))
    assert sorted(p.name for p in db.iterdir()) == ["deepfashion"]  # no staging folders left
    assert _search(db, _query(sample_root)).exit_code == 0


# 2. damaged embedded stores --------------------------------------------------------------------
def _segment_file(db: Path, name: str) -> Path:
    found = sorted(db.rglob(name))
    assert found, f"no {name} in {db}"
    return found[0]


def test_garbled_vectors_are_an_error_not_an_answer(db, sample_root):
    vectors = _segment_file(db, "chunk_0.mmap")
    data = bytearray(vectors.read_bytes())
    rng = np.random.default_rng(0)
    data[: 40 * 512 * 4] = rng.integers(0, 256, 40 * 512 * 4, dtype=np.uint8).tobytes()
    vectors.write_bytes(bytes(data))
    _one_line_error(_search(db, _query(sample_root)), "damaged", "--recreate")
    _one_line_error(runner.invoke(ingest_app, ["info", "--store", str(db), "--check"]), "damaged")


def test_a_truncated_vector_file_is_a_one_line_error(db, sample_root):
    vectors = _segment_file(db, "chunk_0.mmap")
    with open(vectors, "r+b") as fh:
        fh.truncate(100)
    result = _search(db, _query(sample_root))
    _one_line_error(result, str(db), "--recreate")


def test_garbled_payload_pages_are_a_one_line_error(db, sample_root):
    page = _segment_file(db, "payload_storage/page_0.dat")
    page.write_bytes(b"\xff" * page.stat().st_size)
    _one_line_error(_search(db, _query(sample_root)), "damaged", "--recreate")
    _one_line_error(runner.invoke(ingest_app, ["info", "--store", str(db), "--check"]), "damaged")


def test_info_check_passes_on_a_sound_store(db):
    result = runner.invoke(ingest_app, ["info", "--store", str(db), "--check"])
    assert result.exit_code == 0 and "check: ok" in result.output


# 3. a damaged traced-model cache ----------------------------------------------------------------
class _Broken(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 512), float("nan"))


def test_a_broken_traced_model_is_rebuilt(db, sample_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    first = _search(db, _query(sample_root), "--json")
    assert first.exit_code == 0, first.output
    (cached,) = (tmp_path / "cache").glob("*.pt")
    torch.jit.save(torch.jit.trace(_Broken(), torch.zeros(1, 3, 64, 64)), str(cached))
    again = _search(db, _query(sample_root), "--json")
    assert again.exit_code == 0, again.output
    assert [r["id"] for r in json.loads(again.stdout)[0]["results"]] == [
        r["id"] for r in json.loads(first.stdout)[0]["results"]
    ]
    from embedder.compiled import load_traced
    from embedder.device import autocast_dtype
    from embedder.spec import ModelSpec

    with open_store(store_dir=str(db)) as store:
        spec = ModelSpec.from_json(store.metadata()["model_spec"])
    dtype = autocast_dtype(torch.device("cpu"), "auto")  # bf16 where the CPU has it, else fp32
    assert load_traced(spec, dtype) is not None  # the rebuilt copy is sound


# 4. a crash during the index build --------------------------------------------------------------
def test_an_unfinished_index_build_is_finished_by_the_next_run(db, sample_root, ingest_tiny):
    marker = db / "deepfashion" / "index.complete"
    assert marker.is_file()
    marker.unlink()  # what a crash between the last upsert and the end of the build leaves
    info = runner.invoke(ingest_app, ["info", "--store", str(db)])
    assert "not recorded as complete" in info.output
    rerun = ingest_tiny(sample_root, str(db))
    assert rerun.exit_code == 0 and "embedded 0" in rerun.output and "index" in rerun.output
    assert marker.is_file()


@contextlib.contextmanager
def _tmpfs(where: Path, size: str):
    """A tmpfs of `size` mounted at `where` (root only: the test skips, saying why, otherwise)."""
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)])


# 5. full disks ---------------------------------------------------------------------------------
@pytest.fixture()
def small_disk(tmp_path):
    with _tmpfs(tmp_path / "small", "4m") as where:
        yield where


def test_a_full_disk_is_a_one_line_error_before_writing(small_disk, sample_root, db, tiny_args):
    result = subprocess.run(
        [
            BIN / "ingest",
            "run",
            "--root",
            str(sample_root),
            "--store",
            str(small_disk / "db"),
            "--workers",
            "0",
            "--no-progress",
            *tiny_args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr  # not 135 (SIGBUS)
    assert "no space left on" in result.stderr and "need ~" in result.stderr
    snap = subprocess.run(
        [BIN / "ingest", "snapshot", "--out", str(small_disk / "x.snap"), "--store", str(db)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert snap.returncode in (0, 2) and "Traceback" not in snap.stderr
    assert not list(small_disk.glob("*.partial"))
    assert _count(db) > 0  # the source is untouched


def test_a_failed_snapshot_leaves_no_partial_file(db, tmp_path, monkeypatch):
    from search.edge import EdgeStore

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")
        yield

    monkeypatch.setattr(EdgeStore, "scroll", broken)
    out = tmp_path / "x.snap"
    result = runner.invoke(ingest_app, ["snapshot", "--out", str(out), "--store", str(db)])
    _one_line_error(result, "No space left")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


# 6. odd boxes ----------------------------------------------------------------------------------
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


# 7. SIGTERM (tests/ingest/test_faults.py), orphans, stale locks -----------------------------------
def _running(pid: str) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except OSError:
        return False


def test_readers_die_with_a_killed_ingest(sample_root, tmp_path):
    proc = subprocess.Popen(
        [
            BIN / "ingest",
            "run",
            "--root",
            str(sample_root),
            "--store",
            str(tmp_path / "db"),
            "--workers",
            "2",
            "--backbone",
            "resnet50",
            "--pretrained",
            "none",
            "--batch-size",
            "2",
            "--precision",
            "fp32",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    children: list[str] = []
    while time.time() < deadline and len(children) < 2:
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        time.sleep(0.1)
    assert len(children) >= 2, "the readers did not start"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    time.sleep(1.0)
    alive = [c for c in children if _running(c)]
    assert not alive, f"orphaned readers {alive}"
    assert _count(tmp_path / "db") >= 0  # and the store opens at once: no lock left behind


# 8. settings that should not matter -----------------------------------------------------------
def test_an_explicit_store_wins_over_qdrant_url(db, sample_root, monkeypatch, tmp_path):
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")
    assert _search(db, _query(sample_root)).exit_code == 0
    target = f"file:{tmp_path / 'server'}"
    published = runner.invoke(ingest_app, ["publish", "--to", target, "--store", str(db)])
    assert published.exit_code == 0, published.output
    empty = runner.invoke(ingest_app, ["publish", "--to", "", "--store", str(db)])
    _one_line_error(empty, "empty")
    assert not Path("qdrant_data").exists()


def test_an_unwritable_model_cache_only_warns(db, sample_root, monkeypatch):
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", "/dev/null/cache")
    result = _search(db, _query(sample_root))
    assert result.exit_code == 0, result.output
    assert "rank" in result.output


# 9. smaller ones -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "words"),
    [('["a", "list"]', "does not describe a collection"), ("{not json", "not valid JSON")],
)
def test_a_bad_collection_file_is_named(db, sample_root, content, words):
    meta = db / "deepfashion" / "collection.json"
    meta.write_text(content)
    _one_line_error(_search(db, _query(sample_root)), str(meta), words)


def test_query_files_are_checked_before_the_model_loads(db, sample_root, tmp_path):
    _one_line_error(_search(db, str(sample_root)), "is a folder")
    gif = tmp_path / "q.gif"
    gif.write_bytes(b"GIF89a")
    _one_line_error(_search(db, str(gif)), "not an image ingest reads")
    top = runner.invoke(search_app, [_query(sample_root), "--store", str(db), "--top", "0"])
    assert top.exit_code == 2 and "--top" in top.output


def test_a_file_name_with_a_newline_keeps_the_table(dataset, tmp_path, ingest_tiny):
    src = sorted((dataset / "img" / "TOPS").rglob("shop_01.jpg"))[0]
    odd = src.with_name("shop_\nodd.jpg")
    shutil.copy(src, odd)
    (src.parent / "._shop_01.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    result = ingest_tiny(dataset, str(tmp_path / "db"))
    assert result.exit_code == 0 and "failed 0" in result.output  # ._ files are skipped
    search = runner.invoke(search_app, [str(odd), "--store", str(tmp_path / "db"), "--top", "40"])
    assert search.exit_code == 0, search.output
    rows = [line for line in search.output.splitlines() if line[:1].isdigit()]
    assert len(rows) == 40 and any("shop_\\nodd.jpg" in row for row in rows)


def test_an_unwritable_report_is_found_before_the_ingest(sample_root, tmp_path, ingest_tiny):
    result = ingest_tiny(sample_root, str(tmp_path / "db"), "--report", "/nonexistent/r.csv")
    _one_line_error(result, "--report")
    assert not (tmp_path / "db").exists()


@pytest.fixture()
def read_only_copy(db, tmp_path):
    with _tmpfs(tmp_path / "ro", "400m") as where:
        shutil.copytree(db, where / "db")
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where / "db"


def test_a_read_only_store_can_be_searched(read_only_copy, sample_root):
    result = _search(read_only_copy, _query(sample_root))
    assert result.exit_code == 0, result.output
    info = runner.invoke(ingest_app, ["info", "--store", str(read_only_copy)])
    assert info.exit_code == 0, info.output
