"""The same generated tree through both ingest engines in one run: `--engine local` (this
process, its reader processes) and `--engine ray` (Ray Data: decode tasks, embedder actors,
the driver's writer for the embedded store). Prints images/s of each, the ratio, and Ray's
start-up separately.

Each engine ingests the tree's first quarter and the whole tree into fresh collections; the
steady rate is the difference in images over the difference in wall time, which leaves out
what every run pays once (Ray's actors starting, the model being built).

    python benchmarks/ray_ingest.py                     # resnet18 128 px, ~2,200 images
    python benchmarks/ray_ingest.py --backbone resnet50 --img-size 224
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from _collection import timed_ingest
from _machine import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--items", type=int, default=600, help="garments (~3.7 photos each)")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--actors", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each engine (best kept)")
    args = parser.parse_args()

    import ray

    from embedder.recipe import ModelRecipe
    from ingest.plan import read_work
    from ingest.sample import write_sample

    tmp = tempfile.mkdtemp(prefix="ray-ingest-")
    root = write_sample(f"{tmp}/sample", items=args.items, seed=0)
    recipe = ModelRecipe(
        args.backbone, img_size=args.img_size, pretrained="none", runtime=args.runtime
    )
    recipe.build()  # the exported model cached before either engine is timed
    print(
        f"{cpu_name()}; {args.backbone} {args.img_size}px, "
        f"runtime {args.runtime}, batch {args.batch_size}"
    )

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0

    images = len(read_work(root).catalog)
    sizes = (images // 4, images)
    best: dict[tuple[str, int], tuple[float, object]] = {}
    for n in range(args.repeat):
        for engine in ("local", "ray"):
            for size in sizes:
                extra = {"actors": args.actors} if engine == "ray" else {}
                wall, summary = timed_ingest(
                    recipe,
                    root,
                    f"{tmp}/{engine}-{size}-{n}",
                    limit=size,
                    engine=engine,
                    batch_size=args.batch_size,
                    **extra,
                )
                if (engine, size) not in best or wall < best[engine, size][0]:
                    best[engine, size] = (wall, summary)
    ray.shutdown()

    print(f"{sizes[0]} and {images} images, best of {args.repeat} runs each (whole run_ingest)")
    print(f"  Ray start-up (ray.init, once per command): {ray_start:.1f} s")
    steady = {}
    for engine in ("local", "ray"):
        (small, _), (whole, summary) = best[engine, sizes[0]], best[engine, sizes[1]]
        steady[engine] = (sizes[1] - sizes[0]) / (whole - small)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary.seconds.items())
        print(
            f"  {engine:5s}  steady {steady[engine]:7.1f} img/s; whole run {images / whole:6.1f} "
            f"img/s ({whole:.1f} s: {stages})"
        )
        print(f"         {summary.runtime}")
    print(
        f"  ray / local: steady {steady['ray'] / steady['local']:.2f}x (target >= 0.8 on 2 cores)"
        f"; whole run {best['local', images][0] / best['ray', images][0]:.2f}x"
    )


if __name__ == "__main__":
    main()
