"""Shared fixtures: a generated DeepFashion-layout tree, a tiny untrained timm model, collections
ingested from them, and the checks and helpers several test modules use."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TINY = {"backbone": "test_resnet", "img_size": 64, "pretrained": "none"}
TINY_ARGS = ["--backbone", "test_resnet", "--img-size", "64", "--pretrained", "none"]


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory):
    """Traced-model copies go to a temporary folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASHION_RETRIEVAL_CACHE", str(tmp_path_factory.mktemp("traced")))
        yield


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """CLI flags for the tiny untrained model."""
    return list(TINY_ARGS)


@pytest.fixture(scope="session")
def ingest_tiny(tiny_args):
    """`ingest run ROOT --store DB` with the tiny model through the CLI; returns the result."""
    from typer.testing import CliRunner

    from ingest.cli import app

    def run(root, db, *extra: str):
        args = [
            "run",
            "--root",
            str(root),
            "--store",
            str(db),
            "--workers",
            "0",
            "--no-progress",
            *tiny_args,
            *extra,
        ]
        return CliRunner().invoke(app, args)

    return run


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    from ingest.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("data") / "sample", items=24, seed=3)


@pytest.fixture(scope="session")
def split_garment(sample_root) -> tuple[str, Path, Path]:
    """(item id, its consumer photos' folder, its shop photos' folder) of a garment the sample
    puts in two subcategory folders, as about 3% of the real dataset's are."""
    folders: dict[str, list[Path]] = {}
    for folder in sorted((sample_root / "img").glob("*/*/id_*")):
        folders.setdefault(folder.name, []).append(folder)
    item, (a, b) = next((i, f) for i, f in folders.items() if len(f) == 2)
    consumer, shop = (a, b) if any(a.glob("comsumer_*.jpg")) else (b, a)
    return item, consumer, shop


@pytest.fixture()
def dataset(sample_root, tmp_path) -> Path:
    """A private copy of the sample that a test may change."""
    return Path(shutil.copytree(sample_root, tmp_path / "sample"))


@pytest.fixture(scope="session")
def tiny_model():
    from embedder import build_model

    return build_model(TINY["backbone"], img_size=TINY["img_size"], pretrained="none")


@pytest.fixture(scope="session")
def encoder(tiny_model):
    from embedder import Encoder

    return Encoder(tiny_model, "cpu", "auto")


@pytest.fixture(scope="session")
def store_contents():
    """A function: store → {point id: (payload, vector)} of every point it holds."""

    def read(store) -> dict:
        return {
            pid: (payload, vec)
            for points in store.scroll(64)
            for pid, payload, vec in zip(points.ids, points.payloads, points.vectors, strict=True)
        }

    return read


@pytest.fixture(scope="session")
def ingest_into():
    """A function: ingest a dataset root into an open store with an encoder, the library way
    (read_work → run_ingest); keyword arguments: limit, shard, and IngestSettings fields."""
    from ingest.control import IngestSettings
    from ingest.plan import read_work
    from ingest.runner import run_ingest

    def run(store, encoder, root, *, limit=None, shard=None, **settings):
        from embedder.recipe import Built, ModelRecipe

        recipe = encoder if isinstance(encoder, ModelRecipe) else Built(encoder)
        work = read_work(root, limit=limit, shard=shard)
        return run_ingest(store, recipe, work, IngestSettings(progress=False, **settings))

    return run


@pytest.fixture(scope="session")
def search_files():
    """A function: the top hits of each query photo through the search service, with a
    caller's encoder (boxes and filters as SearchService.search_files and Query take them)."""
    from search.service import Query, SearchService

    def run(store, encoder, images, *, top=20, boxes=None, filters=None):
        service = SearchService(store, encoder=encoder)
        answers = service.search_files(images, Query(top=top, filters=dict(filters or {})), boxes)
        return [[r.hit for r in answer.results] for answer in answers]

    return run


@pytest.fixture(scope="module")
def ingested(sample_root, tmp_path_factory, ingest_tiny):
    """(store folder, ingest output) of the sample ingested through the CLI, per test module."""
    db = tmp_path_factory.mktemp("cli") / "qdrant_data"
    result = ingest_tiny(sample_root, str(db))
    assert result.exit_code == 0, result.output
    return db, result.output


@pytest.fixture()
def db(sample_root, tmp_path, ingest_tiny) -> Path:
    """A private store folder holding the sample ingested with the tiny model (may be damaged)."""
    db = tmp_path / "db"
    result = ingest_tiny(sample_root, str(db))
    assert result.exit_code == 0, result.output
    return db


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


@pytest.fixture(scope="session")
def store_count():
    """A function: the number of points in an embedded store folder's collection."""
    from search.store import open_store

    def count(db, **kw) -> int:
        with open_store(store_dir=str(db), **kw) as store:
            return store.count()

    return count


@pytest.fixture(scope="session")
def query_photo(sample_root) -> str:
    """A consumer photo of the sample, as a query."""
    return str(sorted(sample_root.rglob("comsumer_01.jpg"))[0])


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A real S3 object store (SeaweedFS `weed mini`) on loopback for the session; stopped
    after it. Its `options` are fsspec keywords, its `env` the AWS_* variables of a CLI."""
    from tests.objectstore import start_seaweed

    store = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield store
    store.stop()


@pytest.fixture(scope="session")
def sample_bucket(seaweed, sample_root) -> str:
    """The sample (the same files as sample_root) in a bucket: its s3:// URL."""
    from embedder.storage import Storage, upload

    seaweed.fs().mkdir("samples")
    upload(str(sample_root), Storage("s3", json.dumps(seaweed.options)), "samples/sample")
    return "s3://samples/sample"


@pytest.fixture(scope="session")
def search_cli():
    """A function: `search ARGS --store DB --top 3` through the CLI runner."""
    from typer.testing import CliRunner

    from search.cli import app

    def search(db, *args):
        return CliRunner().invoke(app, [*args, "--store", str(db), "--top", "3"])

    return search


@pytest.fixture(scope="session")
def one_line_error():
    """A check: the command exited 2 with exactly one `error:` line holding each of `words`."""

    def check(result, *words):
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        error = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(error) == 1, result.output
        for word in words:
            assert word in error[0], error[0]

    return check


@pytest.fixture(scope="session")
def tmpfs():
    """A context manager: a tmpfs of `size` mounted at `where` (root only: the test skips,
    saying why, otherwise)."""

    @contextlib.contextmanager
    def mount(where: Path, size: str):
        if os.geteuid() != 0:
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

    return mount


@pytest.fixture(scope="session")
def live_server():
    """A context manager: `search serve ARGS` as its own process on a free port, once /healthz
    answers; yields (base URL, the process). Stopped (and reaped) on exit."""
    import socket
    import sys
    import time
    import urllib.request

    @contextlib.contextmanager
    def serve(*args: str, env: dict | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [Path(sys.executable).parent / "search", "serve", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"search serve did not start: {proc.stdout.read()}")
                time.sleep(0.3)
        try:
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    return serve
