"""`ingest run` at the real dataset's size and at 10× fewer files, side by side: a first ingest,
a rerun with nothing to embed, and a rerun after 1,000 new photos; wall time, stages and peak
memory of each, so that the growth with the catalog shows.

    python benchmarks/ingest_memory.py                 # 22,698 and 226,980 files
    python benchmarks/ingest_memory.py --sizes 2000,20000 --keep /tmp/trees

The trees are DeepFashion-layout hard links to a few hundred distinct 64×80 photos (quick to
make, as many files as the real set); the model is an untrained resnet18 checkpoint at 32 px
(`--weights`, as a real deployment runs), so that the model is not the story. Each command runs
as its own process; its resident memory is sampled every 100 ms and split into anonymous memory
(Python, our tables, torch's and the engine's heaps: "ours"), the pages of the embedded store's
own memory-mapped files (segments, WAL, index: "the store's files") and the rest (the code of
shared libraries: torch alone maps some 400 MB).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _collection import linked_tree

BIN = Path(sys.executable).parent
NEW_PHOTOS = 1000


def resident_kb(pid: int, store: str) -> tuple[int, int, int]:
    """(resident kB of the process, of it anonymous, of it in mappings of files under
    `store`)."""
    total = anonymous = mapped = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line else ""
        if not key.endswith(":"):  # a mapping's header: address range, flags, ..., path
            inside = store in line
        elif key == "Rss:":
            kb = int(line.split()[1])
            total += kb
            mapped += kb if inside else 0
        elif key == "Anonymous:":
            anonymous += int(line.split()[1])
    return total, anonymous, mapped


def run(args: list[str], store: str) -> dict:
    """Run a console script; wall seconds, its summary's stages, peak RSS in MiB split into
    ours and the store's files, and the peak before its index build started."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int, int, int]] = []

    def sample() -> None:
        while proc.poll() is None:
            try:
                samples.append((time.perf_counter(), *resident_kb(proc.pid, store)))
            except (OSError, ValueError):
                pass
            time.sleep(0.1)

    started = time.perf_counter()
    watcher = threading.Thread(target=sample)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed: {err.strip().splitlines()[-1]}")
    stages_text = out.split("stages:")[1].split(";")[0]
    stages = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)s", stages_text)}
    embedded = int(re.search(r"embedded (\d+)", out).group(1))
    index_from = started + wall - stages.get("index", 0.0) - 0.5
    before = [s for s in samples if s[0] < index_from] or samples
    mib = lambda kb: kb / 1024  # noqa: E731
    peak = max(samples, key=lambda s: s[1])
    return {
        "wall": wall,
        "stages": stages,
        "embedded": embedded,
        "peak": mib(peak[1]),
        "ours": mib(max(s[2] for s in samples)),
        "store": mib(max(s[3] for s in samples)),
        "before_index": mib(max(s[1] for s in before)),
    }


def add_photos(root: Path, count: int) -> None:
    """`count` new photos (hard links to existing ones) in new garment folders."""
    existing = sorted((root / "img").rglob("shop_01.jpg"))
    for n in range(count):
        folder = root / "img" / "TOPS" / "New_Arrivals" / f"id_{90_000_000 + n // 5:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(existing[n % len(existing)], folder / f"shop_{n % 5 + 1:02d}.jpg")


def measure(size: int, tmp: Path, model: list[str]) -> dict:
    tree = tmp / f"tree{size}"
    if not (tree / "img").is_dir():
        linked_tree(tree, size)
    db = tmp / f"db{size}{'-named' if '--backbone' in model else ''}"
    cmd = [str(BIN / "ingest"), "run", "--root", str(tree), "--store", str(db)]
    cmd += [*model, "--batch-size", "128", "--no-progress"]
    first = run(cmd, str(db))
    rerun = run(cmd, str(db))
    again = run(cmd, str(db))  # the state the first rerun left, the catalog cache warm
    add_photos(tree, NEW_PHOTOS)
    added = run(cmd, str(db))
    return {"first": first, "rerun": rerun, "again": again, "added": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="22698,226980")
    parser.add_argument("--keep", type=Path, help="make the trees and stores here, and keep them")
    parser.add_argument(
        "--named", action="store_true",
        help="the model by its timm name (--backbone resnet18 --img-size 32 --pretrained none), "
        "not a weights file: a rerun then learns the model from the collection's record",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        weights = str(tmp / "resnet18-32px.safetensors")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from embedder import build_model, save_checkpoint; save_checkpoint("
                f"build_model('resnet18', img_size=32, pretrained='none'), {weights!r})",
            ],
            check=True,
        )
        model = ["--weights", weights]
        if args.named:
            model = ["--backbone", "resnet18", "--img-size", "32", "--pretrained", "none"]
        results = {size: measure(size, tmp, model) for size in sizes}
    print(
        f"{os.cpu_count()} cores; resnet18 32 px ({'by name' if args.named else 'weights file'})"
        ", batch 128, embedded store"
    )
    rows = [
        ("first ingest: wall", "first", lambda r: f"{r['wall']:.1f} s"),
        ("  peak RSS", "first", lambda r: f"{r['peak']:.0f} MiB"),
        ("  ours (anonymous), max", "first", lambda r: f"{r['ours']:.0f} MiB"),
        ("  the store's mapped files, max", "first", lambda r: f"{r['store']:.0f} MiB"),
        ("  peak before the index build", "first", lambda r: f"{r['before_index']:.0f} MiB"),
        ("rerun, nothing to embed: wall", "rerun", lambda r: f"{r['wall']:.1f} s"),
        ("  catalog (walk, labels, ids)", "rerun", lambda r: f"{r['stages']['catalog']:.2f} s"),
        ("  plan (stored state, diff)", "rerun", lambda r: f"{r['stages']['plan']:.2f} s"),
        ("  peak RSS", "rerun", lambda r: f"{r['peak']:.0f} MiB"),
        ("rerun again: wall", "again", lambda r: f"{r['wall']:.1f} s"),
        ("  catalog / plan", "again", lambda r: stage_times(r, "catalog", "plan")),
        ("  peak RSS", "again", lambda r: f"{r['peak']:.0f} MiB"),
        (f"+{NEW_PHOTOS} photos: embedded", "added", lambda r: f"{r['embedded']}"),
        ("  wall", "added", lambda r: f"{r['wall']:.1f} s"),
        ("  non-model time (wall - model)", "added", lambda r: non_model(r)),
        ("  peak RSS", "added", lambda r: f"{r['peak']:.0f} MiB"),
    ]
    print(f"{'':36}" + "".join(f"{size:>22,}" for size in sizes))
    for label, run_name, cell in rows:
        print(f"{label:36}" + "".join(f"{cell(results[s][run_name]):>22}" for s in sizes))
    for size in sizes:
        for name in ("first", "rerun", "again", "added"):
            stages = results[size][name]["stages"]
            print(
                f"stages at {size:,}, {name}: "
                + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items())
            )
    small, large = results[sizes[0]], results[sizes[-1]]
    print(
        f"growth for {sizes[-1] / sizes[0]:.0f}x the files: rerun wall "
        f"{large['rerun']['wall'] / small['rerun']['wall']:.1f}x, rerun peak RSS "
        f"{large['rerun']['peak'] / small['rerun']['peak']:.2f}x, first-ingest ours "
        f"{large['first']['ours'] / small['first']['ours']:.2f}x"
    )
    print(
        "targets (226,980 files): rerun <= 4 s, rerun peak <= 1.2 GB, first "
        "ingest peak <= 2.0 GB or ours <= 1.0 GB, +1,000 photos: non-model time <= 10 s"
    )


def stage_times(r: dict, *names: str) -> str:
    return " / ".join(f"{r['stages'][n]:.2f} s" for n in names)


def non_model(r: dict) -> str:
    return f"{r['wall'] - r['stages'].get('model', 0.0):.1f} s"


if __name__ == "__main__":
    main()
