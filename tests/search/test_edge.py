"""The embedded store: damaged files are one-line errors, locks, read-only folders."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ingest.cli import app as ingest_app
from search.store import open_store
from search.store.schema import DEFAULT_COLLECTION

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


def _segment_file(db: Path, name: str) -> Path:
    found = sorted(db.rglob(name))
    assert found, f"no {name} in {db}"
    return found[0]


def test_garbled_vectors_are_an_error_not_an_answer(
    db, sample_root, one_line_error, search_cli, query_photo
):
    vectors = _segment_file(db, "chunk_0.mmap")
    data = bytearray(vectors.read_bytes())
    rng = np.random.default_rng(0)
    data[: 40 * 512 * 4] = rng.integers(0, 256, 40 * 512 * 4, dtype=np.uint8).tobytes()
    vectors.write_bytes(bytes(data))
    one_line_error(search_cli(db, query_photo), "damaged", "--recreate")
    one_line_error(runner.invoke(ingest_app, ["info", "--store", str(db), "--check"]), "damaged")


def test_a_truncated_vector_file_is_a_one_line_error(
    db, sample_root, one_line_error, search_cli, query_photo
):
    vectors = _segment_file(db, "chunk_0.mmap")
    with open(vectors, "r+b") as fh:
        fh.truncate(100)
    result = search_cli(db, query_photo)
    one_line_error(result, str(db), "--recreate")


def test_garbled_payload_pages_are_a_one_line_error(
    db, sample_root, one_line_error, search_cli, query_photo
):
    page = _segment_file(db, "payload_storage/page_0.dat")
    page.write_bytes(b"\xff" * page.stat().st_size)
    one_line_error(search_cli(db, query_photo), "damaged", "--recreate")
    one_line_error(runner.invoke(ingest_app, ["info", "--store", str(db), "--check"]), "damaged")


def test_info_check_passes_on_a_sound_store(db):
    result = runner.invoke(ingest_app, ["info", "--store", str(db), "--check"])
    assert result.exit_code == 0 and "check: ok" in result.output


@pytest.mark.parametrize(
    ("content", "words"),
    [('["a", "list"]', "does not describe a collection"), ("{not json", "not valid JSON")],
)
def test_a_bad_collection_file_is_named(
    db, sample_root, content, words, one_line_error, search_cli, query_photo
):
    meta = db / DEFAULT_COLLECTION / "collection.json"
    meta.write_text(content)
    one_line_error(search_cli(db, query_photo), str(meta), words)


@pytest.fixture()
def read_only_copy(db, tmp_path, tmpfs):
    with tmpfs(tmp_path / "ro", "400m") as where:
        shutil.copytree(db, where / "db")
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where / "db"


def test_a_read_only_store_can_be_searched(read_only_copy, sample_root, search_cli, query_photo):
    result = search_cli(read_only_copy, query_photo)
    assert result.exit_code == 0, result.output
    info = runner.invoke(ingest_app, ["info", "--store", str(read_only_copy)])
    assert info.exit_code == 0, info.output


def test_a_locked_store_is_a_one_line_error(db):
    with open_store(store_dir=str(db), collection=DEFAULT_COLLECTION) as held:
        held.count()
        locked = subprocess.run(
            [BIN / "ingest", "info", "--store", str(db)], capture_output=True, text=True
        )
    assert locked.returncode == 2 and "in use by another process" in locked.stderr


DAMAGE = [  # (file below a segment, what happens to it): each silently wrong before
    ("mutable_id_tracker.mappings", "truncate"),
    ("mutable_id_tracker.mappings", "delete"),
    ("mutable_id_tracker.versions", "truncate"),
    ("vector_storage/vectors/status.dat", "delete"),
    ("vector_storage/vectors/status.dat", "truncate"),  # a Rust panic in the engine
    ("version.info", "delete"),
    ("vector_storage/vectors/chunk_0.mmap", "delete"),
]


@pytest.mark.parametrize(("name", "how"), DAMAGE)
def test_a_store_that_is_not_whole_says_so_and_is_rebuilt_whole(
    db, sample_root, name, how, one_line_error, search_cli, query_photo, ingest_tiny, tmp_path
):
    clean = tmp_path / "clean"
    shutil.copytree(db, clean)
    damaged = _segment_file(db, name)
    if how == "truncate":
        with open(damaged, "r+b") as fh:
            fh.truncate(3)
    else:
        damaged.unlink()
    one_line_error(search_cli(db, query_photo), "damaged", "--recreate")
    one_line_error(runner.invoke(ingest_app, ["info", "--store", str(db), "--check"]), "damaged")
    one_line_error(ingest_tiny(sample_root, str(db)), "damaged", "--recreate")  # never "present"
    rebuilt = ingest_tiny(sample_root, str(db), "--recreate")
    assert rebuilt.exit_code == 0, rebuilt.output
    with open_store(store_dir=str(db)) as fixed, open_store(store_dir=str(clean)) as good:
        assert fixed.count() == good.count() > 0
        from search.store import SearchParams, search

        probe = next(good.scroll(4)).vectors
        exact = SearchParams(exact=True)
        assert [[h.id for h in hits] for hits in search(fixed, probe, 10, params=exact)] == [
            [h.id for h in hits] for hits in search(good, probe, 10, params=exact)
        ]


@pytest.mark.parametrize("free_kb", [256, 4096])
def test_a_nearly_full_disk_under_a_store_is_no_space_never_a_bus_error(
    db, tmp_path, tmpfs, free_kb, sample_root, tiny_args, query_photo, store_count
):
    """The engine writes its WAL through memory maps even to open a shard: on a nearly full
    disk that was a SIGBUS (exit 135, no message), and `search` called the store damaged.
    Now each command says "no space" in one line, advises no --recreate, and once space is
    free the same store answers whole."""
    points = store_count(db)
    with tmpfs(tmp_path / "small", "200m") as disk:  # room for the store once it is free
        subprocess.run(["cp", "-r", "--sparse=always", str(db), str(disk / "db")], check=True)
        fill = disk / "fill"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - free_kb * 1024
        with open(fill, "wb") as fh:
            fh.write(b"\0" * max(0, free))
        for argv in (
            ["search", query_photo, "--store", disk / "db", "--top", "2"],
            ["ingest", "run", "--root", sample_root, "--store", disk / "db", "--workers", "0",
             "--no-progress", *tiny_args],
            ["ingest", "info", "--store", disk / "db"],
        ):  # fmt: skip
            run = subprocess.run(
                [BIN / argv[0], *map(str, argv[1:])], capture_output=True, text=True, timeout=300
            )
            lines = run.stderr.strip().splitlines()
            assert run.returncode == 2, (argv, run.returncode, run.stderr)  # not 135
            assert lines and lines[-1].startswith("error: no space left on"), run.stderr
            assert "--recreate" not in run.stderr and "not damaged" in lines[-1]
        fill.unlink()
        again = subprocess.run(
            [BIN / "search", query_photo, "--store", disk / "db", "--top", "2"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert store_count(disk / "db") == points
