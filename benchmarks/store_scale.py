"""The stores at DeepFashion scale: 226,980 × 512 vectors with realistic payloads.

    python benchmarks/store_scale.py                        # full scale (~6 min on 2 cores)
    python benchmarks/store_scale.py --n 50000 --no-quantize --segment-points 0  # a variant

Vectors are clustered like item embeddings (about 4.5 photos per item around an item centre);
queries are new noisy views of random items, as consumer photos are. Loads the points as
`ingest run` does (its writer: segments indexed while points arrive), then reports, for the
chosen settings (by default ingest's: int8 quantization with rescoring, segments of 50,000) and
for the baseline (float, one build after the last batch) in the same process: the loading
time, the index step after the last batch (the time until the collection is searchable and
fully indexed), reopen time, p50/p95 latency of unfiltered and category-filtered top-20 for
several search-time ef values with recall@20 against exact search; and the same queries
through numpy brute force and qdrant-client's local mode (on the first --local-n points).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace

import numpy as np
from _machine import cpu_name

from search.store import (
    APPROXIMATE,
    SEGMENT_POINTS,
    IndexSettings,
    Points,
    SearchParams,
    open_store,
    point_id,
    search,
)

CATEGORIES = {"TOPS": 0.45, "DRESSES": 0.35, "TROUSERS": 0.20}


def data(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = max(1, int(n / 4.5))
    cats = rng.choice(list(CATEGORIES), size=items, p=list(CATEGORIES.values()))
    cat_centre = {c: rng.standard_normal(dim, dtype=np.float32) for c in CATEGORIES}
    sub_centre = rng.standard_normal((len(CATEGORIES) * 7, dim), dtype=np.float32)
    sub_of = np.array([list(CATEGORIES).index(c) * 7 for c in cats]) + np.arange(items) % 7
    centres = (
        0.6 * np.stack([cat_centre[c] for c in cats])
        + 0.8 * sub_centre[sub_of]
        + rng.standard_normal((items, dim), dtype=np.float32)
    )  # category → sub → item
    owner = rng.integers(0, items, n)
    vectors = centres[owner] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [
        {
            "category": str(cats[o]),
            "subcategory": f"{cats[o]}_sub{o % 7}",
            "item_id": f"id_{o:08d}",
            "source": "shop" if i % 3 else "consumer",
            "split": ("train", "val", "test")[i % 5 % 3],
            "path": f"img/{cats[o]}/{cats[o]}_sub{o % 7}/id_{o:08d}/shop_{i:02d}.jpg",
        }
        for i, o in enumerate(owner)
    ]

    def views(owners):
        q = centres[owners] + 0.6 * rng.standard_normal((len(owners), dim), dtype=np.float32)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    queries = views(rng.integers(0, items, 200))
    tops = np.flatnonzero(cats == "TOPS")  # a photo of a top, searched with --category TOPS
    return vectors, payloads, queries, views(tops[rng.integers(0, len(tops), 200)])


def exact(vectors, payloads, queries, k, category=None):
    mask = None if category is None else np.array([p["category"] == category for p in payloads])
    out = []
    for q in queries:
        scores = vectors @ q
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        out.append(set(np.argpartition(-scores, k)[:k].tolist()))
    return out


def fill(store, vectors, payloads, ids, batch=2048) -> float:
    started = time.perf_counter()
    for s in range(0, len(vectors), batch):
        store.upsert(Points(ids[s : s + batch], vectors[s : s + batch], payloads[s : s + batch]))
    store.flush()
    return time.perf_counter() - started


def latency(store, queries, k, truth, position, filters=None, params=APPROXIMATE, oversample=4):
    """p50/p95 ms of single-query searches and mean recall@k against `truth`."""
    walls, recall = [], []
    for q, expected in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        hits = search(store, q[None], k, filters, params, oversample=oversample)[0]
        walls.append((time.perf_counter() - t0) * 1000)
        recall.append(len({position[h.id] for h in hits} & expected) / k)
    return np.percentile(walls, 50), np.percentile(walls, 95), float(np.mean(recall))


def measure(label, settings, dim, vectors, payloads, ids, position, queries, top_queries, efs):
    """Load through ingest's writer (segments indexed while points arrive, as ingest does),
    then the index step after the last batch (finish), then top-20 latency and recall."""
    from ingest.writer import Writer

    k, tops = 20, {"category": "TOPS"}
    truth, truth_tops = queries[1], top_queries[1]
    with tempfile.TemporaryDirectory() as tmp:
        with open_store(store_dir=tmp, collection="bench") as store:
            store.create(dim, {"model": {}}, settings)
            started = time.perf_counter()
            writer = Writer(store)
            for s in range(0, len(vectors), 256):
                writer(Points(ids[s : s + 256], vectors[s : s + 256], payloads[s : s + 256]))
            writer.close()
            store.flush()
            load = time.perf_counter() - started
            t0 = time.perf_counter()
            store.finish()
            step = time.perf_counter() - t0
        print(
            f"{label}: loading {load:.1f} s (of it indexing segments while points arrive "
            f"{writer.indexing:.1f} s), INDEX STEP AFTER THE LAST BATCH {step:.1f} s"
        )
        t0 = time.perf_counter()
        store = open_store(store_dir=tmp, collection="bench")
        store.count()
        print(f"  reopen: {time.perf_counter() - t0:.2f} s")
        for ef in efs:
            params = SearchParams(hnsw_ef=ef)
            p50, p95, rec = latency(store, queries[0], k, truth, position, params=params)
            f50, f95, frec = latency(
                store, top_queries[0], k, truth_tops, position, tops, params, 4
            )
            print(
                f"  hnsw_ef {ef:4d}: top-20 p50 {p50:5.2f} ms p95 {p95:5.2f} ms recall {rec:.3f}"
                f" | TOPS-filtered p50 {f50:5.2f} ms p95 {f95:5.2f} ms recall {frec:.3f}"
            )
        store.close()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=226_980)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construct", type=int, default=100)
    parser.add_argument("--efs", default="128,256,512")
    parser.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--segment-points", type=int, default=SEGMENT_POINTS)
    parser.add_argument("--no-baseline", action="store_true", help="skip the old settings")
    parser.add_argument("--local-n", type=int, default=20_000)
    args = parser.parse_args()
    k = 20
    print(cpu_name())
    vectors, payloads, queries, top_queries = data(args.n, args.dim)
    ids = [point_id(p["path"] + str(i)) for i, p in enumerate(payloads)]
    position = {pid: i for i, pid in enumerate(ids)}
    truth = exact(vectors, payloads, queries, k)
    truth_tops = exact(vectors, payloads, top_queries, k, "TOPS")
    t0 = time.perf_counter()
    exact(vectors, payloads, queries[:50], k)
    numpy_ms = (time.perf_counter() - t0) / 50 * 1000
    print(f"{args.n} x {args.dim} vectors, m={args.m} ef_construct={args.ef_construct}")
    print(f"numpy brute force: {numpy_ms:.1f} ms per top-20 query")
    efs = [int(v) for v in args.efs.split(",")]
    common = (args.dim, vectors, payloads, ids, position, (queries, truth))
    common += ((top_queries, truth_tops), efs)
    chosen = IndexSettings(
        m=args.m,
        ef_construct=args.ef_construct,
        quantization=args.quantize,
        segment_points=args.segment_points,
    )
    label = (
        f"{'int8 quantization + rescoring' if args.quantize else 'float'}, "
        f"segments of {args.segment_points} indexed while loading"
    )
    step = measure(label, chosen, *common)
    if not args.no_baseline:
        old = IndexSettings(m=args.m, ef_construct=args.ef_construct, quantization=False)
        old = replace(old, segment_points=0)
        base = measure("baseline: float, one build after the last batch", old, *common)
        print(f"index step: {step:.1f} s against {base:.1f} s ({base / step:.1f}x faster)")
    n = min(args.local_n, args.n)
    local_truth = exact(vectors[:n], payloads[:n], queries, k)
    with tempfile.TemporaryDirectory() as tmp:
        local = open_store(url=f"file:{tmp}/local", collection="bench")
        local.create(args.dim, {"model": {}})
        up = fill(local, vectors[:n], payloads[:n], ids[:n])
        p50, _, rec = latency(local, queries[:50], k, local_truth[:50], position)
        local.close()
    print(
        f"qdrant-client local mode at {n} points: upsert {up:.1f} s "
        f"(~{up * args.n / n:.0f} s at {args.n}), top-20 p50 {p50:.1f} ms, recall {rec:.3f}"
    )
    print(
        f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
        f" MiB (holds all vectors; ingest itself streams them, see benchmarks/ingest_memory.py)"
    )


if __name__ == "__main__":
    main()
