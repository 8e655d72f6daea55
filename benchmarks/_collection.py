"""A small collection for the query-side benchmarks: a generated sample embedded by `ingest run`
with an untrained checkpoint of the given backbone (speed does not depend on the weights)."""

from __future__ import annotations

import subprocess
import sys
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
