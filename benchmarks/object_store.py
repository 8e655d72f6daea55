"""Photos in an object store against the same photos on the local disk, in one run: SeaweedFS
(`weed mini`, the tests' object store) on loopback, S3 API through s3fs.

1. `ingest run` of the same generated tree (~2,200 photos) from the local disk and from the
   bucket, with both engines (local: reader processes; ray: Ray Data decode tasks), into fresh
   collections: images/s and the ratio bucket / local per engine (target ≥ 0.8×).
2. The catalog (`read_catalog`: one listing of the bucket against one walk of the folder) at
   22,698 keys and, with --keys 22698,226980, at the real dataset's 226,980 (uploading that
   many objects takes minutes).

    python benchmarks/object_store.py
    python benchmarks/object_store.py --keys 22698,226980 --skip-ingest
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _collection import linked_tree, timed_ingest
from _machine import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.objectstore: SeaweedFS


def best_of(n: int, fn):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--items", type=int, default=600, help="garments (~3.7 photos each)")
    parser.add_argument("--keys", default="22698", help="catalog sizes to list, comma-separated")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from embedder.catalog import read_catalog
    from embedder.storage import Storage, upload
    from tests.objectstore import start_seaweed

    tmp = Path(tempfile.mkdtemp(prefix="object-store-"))
    seaweed = start_seaweed(tmp / "seaweed")
    storage = Storage("s3", json.dumps(seaweed.options))
    fs = seaweed.fs()
    fs.mkdir("bench")
    print(f"{cpu_name()}; SeaweedFS S3 on loopback ({seaweed.endpoint})")
    try:
        if not args.skip_ingest:
            ingest_figures(args, tmp, seaweed, storage)
        for keys in (int(k) for k in args.keys.split(",")):
            tree = linked_tree(tmp / f"tree-{keys}", keys)
            t0 = time.perf_counter()
            upload(str(tree), storage, f"bench/tree-{keys}")
            uploaded = time.perf_counter() - t0
            local, table = best_of(args.repeat, lambda t=tree: read_catalog(t))
            url = f"s3://bench/tree-{keys}"
            remote, listed = best_of(
                args.repeat, lambda u=url: read_catalog(_root(u, seaweed.options))
            )
            same = table[["path", "split", "x1"]].equals(listed[["path", "split", "x1"]])
            print(
                f"catalog of {len(table)} photos: local walk {local:.2f} s, bucket listing "
                f"{remote:.2f} s ({remote / local:.1f}x the walk; same table: {same}); "
                f"upload {uploaded:.0f} s"
            )
    finally:
        seaweed.stop()


def _root(url: str, options: dict):
    from embedder.catalog import locate

    return locate(url, options)


def ingest_figures(args, tmp: Path, seaweed, storage) -> None:
    from embedder.recipe import ModelRecipe
    from embedder.storage import upload
    from ingest.plan import read_work
    from ingest.sample import write_sample

    root = write_sample(tmp / "sample", items=args.items, seed=0)
    upload(str(root), storage, "bench/sample")
    where = _root("s3://bench/sample", seaweed.options)
    images = len(read_work(root).catalog)
    recipe = ModelRecipe(args.backbone, img_size=args.img_size, pretrained="none")
    encoder = recipe.build()  # the exported model cached before anything is timed
    print(f"ingest of {images} photos, {args.backbone} {args.img_size}px ({encoder.describe()})")
    engines = args.engines.split(",")
    if "ray" in engines:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    for engine in engines:
        walls = {}
        for name, source in (("local disk", root), ("bucket", where)):
            runs = [
                timed_ingest(
                    recipe if engine == "ray" else encoder,
                    source,
                    str(tmp / f"{engine}-{name}-{n}".replace(" ", "-")),
                    engine=engine,
                )
                for n in range(args.repeat)
            ]
            wall, summary = min(runs, key=lambda r: r[0])
            assert summary.embedded == images and summary.failed == 0, summary.lines()
            walls[name] = wall
            print(f"  {engine:5s} from the {name:10s}: {images / wall:6.1f} img/s ({wall:.1f} s)")
        ratio = walls["local disk"] / walls["bucket"]
        print(f"  {engine:5s} bucket / local disk: {ratio:.2f}x")
    if "ray" in engines:
        ray.shutdown()


if __name__ == "__main__":
    main()
