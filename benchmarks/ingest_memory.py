"""Peak RSS of `ingest run` at two dataset sizes: it streams, so memory must not grow with N.

    python benchmarks/ingest_memory.py [--items 100,400]

Runs the real console script under /usr/bin/time (GNU time, "%M" = peak resident KB of the
main process) on generated samples of each size, embedded store, resnet18 at 112 px to keep it
short; prints peak RSS per size and the ratio largest/smallest (a streaming ingest stays ≈ 1).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from ingest.sample import write_sample

BIN = Path(sys.executable).parent


def peak_rss_mb(root: Path, db: Path) -> tuple[float, str]:
    out = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "PEAK %M",
            str(BIN / "ingest"),
            "run",
            "--root",
            str(root),
            "--store",
            str(db),
            "--backbone",
            "resnet18",
            "--img-size",
            "112",
            "--pretrained",
            "none",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = next(line for line in out.stderr.splitlines() if line.startswith("PEAK"))
    summary = next(line for line in out.stdout.splitlines() if line.startswith("seen"))
    return int(peak.split()[1]) / 1024, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="100,400")
    args = parser.parse_args()
    sizes = [int(v) for v in args.items.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for items in sizes:
            root = write_sample(f"{tmp}/s{items}", items=items, seed=0)
            mb, summary = peak_rss_mb(root, Path(tmp) / f"db{items}")
            results.append(mb)
            print(f"{items:6d} items: peak RSS {mb:7.0f} MiB   ({summary})")
    print(
        f"peak RSS ratio largest/smallest: {results[-1] / results[0]:.2f} "
        f"for {sizes[-1] / sizes[0]:.0f}x the images"
    )


if __name__ == "__main__":
    main()
