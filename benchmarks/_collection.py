"""Collections for the benchmarks: a timed in-process ingest into a fresh embedded store, and a
small collection for the query side made by `ingest run` with an untrained checkpoint of the
given backbone (speed does not depend on the weights)."""

from __future__ import annotations

import os
import shutil
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


def timed_ingest(
    encoder, root, tmp: str, limit: int | None = None, **settings
) -> tuple[float, object]:
    """Ingest `root` (its first `limit` images; a folder or a located DatasetRoot) into a new
    embedded collection under `tmp` with `encoder` (or a ModelRecipe, as the ray engine needs);
    returns (wall seconds of run_ingest, its Summary). `settings`: IngestSettings fields."""
    from embedder.recipe import Built, ModelRecipe
    from ingest.control import IngestSettings
    from ingest.plan import read_work
    from ingest.runner import ensure_collection, run_ingest
    from search.store import open_store

    work = read_work(root, limit=limit)
    options = IngestSettings(progress=False, report=f"{tmp}/failures.csv", **settings)
    with open_store(store_dir=f"{tmp}/db", collection="bench") as store:
        ensure_collection(store, encoder.spec)
        started = time.perf_counter()
        recipe = encoder if isinstance(encoder, ModelRecipe) else Built(encoder)
        summary = run_ingest(store, recipe, work, options)
        return time.perf_counter() - started, summary


def linked_tree(out: str | Path, images: int, *, distinct: int = 300, seed: int = 0) -> Path:
    """A DeepFashion-layout tree of `images` small JPEGs made quickly: `distinct` 64×80 photos
    drawn once, every file a hard link to one of them; list_item, list_bbox and list_eval as
    the real dataset has them (about 6.7 photos an item, ids with gaps). Returns `out`."""
    import numpy as np
    from PIL import Image

    from ingest.sample import SUBCATEGORIES

    out = Path(out)
    rng = np.random.default_rng(seed)
    pool = out / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    for n in range(distinct):
        pixels = rng.integers(0, 256, (80, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(pool / f"{n}.jpg", quality=80)
    folders = [(c, s) for c, subs in SUBCATEGORIES.items() for s in subs]
    items, boxes, pairs, written, n = [], [], [], 0, 0
    while written < images:
        item = f"id_{n + 1 + n // 5000:08d}"
        category, sub = folders[n % len(folders)]
        folder = out / "img" / category / sub / item
        folder.mkdir(parents=True)
        count = min(images - written, int(rng.integers(4, 10)))
        shops = max(1, count // 3)
        names = [f"shop_{k:02d}.jpg" for k in range(1, shops + 1)]
        names += [f"comsumer_{k:02d}.jpg" for k in range(1, count - shops + 1)]
        split = ("train", "train", "train", "val", "test")[n % 5]
        for name in names:
            os.link(pool / f"{int(rng.integers(distinct))}.jpg", folder / name)
            rel = f"img/{category}/{sub}/{item}/{name}"
            boxes.append(f"{rel} 1 {2 if name[0] == 'c' else 1} 1 1 64 80")
        rel = f"img/{category}/{sub}/{item}"
        pairs += [
            f"{rel}/{c} {rel}/{s} {item} {split}"
            for c in names[shops:][:3]
            for s in names[:shops][:2]
        ]
        items.append(item)
        written += count
        n += 1
    shutil.rmtree(pool)  # the links keep the photos
    (out / "Anno").mkdir()
    (out / "Eval").mkdir()
    (out / "Anno/list_item_consumer2shop.txt").write_text(f"{len(items)}\n" + "\n".join(items))
    header = "image_name clothes_type source_type x_1 y_1 x_2 y_2"
    (out / "Anno/list_bbox_consumer2shop.txt").write_text(
        f"{len(boxes)}\n{header}\n" + "\n".join(boxes) + "\n"
    )
    header = "image_pair_name_1 image_pair_name_2 item_id evaluation_status"
    (out / "Eval/list_eval_partition.txt").write_text(
        f"{len(pairs)}\n{header}\n" + "\n".join(pairs) + "\n"
    )
    return out
