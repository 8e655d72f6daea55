"""`search serve` under load: latency and throughput against the bare in-process query.

    python benchmarks/serve_latency.py [--backbone resnet18 --img-size 128] [--queries 48]
                                       [--clients 8] [--detector DET.safetensors]

Builds a small collection (generated sample, untrained model: speed does not depend on the
weights), starts `search serve` as a process, and in this process measures, for the same photos:

1. bare: decode + forward + store search through the search service, no HTTP (the floor);
2. one client posting the photos one after another to the server;
3. N concurrent clients posting the same photos (the server batches concurrent forwards);
4. with --detector FILE, one client against a second server started with that garment
   detector (each upload's garment found first).

Prints p50/p95 latency and queries/s, and the ratios the web app is held to: server p50 over
bare p50 with one client (target <= 1.25), N-client over one-client throughput (>= 1.5), and
one-client p50 with detection over without (<= 1.5).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _line(name: str, latencies: list[float], wall: float) -> str:
    return (
        f"{name:<22} p50 {1000 * statistics.median(latencies):7.1f} ms   "
        f"p95 {1000 * _percentile(latencies, 0.95):7.1f} ms   {len(latencies) / wall:6.1f} q/s"
    )


def _multipart(data: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body, built once per photo so the clients cost little CPU (they
    share the machine with the server)."""
    boundary = "----bench7d1c"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def _clients(port: int, photos: list[bytes], clients: int, rounds: int) -> tuple[list, float]:
    """`clients` threads, each with its own keep-alive connection, post every photo `rounds`
    times; returns every request's latency and the wall time of the whole run."""
    import http.client

    bodies = [_multipart(d, {"top": "20", "group": "item"}) for d in photos]
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def work(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for n in range(rounds * len(photos)):
            body, boundary = bodies[(offset + n) % len(bodies)]
            t0 = time.perf_counter()
            conn.request(
                "POST",
                "/api/search",
                body=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            response = conn.getresponse()
            payload = response.read()
            took = time.perf_counter() - t0
            if response.status != 200:
                errors.append(f"{response.status} {payload[:200]!r}")
            with lock:
                latencies.append(took)
        conn.close()

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"server errors: {errors[:3]}")
    return latencies, time.perf_counter() - started


def _batches(metrics: str) -> tuple[float, float]:
    """(images, forward passes) so far, from the server's Prometheus metrics."""
    values = {
        line.split()[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("model_batch_images_")
    }
    return values["model_batch_images_sum"], values["model_batch_images_count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--queries", type=int, default=48, help="distinct query photos")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--items", type=int, default=80, help="garments in the collection")
    parser.add_argument("--runtime", default="auto", help="auto, torch or openvino")
    parser.add_argument("--int8", action="store_true", help="OpenVINO's int8 model")
    parser.add_argument(
        "--detector", help="Also one client against a server with this garment detector"
    )
    parser.add_argument(
        "serve_args", nargs="*", help="extra `search serve` options, after --, e.g. -- --workers 2"
    )
    args = parser.parse_args()

    import httpx
    import torch
    from _collection import make_collection

    from embedder.recipe import ModelRecipe, RunOptions
    from search.service import Query, SearchService
    from search.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        root, db = make_collection(
            tmp, args.backbone, img_size=args.img_size, items=args.items, seed=1
        )
        photos = [p.read_bytes() for p in sorted(root.rglob("comsumer_*.jpg"))[: args.queries]]
        query = Query.make(20, "item")
        os.environ["FASHION_RETRIEVAL_CACHE"] = f"{tmp}/traced"  # a fresh cache, as a new server
        print(
            f"{args.backbone} {args.img_size}px ({args.runtime}{', int8' if args.int8 else ''}), "
            f"{len(photos)} consumer photos as queries, "
            f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
        )

        # 1. the floor: the service in this process, no HTTP, no batching
        with open_store(store_dir=db) as store:
            # the model as the server runs it (traced on CPU)
            run = RunOptions(runtime=args.runtime, int8=args.int8, traced=True)
            recipe = ModelRecipe.for_collection(store.require_metadata(), run=run)
            service = SearchService(store, recipe.build(throughput=True))
            service.search_upload(photos[0], query)  # warm
            bare = []
            started = time.perf_counter()
            for _ in range(2):
                for data in photos:
                    t0 = time.perf_counter()
                    service.search_upload(data, query)
                    bare.append(time.perf_counter() - t0)
            bare_wall = time.perf_counter() - started

        # 2. and 3. the server as its own process
        serve = [BIN / "search", "serve", "--store", db, "--runtime", args.runtime]
        serve += (["--int8"] if args.int8 else []) + args.serve_args
        with _server(serve) as url:
            port = int(url.rsplit(":", 1)[1])
            _clients(port, photos[:4], 1, 1)  # warm the server's thread pool and caches
            one, one_wall = _clients(port, photos, 1, 2)
            before = _batches(httpx.get(url + "/metrics").text)
            many, many_wall = _clients(port, photos, args.clients, 2)
            after = _batches(httpx.get(url + "/metrics").text)
        detected = None
        if args.detector:  # 4. the same server finding the garment in each upload first
            with _server([*serve, "--detector", args.detector]) as url:
                port = int(url.rsplit(":", 1)[1])
                _clients(port, photos[:4], 1, 1)
                detected, detected_wall = _clients(port, photos, 1, 2)

    print(_line("bare (in-process)", bare, bare_wall))
    print(_line("server, 1 client", one, one_wall))
    print(_line(f"server, {args.clients} clients", many, many_wall))
    images, forwards = after[0] - before[0], after[1] - before[1]
    ratio_latency = statistics.median(one) / statistics.median(bare)
    ratio_throughput = (len(many) / many_wall) / (len(one) / one_wall)
    print(
        f"images per forward pass with {args.clients} clients: {images / forwards:.2f} on average"
    )
    print(f"server p50 / bare p50 (1 client): {ratio_latency:.2f}x   (target <= 1.25)")
    print(f"{args.clients}-client / 1-client throughput: {ratio_throughput:.2f}x   (target >= 1.5)")
    if detected is not None:
        print(_line("server, 1 client, detector", detected, detected_wall))
        ratio = statistics.median(detected) / statistics.median(one)
        print(f"1-client p50 with detection / without: {ratio:.2f}x   (target <= 1.5)")


@contextlib.contextmanager
def _server(command: list):
    """`search serve` (COMMAND) as its own process on a free port, once /healthz answers;
    yields its URL."""
    import httpx

    port = _free_port()
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read()}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
