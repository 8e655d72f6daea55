"""The runner: interrupts and crashes, changed and gone files, the index build, full disks,
reader processes."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from embedder import read_catalog
from ingest.cli import app as ingest_app
from ingest.runner import ensure_collection
from search.store import open_store, point_id
from search.store.schema import DEFAULT_COLLECTION

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


SLOW = [
    "--backbone",
    "resnet18",
    "--img-size",
    "128",
    "--pretrained",
    "none",
    "--batch-size",
    "2",
    "--precision",
    "fp32",
]


def _run_until(args, done_at: int, sig: int) -> subprocess.CompletedProcess:
    """Start `ingest run`, send `sig` once its progress bar passes `done_at` images."""
    proc = subprocess.Popen(
        [BIN / "ingest", "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen, err = [0], []

    def watch():
        buf = ""
        while ch := proc.stderr.read(1):
            buf += ch
            err.append(ch)
            if m := re.findall(r"(\d+)/\d+ \[", buf[-80:]):
                seen[0] = int(m[-1])

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.time() + 120
    while seen[0] < done_at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out = proc.stdout.read()
    proc.wait(60)
    time.sleep(0.1)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(err))


TINY_STEPS = [
    "--backbone",
    "test_resnet",
    "--img-size",
    "64",
    "--pretrained",
    "none",
    "--batch-size",
    "1",
]


@pytest.mark.parametrize(
    "sig, workers, model, at",
    [
        (signal.SIGKILL, "0", SLOW, 16),  # the one real kill -9: acknowledged writes survive
        (signal.SIGINT, "1", TINY_STEPS, 1),
        (signal.SIGTERM, "1", TINY_STEPS, 1),  # docker stop, Kubernetes, systemd
    ],
)
def test_interrupted_run_then_rerun_gives_exactly_the_catalog(
    sample_root, tmp_path, sig, workers, model, at, store_count
):
    db = tmp_path / "db"
    args = ["--root", str(sample_root), "--store", str(db), "--workers", workers, *model]
    stopped = _run_until(args, at, sig)
    if sig in (signal.SIGINT, signal.SIGTERM):  # docker stop and systemd send SIGTERM
        assert stopped.returncode == 130 and "interrupted" in stopped.stderr
        assert "Traceback" not in stopped.stderr
    else:
        assert stopped.returncode == -signal.SIGKILL
    kept = store_count(db)
    total = len(read_catalog(sample_root))
    assert 0 < kept < total  # acknowledged points survived the crash (the WAL)
    rerun = CliRunner().invoke(ingest_app, ["run", *args, "--no-progress"])  # in this process
    assert rerun.exit_code == 0, rerun.output
    assert f"embedded {total - kept} (0 changed), already present {kept}, failed 0" in rerun.output
    assert store_count(db) == total  # ids are uuid5(path): nothing duplicated


def test_changed_files_are_reembedded_and_prune_removes_gone_ones(
    dataset, encoder, tmp_path, ingest_into
):
    with open_store(store_dir=str(tmp_path / "db"), collection="c") as store:
        ensure_collection(store, encoder.spec)
        first = ingest_into(store, encoder, dataset, workers=0)
        table = read_catalog(dataset)
        changed, gone = table.path[0], table.path[1]
        with Image.open(dataset / changed) as img:
            img.rotate(90).save(dataset / changed)
        (dataset / gone).unlink()
        kept = ingest_into(store, encoder, dataset, workers=0)
        assert (kept.embedded, kept.changed, kept.pruned) == (1, 1, 0)
        assert store.count() == first.seen  # without --prune the gone image stays
        pruned = ingest_into(store, encoder, dataset, workers=0, prune=True)
        assert (pruned.embedded, pruned.pruned) == (0, 1)
        assert store.count() == first.seen - 1
        assert not store.retrieve([point_id(gone)], ["path"])
        with pytest.raises(ValueError, match="--limit"):
            ingest_into(store, encoder, dataset, prune=True, limit=3)


def test_an_unfinished_index_build_is_finished_by_the_next_run(db, sample_root, ingest_tiny):
    marker = db / DEFAULT_COLLECTION / "index.complete"
    assert marker.is_file()
    marker.unlink()  # what a crash between the last upsert and the end of the build leaves
    info = runner.invoke(ingest_app, ["info", "--store", str(db)])
    assert "not recorded as complete" in info.output
    rerun = ingest_tiny(sample_root, str(db))
    assert rerun.exit_code == 0 and "embedded 0" in rerun.output and "index" in rerun.output
    assert marker.is_file()


@pytest.fixture()
def small_disk(tmp_path, tmpfs):
    with tmpfs(tmp_path / "small", "4m") as where:
        yield where


def test_a_full_disk_is_a_one_line_error_before_writing(
    small_disk, sample_root, db, tiny_args, store_count
):
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
    assert store_count(db) > 0  # the source is untouched


def _running(pid: str) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except OSError:
        return False


def test_readers_die_with_a_killed_ingest(sample_root, tmp_path, store_count):
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
    assert store_count(tmp_path / "db") >= 0  # and the store opens at once: no lock left behind
