"""Searched as users send photos: the test split's consumer photos of a dataset, copied outside
it and searched with `search PHOTOS --category C --source shop --json` (the console script, as
a user runs it) in the garment the detector finds, beside the same photos searched whole
(`--bbox none`) and the dataset photos themselves (their annotated box); the detected box's IoU
with the annotated one; and the outfit photos of a street sample (`ingest sample --style
street`: a top above trousers) searched with no category: each garment found must find its own
item.

    python benchmarks/detector_quality.py --root SAMPLE --weights EMB.safetensors \\
        --detector DET.safetensors --store DB

The collection DB is made (`ingest run`) when it does not exist."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import cpu_name  # noqa: E402
from embedder.boxes import box_iou  # noqa: E402
from embedder.catalog import bbox_of, read_catalog  # noqa: E402
from embedder.spec import category_type  # noqa: E402

BIN = Path(sys.executable).parent
TOP = 20


def search(photos: list[str], *args: str) -> list[dict]:
    command = [str(BIN / "search"), *photos, "--json", "--top", str(TOP), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"search failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def first_results(entry: dict) -> tuple[list[dict], list | None]:
    """The results of a query entry (its first garment's, when searched garment by garment)
    and the box searched (None: the annotated box or the whole photo)."""
    if "garments" in entry:
        garment = entry["garments"][0]
        return garment["results"], garment["box"]
    return entry["results"], None


def hits(results: list[dict], item: str) -> tuple[bool, bool]:
    items = [r["item_id"] for r in results]
    return item in items[:5], item in items[:TOP]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", required=True, help="A street sample (ingest sample --style street)"
    )
    parser.add_argument("--weights", required=True, help="The trained embedder")
    parser.add_argument("--detector", required=True, help="The trained detector")
    parser.add_argument("--store", required=True, help="The collection (made if missing)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    root, store = Path(args.root), Path(args.store)
    print(f"machine: {cpu_name()}")
    if not store.exists():
        subprocess.run(
            [str(BIN / "ingest"), "run", "--root", str(root), "--weights", args.weights,
             "--store", str(store), "--no-progress"],
            check=True,
        )  # fmt: skip
    table = read_catalog(root)
    queries = table[(table.split == args.split) & (table.source == "consumer")]
    where = ["--store", str(store)]
    figures: dict[str, dict[str, list]] = {m: {"top5": [], "top20": []} for m in MODES}
    fits = []
    with tempfile.TemporaryDirectory(prefix="outside-") as outside:
        for category, rows in queries.groupby("category"):
            copies = []
            for n, row in enumerate(rows.itertuples(index=False)):
                copy = Path(outside) / f"{category}-{n:04d}.jpg"
                shutil.copyfile(root / row.path, copy)
                copies.append(str(copy))
            filters = ["--category", str(category), "--source", "shop", *where]
            asked = {
                "annotated": search([str(root / p) for p in rows["path"]], *filters),
                "detected": search(copies, *filters, "--detector", args.detector),
                "none": search(copies, *filters, "--bbox", "none"),
            }
            for mode, entries in asked.items():
                for row, entry in zip(rows.itertuples(index=False), entries, strict=True):
                    results, box = first_results(entry)
                    at5, at20 = hits(results, row.item_id)
                    figures[mode]["top5"].append(at5)
                    figures[mode]["top20"].append(at20)
                    if mode == "detected" and (truth := bbox_of(row)) is not None:
                        fits.append(box_iou(box, truth) if box else 0.0)
    print(f"{len(queries)} {args.split} consumer photos searched as users send them (top {TOP}, "
          "--source shop, --category of the photo):")  # fmt: skip
    print(f"{'boxes':<11}{'top-5':>8}{'top-20':>8}")
    for mode in MODES:
        f = figures[mode]
        print(f"{mode:<11}{mean(f['top5']):>8.3f}{mean(f['top20']):>8.3f}")
    print(f"mean IoU of the detected box with the annotated one: {mean(fits):.3f} ({len(fits)})")
    outfits(root, args.detector, where)


MODES = ("annotated", "detected", "none")


def mean(values) -> float:
    return sum(values) / len(values) if values else float("nan")


def outfits(root: Path, detector: str, where: list[str]) -> None:
    """Each outfit photo searched with no category: a garment found over each listed item
    (IoU ≥ 0.5 with its box, of its type) must find that item in its top 20."""
    listing = root / "outfits" / "list_outfits.txt"
    if not listing.is_file():
        print("no outfit photos (not a street sample)")
        return
    items: dict[str, list] = {}
    for line in listing.read_text().splitlines()[2:]:
        name, item, kind, *box = line.split()
        items.setdefault(name, []).append((item, int(kind), [int(v) for v in box]))
    names = sorted(items)
    entries = search([str(root / "outfits" / n) for n in names], "--source", "shop",
                     "--detector", detector, *where)  # fmt: skip
    both = 0
    for name, entry in zip(names, entries, strict=True):
        found = entry.get("garments", [])
        ok = []
        for item, kind, box in items[name]:
            kind_name = category_type({1: "TOPS", 2: "TROUSERS", 3: "DRESSES"}[kind])
            over = [g for g in found if g["box"] and box_iou(g["box"], box) >= 0.5]
            mine = [g for g in over if g["type"] == kind_name] or over
            ok.append(any(item in [r["item_id"] for r in g["results"]] for g in mine[:1]))
        both += all(ok)
        shown = ", ".join(f"{g['type']} {g['score']:.2f}" for g in found)
        print(f"  {name}: {len(found)} garment(s) [{shown}]; own items found: {ok}")
    print(f"outfit photos whose two garments each find their own item (top {TOP}): "
          f"{both} of {len(names)}")  # fmt: skip


if __name__ == "__main__":
    main()
