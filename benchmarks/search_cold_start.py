"""`search` cold start: process start → printed results, with ResNet50 on CPU (target ≤ 2.5 s).

    python benchmarks/search_cold_start.py [--runs 5] [--backbone resnet50] [--detector DET]

Builds a small collection with a ResNet50 checkpoint, then times whole `search` processes
(median of --runs) against the floor of any such process (python importing torch and timm),
`search --help` (must not import torch), and batch mode (Q queries in one process against Q
processes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], runs: int, env: dict | None = None) -> float:
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument(
        "--detector", help="Also a photo from outside the dataset searched garment by garment"
    )
    args = parser.parse_args()
    from _collection import make_collection

    with tempfile.TemporaryDirectory() as tmp:
        root, _db = make_collection(tmp, args.backbone, items=12, seed=0)
        queries = sorted(str(p) for p in root.rglob("comsumer_01.jpg"))[: args.queries]
        one = [
            str(BIN / "search"),
            queries[0],
            "--top",
            "20",
            "--category",
            "TOPS",
            "--store",
            f"{tmp}/db",
        ]
        env = {**os.environ, "FASHION_RETRIEVAL_CACHE": f"{tmp}/traced"}
        floor = timed([sys.executable, "-c", "import torch, timm"], args.runs)
        first = timed(one, 1, env)  # builds the model with timm, then caches a traced copy
        search = timed(one, args.runs, env)
        eager = timed([*one, "--no-traced"], args.runs, env)
        helps = timed([str(BIN / "search"), "--help"], args.runs)
        batch = timed(
            [str(BIN / "search"), *queries, "--top", "20", "--store", f"{tmp}/db"],
            max(1, args.runs // 2),
            env,
        )
        if args.detector:  # a user's photo: outside the dataset, so garment by garment
            outside = f"{tmp}/street.jpg"
            shutil.copyfile(queries[0], outside)
            street = [str(BIN / "search"), outside, "--top", "20", "--store", f"{tmp}/db"]
            timed([*street, "--detector", args.detector], 1, env)  # exports the detector once
            detected = timed([*street, "--detector", args.detector], args.runs, env)
            whole = timed([*street, "--bbox", "none"], args.runs, env)
    print(f"{args.backbone}, CPU, median of {args.runs} runs")
    print(f"python -c 'import torch, timm' (floor):    {floor:6.2f} s")
    print(f"first search (eager timm model, caches a trace): {first:6.2f} s")
    print(
        f"search QUERY --top 20 --category TOPS:      {search:6.2f} s   "
        f"({search / floor:.2f}x the floor; target <= 2.5 s)"
    )
    print(
        f"same with --no-traced (timm every start):   {eager:6.2f} s   "
        f"(traced start is {eager / search:.2f}x faster)"
    )
    print(f"search --help:                              {helps:6.2f} s")
    print(
        f"search with {len(queries)} queries in one process:       {batch:6.2f} s   "
        f"({len(queries) * search / batch:.1f}x faster than {len(queries)} processes)"
    )
    if args.detector:
        print(
            f"outside photo, --bbox none (whole):         {whole:6.2f} s\n"
            f"outside photo, garment by garment (--detector): {detected:6.2f} s   "
            f"({detected / whole:.2f}x whole; target <= 1.2 s)"
        )


if __name__ == "__main__":
    main()
