"""The server store through qdrant-client: unreachable servers and refused keys, never
echoing the key."""

import os
import subprocess
import sys
import threading
from pathlib import Path

from typer.testing import CliRunner

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


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


def test_an_unreachable_server_never_echoes_the_key():
    env = {**os.environ, "QDRANT_API_KEY": "s3cret-key-value", "QDRANT_URL": "https://127.0.0.1:9"}
    out = subprocess.run([BIN / "ingest", "info"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "cannot reach Qdrant at https://127.0.0.1:9" in out.stderr
    assert "s3cret" not in out.stdout + out.stderr


def test_the_cluster_options_reach_the_server():
    """What `ingest run --shard-number 3 --replication-factor 2 --write-consistency 2` asks a
    server for (qdrant-client's local mode has no cluster and ignores them): the request the
    client sends, recorded by a server that answers as Qdrant does."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from search.store import IndexSettings
    from search.stores import open_store

    asked = []

    class Record(BaseHTTPRequestHandler):
        def do_PUT(self):
            asked.append(
                (self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            )
            done = True if self.path.count("/") == 2 else {"operation_id": 0, "status": "completed"}
            body = json.dumps({"result": done, "status": "ok", "time": 0}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = open_store(url=f"http://127.0.0.1:{server.server_port}", collection="c")
        cluster = IndexSettings(shard_number=3, replication_factor=2, write_consistency=2)
        store.create(8, {"model": {}}, cluster)
    finally:
        server.shutdown()
    path, created = asked[0]
    assert path == "/collections/c"
    assert (created["shard_number"], created["replication_factor"]) == (3, 2)
    assert created["write_consistency_factor"] == 2
