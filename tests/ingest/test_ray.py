"""`ingest run --engine ray`: the same collection as the local engine, resumable, bad files
reported, a killed worker survived, a killed driver resumed from, writes into a server retried,
no Ray process left behind. Ray runs locally here (2 CPUs, started once for this module); a
cluster cannot be."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
from qdrant_client.http.exceptions import UnexpectedResponse

from embedder.recipe import ModelRecipe
from ingest.plan import read_work
from ingest.ray_engine import to_points, upsert_retrying
from ingest.runner import ensure_collection
from search.store import Points, StoreError, open_store

BIN = Path(sys.executable).parent
FP32 = {"runtime": "torch", "precision": "fp32"}  # the engines compared on the same arithmetic


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _recipe(**how) -> ModelRecipe:
    return ModelRecipe("test_resnet", img_size=64, pretrained="none", **how)


def _ingest(store, recipe, root, ingest_into, **settings):
    ensure_collection(store, recipe.spec)
    return ingest_into(store, recipe, root, batch_size=8, **settings)


def _bad_file(root: Path) -> str:
    """A truncated JPEG in the dataset; its dataset path."""
    photo = sorted((root / "img").rglob("shop_01.jpg"))[0]
    photo.write_bytes(photo.read_bytes()[:300])
    return str(photo.relative_to(root))


@pytest.mark.parametrize("where", ["embedded", "qdrant-client local mode"])
def test_ray_stores_what_the_local_engine_stores(
    ray_session, dataset, tmp_path, ingest_into, store_contents, where
):
    bad = _bad_file(dataset)
    opened = {}
    for engine in ("local", "ray"):
        target = (
            {"store_dir": str(tmp_path / engine)}
            if where == "embedded"
            else {"url": f"file:{tmp_path / engine}"}
        )
        with open_store(**target) as store:
            summary = _ingest(
                store, _recipe(**FP32), dataset, ingest_into, engine=engine,
                report=tmp_path / f"{engine}.csv",
            )  # fmt: skip
            assert [path for path, _ in summary.failures] == [bad]  # reported, not fatal
            opened[engine] = (store_contents(store), store.metadata(), summary.failures)
    (local, local_meta, local_failed), (ray_points, ray_meta, ray_failed) = opened.values()
    assert ray_failed == local_failed  # the same reason
    catalog = read_work(dataset).catalog
    assert (
        set(ray_points)
        == set(local)
        == set(catalog["id"]) - {catalog.loc[catalog["path"] == bad, "id"].item()}
    )
    assert ray_meta == local_meta
    for pid, (payload, vector) in local.items():
        assert ray_points[pid][0] == payload
        assert float(np.dot(ray_points[pid][1], vector)) >= 0.9999
    report = pd.read_csv(tmp_path / "ray.csv")
    assert report["path"].tolist() == [bad]


def test_a_second_ray_run_embeds_nothing(ray_session, sample_root, tmp_path, ingest_into):
    with open_store(store_dir=str(tmp_path / "db")) as store:
        first = _ingest(store, _recipe(), sample_root, ingest_into, engine="ray")
        again = _ingest(store, _recipe(), sample_root, ingest_into, engine="ray")
        assert first.embedded == len(read_work(sample_root).catalog) == store.count()
        assert (again.embedded, again.present) == (0, first.embedded)


def _kill_the_embedder_at_work(killed: list[int], done: threading.Event) -> None:
    """Kill -9 the embedder actor's process while it embeds a batch (Ray titles the process
    `ray::MapWorker(MapBatches(EmbedActor)).submit` then), once."""
    while not done.is_set():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            title = " ".join(proc.info["cmdline"] or [])
            if "EmbedActor" in title and ".submit" in title:
                proc.kill()
                killed.append(proc.info["pid"])
                return
        time.sleep(0.02)


def test_a_killed_worker_still_gives_exactly_the_catalog(
    ray_session, sample_root, tmp_path, ingest_into, store_contents
):
    killed: list[int] = []
    done = threading.Event()
    killer = threading.Thread(target=_kill_the_embedder_at_work, args=(killed, done))
    killer.start()
    try:
        recipe = ModelRecipe("resnet18", img_size=128, pretrained="none", **FP32)
        with open_store(store_dir=str(tmp_path / "db")) as store:
            ensure_collection(store, recipe.spec)
            summary = ingest_into(store, recipe, sample_root, batch_size=2, engine="ray")
            found = store_contents(store)
    finally:
        done.set()
        killer.join()
    assert killed, "the embedder was never seen at work"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    catalog = read_work(sample_root).catalog
    assert set(found) == set(catalog["id"]) and summary.embedded == len(catalog)
    assert not summary.failures
    assert all(np.isclose(np.linalg.norm(v), 1.0, atol=1e-3) for _, v in found.values())


def _ray_processes() -> set[int]:
    names = ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor", "runtime_env")
    out = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if any(name in line for name in names) and proc.status() != psutil.STATUS_ZOMBIE:
            out.add(proc.info["pid"])
    return out


def test_the_command_starts_ray_and_leaves_no_process(sample_root, tmp_path, tiny_args):
    """No cluster given: a local Ray is started for the run and shut down after it."""
    before = _ray_processes()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(
        [BIN / "ingest", "run", "--root", str(sample_root), "--store", str(tmp_path / "db"),
         "--engine", "ray", "--no-progress", *tiny_args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert f"embedded {len(read_work(sample_root).catalog)} " in run.stdout
    assert "ray start" in run.stdout and "Ray (2 CPUs" in run.stdout
    deadline = time.monotonic() + 20
    while (left := _ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [" ".join(psutil.Process(p).cmdline()) for p in left]


def test_a_rerun_after_the_driver_is_killed_embeds_only_what_is_missing(sample_root, tmp_path):
    """`kill -9` of the command mid-run: Ray's processes go with it, and the next run embeds
    exactly the photos the first did not store."""
    before = _ray_processes()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [BIN / "ingest", "run", "--root", str(sample_root), "--store", str(tmp_path / "db"),
            "--engine", "ray", "--backbone", "resnet18", "--img-size", "128",
            "--pretrained", "none", "--batch-size", "2", "--runtime", "torch", "--precision",
            "fp32"]  # fmt: skip
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seen, done = b"", None
    try:
        while chunk := first.stderr.read1(4096):  # the progress bar: kill it part-way
            seen += chunk
            done = re.findall(rb"ingest \(ray\):\s+(\d+)%", seen)
            if done and 5 <= int(done[-1]) <= 80:
                break
    finally:
        first.kill()
        first.wait()
    assert done and 5 <= int(done[-1]) <= 80, seen.decode(errors="replace")[-2000:]
    deadline = time.monotonic() + 90
    while (left := _ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, [" ".join(psutil.Process(p).cmdline()) for p in left]

    again = subprocess.run(
        [*args, "--no-progress"], capture_output=True, text=True, env=env, timeout=300
    )
    assert again.returncode == 0, again.stderr
    total = len(read_work(sample_root).catalog)
    counts = r"seen (\d+), embedded (\d+) .*already present (\d+), failed 0"
    seen_n, embedded, present = map(int, re.search(counts, again.stdout).groups())
    assert seen_n == total and 0 < present < total and embedded == total - present
    assert f"collection now holds {total}" in again.stdout


def test_without_ray_installed_the_engine_names_the_extra(
    sample_root, tmp_path, tiny_args, one_line_error, monkeypatch
):
    from typer.testing import CliRunner

    from ingest.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    result = CliRunner().invoke(
        app,
        ["run", "--root", str(sample_root), "--store", str(tmp_path / "db"), "--engine", "ray",
         *tiny_args],
    )  # fmt: skip
    one_line_error(result, "fashion-retrieval[ray]")


def _failing(client, failures: list[BaseException]):
    """qdrant-client's upsert, failing with each of `failures` before it succeeds."""
    real = client.upsert
    calls = []

    def upsert(*args, **kwargs):
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return real(*args, **kwargs)

    client.upsert = upsert
    return calls


def _points(n: int, dim: int = 8) -> Points:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]
    return Points(ids, vectors, [{"path": f"img/{i}.jpg"} for i in range(n)])


def test_server_writes_are_retried_and_never_duplicated(tmp_path, monkeypatch):
    import ingest.ray_engine as engine

    monkeypatch.setattr(engine, "FIRST_WAIT", 0.01)
    busy = UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers())
    with open_store(url=":memory:", collection="c") as store:
        store.create(8, {})
        calls = _failing(store.client, [busy, httpx.ReadTimeout("timed out")])
        upsert_retrying(store, _points(50))
        assert len(calls) == 3 and store.count() == 50
        upsert_retrying(store, _points(50))  # a retry after a write that landed
        assert store.count() == 50
        _failing(store.client, [busy] * 3)
        with pytest.raises(StoreError, match="50 points could not be written after 3 tries"):
            upsert_retrying(store, _points(50), attempts=3)
        refused = UnexpectedResponse(400, "Bad Request", b"", httpx.Headers())
        calls = _failing(store.client, [refused])
        with pytest.raises(StoreError, match="HTTP 400"):
            upsert_retrying(store, _points(50))
        assert len(calls) == 1  # a request the server refuses is not tried again


def test_writer_tasks_fail_the_run_with_the_count(ray_session, monkeypatch):
    """A server that never answers: Ray's writer tasks give up after their tries and the run
    fails with one line naming how many points were not written."""
    import ingest.ray_engine as engine

    rows = pd.DataFrame(
        {
            "id": _points(6).ids,
            "path": [f"img/{i}.jpg" for i in range(6)],
            "payload": ["{}"] * 6,
            "reason": [""] * 5 + ["cannot decode"],
            "vector": list(_points(6).vectors),
        }
    )
    data = ray_session.data.from_pandas(rows)
    nowhere = {"url": "http://127.0.0.1:9", "api_key": None, "collection": "c"}
    with pytest.raises(StoreError, match=r"^5 points could not be written after 2 tries"):
        engine.write_in_tasks(data, nowhere, attempts=2, first_wait=0.01)


def test_a_batch_becomes_points_and_failures():
    batch = {
        "id": np.array(["a", "b"], dtype=object),
        "path": np.array(["img/a.jpg", "img/b.jpg"], dtype=object),
        "payload": np.array(['{"x": 1}', "{}"], dtype=object),
        "reason": np.array(["", "not an image"], dtype=object),
        "vector": np.eye(2, dtype=np.float32),
    }
    points, failed = to_points(batch)
    assert points.ids == ["a"] and points.payloads == [{"x": 1}]
    assert failed == [("img/b.jpg", "not an image")]
