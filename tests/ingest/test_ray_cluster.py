"""`ingest run --engine ray` on a Ray cluster of three nodes (Ray's own multi-node harness,
ray.cluster_utils.Cluster: a head and two worker nodes, each its own raylet and object store,
in one machine), the photos only in an object store (SeaweedFS): the embedder actors spread
over the nodes, every node reads the bucket itself, and losing a worker node mid-run still ends
with exactly the catalog in the collection. A cluster of several machines cannot run here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from embedder.storage import Storage, upload

INGEST = str(Path(sys.executable).parent / "ingest")
TINY = ["--backbone", "test_resnet", "--img-size", "64", "--pretrained", "none"]
NODE_CPUS = 2  # logical CPUs per node: an embedder actor (1) and decode tasks (0.5 each)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "object_store_memory": 200 * 2**20},
    )
    workers = [
        nodes.add_node(num_cpus=NODE_CPUS, object_store_memory=200 * 2**20) for _ in range(2)
    ]
    nodes.wait_for_nodes()
    yield nodes, workers
    nodes.shutdown()


@pytest.fixture(scope="module")
def bucket_dataset(seaweed, tmp_path_factory) -> tuple[str, int]:
    """A dataset that exists only in the bucket (its local drawing is deleted): URL, photos."""
    from ingest.sample import write_sample

    folder = tmp_path_factory.mktemp("ray-bucket") / "ds"
    write_sample(folder, items=90, seed=4)
    photos = len(list(folder.rglob("*.jpg")))
    seaweed.fs().mkdir("cluster")
    upload(str(folder), Storage("s3", json.dumps(seaweed.options)), "cluster/ds")
    import shutil

    shutil.rmtree(folder)  # no shared disk: the bucket is the only copy
    return "s3://cluster/ds", photos


def ingest_args(url: str, db: Path, address: str, seaweed) -> list[str]:
    options = [f"endpoint_url={seaweed.endpoint}", "key=testkey", "secret=testsecret"]
    return [
        INGEST, "run", "--root", url, "--store", str(db), "--engine", "ray",
        "--ray-address", address, "--batch-size", "8",
        *(arg for o in options for arg in ("--storage-option", o)), *TINY,
    ]  # fmt: skip


def stored_ids(db: Path) -> list[str]:
    from search.store import open_store

    with open_store(store_dir=str(db)) as store:
        return [pid for points in store.scroll(256, vectors=False) for pid in points.ids]


def catalog_ids(url: str, seaweed) -> set[str]:
    from ingest.plan import read_work

    return set(read_work(url, storage_options=seaweed.options).catalog["id"])


def test_actors_spread_over_the_nodes_and_read_the_bucket(
    cluster, bucket_dataset, seaweed, tmp_path
):
    nodes, _ = cluster
    assert len(nodes.list_all_nodes()) == 3  # three raylets, not one node with more CPUs
    url, photos = bucket_dataset
    db = tmp_path / "db"
    run = subprocess.run(
        [*ingest_args(url, db, nodes.address, seaweed), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"seen {photos}, embedded {photos} (0 changed)" in run.stdout, run.stdout
    assert "3 embedder actor(s) on cpu" in run.stdout
    spread = re.search(r"the actors embedded on (\d) node\(s\)", run.stdout)
    assert spread and int(spread.group(1)) == 3, run.stdout  # every node embedded
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == photos and set(ids) == catalog_ids(url, seaweed)


def test_losing_a_worker_node_mid_run_still_stores_exactly_the_catalog(
    cluster, bucket_dataset, seaweed, tmp_path
):
    """A worker node removed (its raylet, workers and object store gone) once the first
    batches are stored: Ray restarts the lost actor and retries the lost tasks elsewhere; the
    run ends without a failure, the collection holds each catalog photo once."""
    nodes, workers = cluster
    url, photos = bucket_dataset
    db = tmp_path / "db"
    process = subprocess.Popen(
        ingest_args(url, db, nodes.address, seaweed),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err: list[str] = []
    removed = threading.Event()

    def watch() -> None:  # the progress bar: remove a node once some photos are stored
        buffer = ""
        while chunk := process.stderr.read(1):
            buffer += chunk
            err.append(chunk)
            if not removed.is_set() and _stored_so_far(buffer) >= 16:
                nodes.remove_node(workers[0])
                removed.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stop = threading.Timer(600, process.kill)  # a run that hangs fails, not the whole suite
    stop.start()
    try:
        out = process.stdout.read()  # the watcher alone reads stderr
        process.wait()
    finally:
        stop.cancel()
        process.kill()
    watcher.join(10)
    assert removed.is_set(), "".join(err)[-3000:]
    assert process.returncode == 0, "".join(err)[-3000:]
    assert _stored_so_far("".join(err)) == photos
    assert f"seen {photos}, embedded {photos} (0 changed)" in out, out  # nothing written twice
    assert "failed 0" in out
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == photos and set(ids) == catalog_ids(url, seaweed)
    alive = [n for n in _ray_nodes(nodes.address) if n["Alive"]]
    assert len(alive) == 2


def _stored_so_far(progress: str) -> int:
    """The last count the progress bar showed ('ingest (ray):  40%|...| 120/300')."""
    counts = re.findall(r"\| *(\d+)/\d+ ", progress)
    return int(counts[-1]) if counts else 0


def _ray_nodes(address: str) -> list[dict]:
    probe = subprocess.run(
        [sys.executable, "-c",
         f"import ray, json; ray.init(address={address!r}, log_to_driver=False); "
         "print(json.dumps([{'Alive': n['Alive']} for n in ray.nodes()]))"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout.strip().splitlines()[-1])
