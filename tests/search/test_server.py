"""The server store through qdrant-client: unreachable servers and refused keys, never
echoing the key."""

import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from typer.testing import CliRunner

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


@contextmanager
def fake_qdrant(answer):
    """An HTTP server on a free port answering every request as `answer(method, path, body)`
    says, with (status, JSON body): what Qdrant sends, where no Qdrant runs."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            size = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(size)) if size else None
            status, reply = answer(self.command, self.path, request)
            body = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_wrong_api_key_is_reported_as_such(tmp_path):
    refuse = (401, {"status": {"error": "Invalid api-key"}, "time": 0.0})  # Qdrant, wrong key
    with fake_qdrant(lambda *request: refuse) as url:
        env = {**os.environ, "QDRANT_API_KEY": "wrong-key-123", "QDRANT_URL": url}
        out = subprocess.run([BIN / "ingest", "info"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "refused the API key" in out.stderr
    assert "wrong-key-123" not in out.stdout + out.stderr


def test_an_unreachable_server_never_echoes_the_key():
    env = {**os.environ, "QDRANT_API_KEY": "s3cret-key-value", "QDRANT_URL": "https://127.0.0.1:9"}
    out = subprocess.run([BIN / "ingest", "info"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "cannot reach Qdrant at https://127.0.0.1:9" in out.stderr
    assert "s3cret" not in out.stdout + out.stderr


def test_the_cluster_options_reach_the_server():
    """What `ingest run --shard-number 3 --replication-factor 2 --write-consistency 2` asks a
    server for (qdrant-client's local mode has no cluster and ignores them): the request the
    client sends, recorded by a server that answers as Qdrant does."""
    from search.store import IndexSettings, open_store

    asked = []

    def record(method, path, body):
        if method == "PUT":
            asked.append((path, body))
        done = True if path.count("/") == 2 else {"operation_id": 0, "status": "completed"}
        return 200, {"result": done, "status": "ok", "time": 0}

    with fake_qdrant(record) as url:
        store = open_store(url=url, collection="c")
        cluster = IndexSettings(shard_number=3, replication_factor=2, write_consistency=2)
        store.create(8, {"model": {}}, cluster)
    path, created = asked[0]
    assert path == "/collections/c"
    assert (created["shard_number"], created["replication_factor"]) == (3, 2)
    assert created["write_consistency_factor"] == 2
