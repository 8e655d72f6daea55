"""Crashes, changes and mismatches: nothing lost, nothing duplicated, every error clear."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedder import read_catalog
from ingest.cli import app as ingest_app
from ingest.runner import ensure_collection, run_ingest
from search.store import point_id
from search.stores import open_store

BIN = Path(sys.executable).parent
# resnet18 at 128 px in fp32, two images a step: about a second for the sample, so that the
# signal, sent once 16 images are done, lands mid-run
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


def _count(db) -> int:
    with open_store(store_dir=str(db), collection="deepfashion") as store:
        return store.count()


# the tiny model, one image a step: a graceful stop lands after the first progress line
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
    sample_root, tmp_path, sig, workers, model, at
):
    db = tmp_path / "db"
    args = ["--root", str(sample_root), "--store", str(db), "--workers", workers, *model]
    stopped = _run_until(args, at, sig)
    if sig in (signal.SIGINT, signal.SIGTERM):  # docker stop and systemd send SIGTERM
        assert stopped.returncode == 130 and "interrupted" in stopped.stderr
        assert "Traceback" not in stopped.stderr
    else:
        assert stopped.returncode == -signal.SIGKILL
    kept = _count(db)
    total = len(read_catalog(sample_root))
    assert 0 < kept < total  # acknowledged points survived the crash (the WAL)
    rerun = CliRunner().invoke(ingest_app, ["run", *args, "--no-progress"])  # in this process
    assert rerun.exit_code == 0, rerun.output
    assert f"embedded {total - kept} (0 changed), already present {kept}, failed 0" in rerun.output
    assert _count(db) == total  # ids are uuid5(path): nothing duplicated


def test_changed_files_are_reembedded_and_prune_removes_gone_ones(dataset, encoder, tmp_path):
    with open_store(store_dir=str(tmp_path / "db"), collection="c") as store:
        ensure_collection(store, encoder.spec)
        first = run_ingest(store, encoder, dataset, workers=0, progress=False)
        table = read_catalog(dataset)
        changed, gone = table.path[0], table.path[1]
        with Image.open(dataset / changed) as img:
            img.rotate(90).save(dataset / changed)
        (dataset / gone).unlink()
        kept = run_ingest(store, encoder, dataset, workers=0, progress=False)
        assert (kept.embedded, kept.changed, kept.pruned) == (1, 1, 0)
        assert store.count() == first.seen  # without --prune the gone image stays
        pruned = run_ingest(store, encoder, dataset, workers=0, progress=False, prune=True)
        assert (pruned.embedded, pruned.pruned) == (0, 1)
        assert store.count() == first.seen - 1
        assert not store.retrieve([point_id(gone)], ["path"])
        with pytest.raises(ValueError, match="--limit"):
            run_ingest(store, encoder, dataset, progress=False, prune=True, limit=3)


def test_search_refuses_weights_other_than_the_collections(sample_root, tmp_path, tiny_model):
    from embedder import build_model, save_checkpoint
    from search.cli import app as search_app

    save_checkpoint(tiny_model, tmp_path / "a.safetensors")
    other = build_model("test_resnet", img_size=64, pretrained="none", dropout=0.0)
    with __import__("torch").no_grad():
        other.head.bias.add_(1.0)
    save_checkpoint(other, tmp_path / "b.safetensors")
    runner = CliRunner()
    db = str(tmp_path / "db")
    base = ["run", "--root", str(sample_root), "--store", db, "--workers", "0", "--no-progress"]
    assert (
        runner.invoke(ingest_app, [*base, "--weights", str(tmp_path / "a.safetensors")]).exit_code
        == 0
    )
    refused = runner.invoke(ingest_app, [*base, "--weights", str(tmp_path / "b.safetensors")])
    assert refused.exit_code == 2 and "embedded with another model" in refused.output
    assert "--recreate" in refused.output
    query = str(next(sample_root.rglob("shop_01.jpg")))
    assert runner.invoke(search_app, [query, "--store", db]).exit_code == 0  # caches a trace
    wrong = runner.invoke(
        search_app, [query, "--store", db, "--weights", str(tmp_path / "b.safetensors")]
    )
    assert wrong.exit_code == 2 and "do not match the collection" in wrong.output
    rebuilt = runner.invoke(
        ingest_app, [*base, "--weights", str(tmp_path / "b.safetensors"), "--recreate"]
    )
    assert rebuilt.exit_code == 0 and "already present 0" in rebuilt.output


@pytest.fixture(scope="module")
def bad_inputs(sample_root, tmp_path_factory, ingest_tiny) -> dict[str, str]:
    """An ingested store and files that are not what they claim to be."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    (tmp / "empty").mkdir()
    (tmp / "notes.jpg").write_text("not an image")
    (tmp / "bad.safetensors").write_bytes(b"\x00" * 64)
    db = str(tmp / "db")
    assert ingest_tiny(sample_root, db).exit_code == 0
    return {"tmp": str(tmp), "db": db, "root": str(sample_root)}


ONE_LINE_ERRORS = [
    ("ingest", "run --root {tmp}/empty --store {db} TINY", "no images"),
    (
        "ingest",
        "run --root {root} --store {db} --weights {tmp}/bad.safetensors",
        "not a valid safetensors file",
    ),
    ("ingest", "run --root {root} --store {db} --weights {tmp}/none.safetensors", "not found"),
    ("search", "{tmp}/notes.jpg --store {db}", "cannot read image"),
    (
        "search",
        "{tmp}/notes.jpg --qdrant-url http://127.0.0.1:9",
        "cannot reach Qdrant at http://127.0.0.1:9",
    ),
    ("search", "{tmp}/notes.jpg --qdrant-url ftp://x", "must start with http:// or https://"),
    ("ingest", "info --store {db} --collection missing", "does not exist"),
]


@pytest.mark.parametrize(("command", "args", "message"), ONE_LINE_ERRORS)
def test_cli_errors_are_one_line(bad_inputs, tiny_args, command, args, message):
    from search.cli import app as search_app

    app = {"ingest": ingest_app, "search": search_app}[command]
    argv = [
        a
        for part in args.format(**bad_inputs).split()
        for a in (tiny_args if part == "TINY" else [part])
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, (argv, result.output)
    assert message in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_locked_store_and_unreachable_server_never_echo_the_key(sample_root, tmp_path, ingest_tiny):
    db = tmp_path / "db"
    assert ingest_tiny(sample_root, str(db)).exit_code == 0
    with open_store(store_dir=str(db), collection="deepfashion") as held:
        held.count()
        locked = subprocess.run(
            [BIN / "ingest", "info", "--store", str(db)], capture_output=True, text=True
        )
    assert locked.returncode == 2 and "in use by another process" in locked.stderr
    env = {**os.environ, "QDRANT_API_KEY": "s3cret-key-value", "QDRANT_URL": "https://127.0.0.1:9"}
    out = subprocess.run([BIN / "ingest", "info"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "cannot reach Qdrant at https://127.0.0.1:9" in out.stderr
    assert "s3cret" not in out.stdout + out.stderr


def test_wrong_api_key_is_reported_as_such(tmp_path):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self):  # what Qdrant answers a request with a wrong key
            body = b'{"status":{"error":"Invalid api-key"},"time":0.0}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            **os.environ,
            "QDRANT_API_KEY": "wrong-key-123",
            "QDRANT_URL": f"http://127.0.0.1:{server.server_port}",
        }
        out = subprocess.run([BIN / "ingest", "info"], capture_output=True, text=True, env=env)
    finally:
        server.shutdown()
    assert out.returncode == 2 and "refused the API key" in out.stderr
    assert "wrong-key-123" not in out.stdout + out.stderr


def test_snapshot_restores_into_either_store_kind(sample_root, encoder, tmp_path, store_contents):
    from ingest.transfer import restore_snapshot, write_snapshot

    contents = store_contents  # vectors compared to 1e-6: cosine stores re-normalise on upsert

    def same(a, b):
        assert a.keys() == b.keys()
        for pid, (payload, vec) in a.items():
            assert b[pid][0] == payload
            np.testing.assert_allclose(b[pid][1], vec, atol=1e-6)

    with open_store(store_dir=str(tmp_path / "edge"), collection="c") as edge:
        ensure_collection(edge, encoder.spec)
        run_ingest(edge, encoder, sample_root, workers=0, progress=False)
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
