"""Moving collections: publish to a server, snapshots and restores, damaged snapshots."""

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ingest.cli import app as ingest_app
from ingest.runner import ensure_collection
from search.store import open_store, search
from search.store.schema import DEFAULT_COLLECTION

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


def test_publish_copies_to_a_server_collection(ingested, tmp_path):
    db, _ = ingested
    target = f"file:{tmp_path / 'server'}"
    result = runner.invoke(ingest_app, ["publish", "--to", target, "--store", str(db)])
    assert result.exit_code == 0, result.output
    from search.store import open_store

    with (
        open_store(store_dir=str(db), collection=DEFAULT_COLLECTION) as a,
        open_store(url=target, collection=DEFAULT_COLLECTION) as b,
    ):
        assert a.count() == b.count() > 0 and a.metadata() == b.metadata()
        query = next(a.scroll(1)).vectors
        assert [h.id for h in search(a, query, 5)[0]] == [h.id for h in search(b, query, 5)[0]]


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
    db, tmp_path, sample_root, change, signed, reason, kind, one_line_error
):
    good = _snapshot(db, tmp_path)
    bad = _rewrite(good, tmp_path / "bad.snap", change, signed)
    where = ["--store", str(db)] if kind == "embedded" else ["--qdrant-url", f"file:{tmp_path}/s"]
    if kind == "server":
        restored = runner.invoke(ingest_app, ["restore", "--from", str(good), *where])
        assert restored.exit_code == 0, restored.output
    total = len(list(sample_root.rglob("*.jpg")))
    result = runner.invoke(ingest_app, ["restore", "--from", str(bad), "--recreate", *where])
    one_line_error(result, "damaged", reason, "nothing was changed")
    info = runner.invoke(ingest_app, ["info", *where])
    assert info.exit_code == 0 and f"{total} points" in info.output


def test_a_good_restore_replaces_the_collection_and_leaves_no_staging(
    db, tmp_path, sample_root, search_cli, query_photo, store_count
):
    good = _snapshot(db, tmp_path)
    assert json.loads(tarfile.open(good).extractfile("snapshot.json").read())["parts"]
    result = runner.invoke(
        ingest_app, ["restore", "--from", str(good), "--recreate", "--store", str(db)]
    )
    assert result.exit_code == 0, result.output
    assert store_count(db) == len(list(sample_root.rglob("*.jpg")))
    assert sorted(p.name for p in db.iterdir()) == [DEFAULT_COLLECTION]  # no staging folders left
    assert search_cli(db, query_photo).exit_code == 0


def test_a_failed_snapshot_leaves_no_partial_file(db, tmp_path, monkeypatch, one_line_error):
    from search.store.edge import EdgeStore

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")
        yield

    monkeypatch.setattr(EdgeStore, "scroll", broken)
    out = tmp_path / "x.snap"
    result = runner.invoke(ingest_app, ["snapshot", "--out", str(out), "--store", str(db)])
    one_line_error(result, "No space left")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_snapshot_restores_into_either_store_kind(
    sample_root, encoder, tmp_path, store_contents, ingest_into
):
    from ingest.transfer import restore_snapshot, write_snapshot

    contents = store_contents  # vectors compared to 1e-6: cosine stores re-normalise on upsert

    def same(a, b):
        assert a.keys() == b.keys()
        for pid, (payload, vec) in a.items():
            assert b[pid][0] == payload
            np.testing.assert_allclose(b[pid][1], vec, atol=1e-6)

    with open_store(store_dir=str(tmp_path / "edge"), collection="c") as edge:
        ensure_collection(edge, encoder.spec)
        ingest_into(edge, encoder, sample_root, workers=0)
        write_snapshot(edge, tmp_path / "c.snap", batch=50)
        expected, meta = contents(edge), edge.metadata()
    with open_store(url=f"file:{tmp_path / 'server'}", collection="c") as server:
        assert restore_snapshot(tmp_path / "c.snap", server) == len(expected)
        same(contents(server), expected)
        assert server.metadata() == meta
        write_snapshot(server, tmp_path / "back.snap")
    with open_store(store_dir=str(tmp_path / "edge2"), collection="c") as again:
        restore_snapshot(tmp_path / "back.snap", again)
        same(contents(again), expected)
        from search.store import StoreError

        with pytest.raises(StoreError, match="--recreate"):
            restore_snapshot(tmp_path / "back.snap", again)
        (tmp_path / "junk.snap").write_bytes(b"junk")
        with pytest.raises(StoreError, match="not a snapshot"):
            restore_snapshot(tmp_path / "junk.snap", again, recreate=True)
