"""Collections for the benchmarks: a timed in-process ingest into a fresh embedded store, and a
small collection for the query side made by `ingest run` with an untrained checkpoint of the
given backbone (speed does not depend on the weights)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def make_collection(
    tmp: str, backbone: str, *, img_size: int | None = None, items: int = 12, seed: int = 0
) -> tuple[Path, str]:
    """(the sample's root, the embedded store folder) under `tmp`."""
    from embedder import build_model, save_checkpoint
    from ingest.sample import write_sample

    root = write_sample(f"{tmp}/sample", items=items, seed=seed)
    weights = f"{tmp}/w.safetensors"
    save_checkpoint(build_model(backbone, img_size=img_size, pretrained="none"), weights)
    db = f"{tmp}/db"
    subprocess.run(
        [
            BIN / "ingest",
            "run",
            "--root",
            root,
            "--weights",
            weights,
            "--store",
            db,
            "--no-progress",
        ],
        check=True,
        capture_output=True,
    )
    return root, db


def timed_ingest(encoder, root, tmp: str, **settings) -> tuple[float, object]:
    """Ingest `root` into a new embedded collection under `tmp` with `encoder`; returns (wall
    seconds of run_ingest, its Summary). `settings`: IngestSettings fields."""
    from ingest.plan import read_work
    from ingest.runner import IngestSettings, ensure_collection, run_ingest
    from search.stores import open_store

    work = read_work(root)
    options = IngestSettings(progress=False, report=f"{tmp}/failures.csv", **settings)
    with open_store(store_dir=f"{tmp}/db", collection="bench") as store:
        ensure_collection(store, encoder.spec)
        started = time.perf_counter()
        summary = run_ingest(store, encoder, work, options)
        return time.perf_counter() - started, summary
