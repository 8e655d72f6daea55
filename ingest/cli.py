"""`ingest`: generate a sample dataset, embed a dataset into a collection, publish it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from embedder._cli import (
    Device,
    Int8,
    Precision,
    Runtime,
    Verbose,
    clean_errors,
    echo,
    setup_logging,
)
from embedder.choices import Decode, Engine
from search.options import Collection, QdrantUrl, StoreDir, open_from
from search.store.schema import DEFAULT_COLLECTION

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Move a DeepFashion-layout image tree into a Qdrant collection.",
)


ImageUrl = Annotated[
    str | None,
    typer.Option(
        help="Base URL of the web app's images, e.g. http://HOST:8000/images/: each point gets "
        "image_url = BASE<point id>.jpg, which Qdrant's dashboard shows as a picture.",
        show_default=False,
    ),
]


def _check_writable(path: Path, what: str) -> None:
    """Found before the work, not after it: a file that could not be written at the end."""
    folder = path.parent if str(path.parent) else Path(".")
    ok = (
        (path.is_file() and os.access(path, os.W_OK))
        if path.exists()
        else (folder.is_dir() and os.access(folder, os.W_OK))
    )
    if not ok:
        raise ValueError(f"cannot write {what} {str(path)!r}: not a writable file or folder")


class Share(tuple):
    """K of N: this worker's share of the dataset."""


def parse_shard(text: str) -> Share:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise typer.BadParameter("--shard takes K/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise typer.BadParameter(f"--shard {text}: K must be between 1 and N")
    return Share((k, n))


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset into.")],
    items: Annotated[int, typer.Option(min=1, help="Number of garments (items).")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same files.")] = 0,
    processes: Annotated[int, typer.Option(min=1, help="Drawing processes.")] = 1,
    verbose: Verbose = False,
) -> None:
    """Write a generated dataset in DeepFashion consumer-to-shop layout: img/ with shop and
    'comsumer' photos of each item, Anno/list_bbox_consumer2shop.txt and
    Eval/list_eval_partition.txt."""
    setup_logging(verbose)
    with clean_errors():
        from ingest.sample import write_sample

        write_sample(out, items=items, seed=seed, processes=processes)
        images = sum(1 for _ in (out / "img").rglob("*.jpg"))
        echo(f"wrote {items} items, {images} images to {out}")


@app.command()
def run(
    root: Annotated[
        Path, typer.Option(help="Dataset folder, its img/ folder, or any image folder.")
    ],
    weights: Annotated[
        Path | None, typer.Option(help="Trained checkpoint (.safetensors from `embedder train`).")
    ] = None,
    pretrained: Annotated[
        str,
        typer.Option(
            help="Without --weights: 'default' (timm's ImageNet weights, needs the network), "
            "a timm "
            "tag, or 'none' for an untrained model."
        ),
    ] = "default",
    backbone: Annotated[str, typer.Option(help="timm backbone, without --weights.")] = "resnet50",
    img_size: Annotated[
        int | None, typer.Option(help="Input size, without --weights [default: the backbone's].")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per forward pass [default: 32 on CPU, 256 on CUDA]."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Reader processes, overlapping decode with the model [default: 1 on CPU, "
            "up to 8 on CUDA].",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N images.")] = None,
    shard: Annotated[
        Share | None,
        typer.Option(
            parser=parse_shard,
            metavar="K/N",
            help="K/N: ingest only share K of N (disjoint, deterministic), for parallel workers.",
        ),
    ] = None,
    recreate: Annotated[bool, typer.Option(help="Drop and rebuild the collection.")] = False,
    report: Annotated[
        Path, typer.Option(help="Where failed files and reasons are written.")
    ] = Path("ingest-failures.csv"),
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any file failed.")] = False,
    prune: Annotated[
        bool, typer.Option(help="Delete points whose image files are gone from ROOT.")
    ] = False,
    quantize: Annotated[
        bool, typer.Option(help="int8 scalar quantization (with rescoring) on a new collection.")
    ] = False,
    hnsw_m: Annotated[int, typer.Option(help="HNSW m of a new collection.")] = 16,
    ef_construct: Annotated[int, typer.Option(help="HNSW ef_construct of a new collection.")] = 100,
    hnsw_ef: Annotated[
        int, typer.Option(help="Search-time HNSW ef recorded with a new collection.")
    ] = 512,
    shard_number: Annotated[
        int | None, typer.Option(min=1, help="Server: shards of a new collection (cluster).")
    ] = None,
    replication_factor: Annotated[
        int | None, typer.Option(min=1, help="Server: copies of each shard (cluster).")
    ] = None,
    write_consistency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Server: copies that must acknowledge a write before it counts (at most "
            "--replication-factor).",
        ),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            help="local: this process and its readers; ray: Ray Data across the cluster at "
            "--ray-address (decode tasks, one embedder actor per GPU, parallel writes to a "
            "server). Needs the ray extra."
        ),
    ] = Engine.local,
    ray_address: Annotated[
        str | None,
        typer.Option(
            envvar="RAY_ADDRESS",
            help="With --engine ray: the cluster (ray://HOST:10001 or HOST:6379) [default: a "
            "Ray started for the run with this machine's cores and GPUs].",
            show_default=False,
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --engine ray: embedder actors [default: one per GPU; without GPUs one "
            "per node].",
        ),
    ] = None,
    store: StoreDir = None,
    qdrant_url: QdrantUrl = None,
    collection: Collection = DEFAULT_COLLECTION,
    device: Device = "auto",
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    int8: Int8 = False,
    calibration: Annotated[
        Path | None,
        typer.Option(help="With --int8: photos to calibrate on [default: a sample of ROOT]."),
    ] = None,
    decode: Annotated[
        Decode,
        typer.Option(
            help="cpu: workers decode; device: workers read, JPEGs decode on the GPU (nvjpeg)."
        ),
    ] = Decode.cpu,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile", help="torch.compile the model: ~30 s to start, then ~1.3x faster."
        ),
    ] = False,
    image_url: ImageUrl = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Verbose = False,
) -> None:
    """Embed every image under ROOT and upsert it with its payload (category, subcategory,
    item_id, source, split, path). Resumable: rerun after a crash or with new files and only
    missing or changed images are embedded."""
    setup_logging(verbose)
    with clean_errors():
        from embedder.recipe import EncoderRecipe
        from ingest.control import IngestSettings
        from ingest.plan import check_image_url, read_work
        from ingest.runner import ensure_collection, run_ingest
        from search.store import IndexSettings as Index

        _check_writable(report, "the failure report (--report)")
        options = IngestSettings(
            batch_size=batch_size,
            workers=workers,
            decode=decode,
            report=report,
            progress=progress,
            prune=prune,
            image_base=check_image_url(image_url),
            engine=engine,
            ray_address=ray_address,
            actors=actors,
        )
        # the catalog first: a bad root fails before a model is built or a collection made
        work = read_work(root, limit=limit, shard=tuple(shard) if shard else None)
        # the model only when something is to be embedded; a checkpoint's spec needs no torch
        recipe = EncoderRecipe(
            backbone,
            img_size=img_size,
            pretrained=pretrained,
            weights=str(weights) if weights else None,
            device=device,
            precision=precision,
            compile=compile,
            runtime=runtime,
            int8=int8,
            calibration=str(calibration or work.base),
        )
        spec = recipe.spec
        index = Index(
            m=hnsw_m,
            ef_construct=ef_construct,
            hnsw_ef=hnsw_ef,
            quantization=quantize,
            shard_number=shard_number,
            replication_factor=replication_factor,
            write_consistency=write_consistency,
        )
        with open_from(store, qdrant_url, collection) as db:
            ensure_collection(
                db,
                spec,
                weights_file=str(weights) if weights else None,
                recreate=recreate,
                settings=index,
                root=str(work.base),
                encoded_by=recipe.describe(),
            )
            echo(
                f"ingest {work.base} → {db.describe()} collection {collection!r} "
                f"({spec.backbone}, weights {spec.weights})"
            )
            try:
                summary = run_ingest(db, recipe, work, options)
            except KeyboardInterrupt:
                typer.echo(
                    "interrupted: what was embedded is stored; rerun the same command to continue",
                    err=True,
                )
                raise typer.Exit(130) from None
        for line in summary.lines():
            echo(line)
        if strict and summary.failed:
            raise typer.Exit(1)


@app.command()
def publish(
    to: Annotated[
        str, typer.Option("--to", help="Qdrant server URL (API key from QDRANT_API_KEY).")
    ],
    store: StoreDir = None,
    collection: Collection = DEFAULT_COLLECTION,
    target_collection: Annotated[
        str | None, typer.Option(help="Name on the server [default: same].")
    ] = None,
    recreate: Annotated[bool, typer.Option(help="Replace the server collection.")] = False,
    image_url: ImageUrl = None,
    verbose: Verbose = False,
) -> None:
    """Copy an embedded collection to a Qdrant server (vectors, payloads, indexes, model
    metadata) without re-embedding, e.g. to inspect it in the dashboard."""
    setup_logging(verbose)
    with clean_errors():
        from tqdm import tqdm

        from ingest.plan import check_image_url
        from ingest.transfer import copy_collection
        from search.store import open_store

        image_base = check_image_url(image_url)
        with (
            open_from(store, None, collection, read_only=True) as source,
            open_store(url=to, collection=target_collection or collection) as target,
        ):
            total = source.require_metadata() and source.count()
            with tqdm(total=total, unit="pt", desc="publish") as bar:
                copied = copy_collection(
                    source, target, recreate=recreate, progress=bar.update, image_base=image_base
                )
            echo(
                f"published {copied} points to {target.describe()} collection {target.collection!r}"
            )


@app.command()
def snapshot(
    out: Annotated[Path, typer.Option(help="Snapshot file to write (a tar).")],
    store: StoreDir = None,
    qdrant_url: QdrantUrl = None,
    collection: Collection = DEFAULT_COLLECTION,
    verbose: Verbose = False,
) -> None:
    """Write a collection (model metadata, ids, payloads, vectors) to one file. The format is
    the same for the embedded and the server store: restore into either."""
    setup_logging(verbose)
    with clean_errors():
        from tqdm import tqdm

        from ingest.transfer import write_snapshot

        with open_from(store, qdrant_url, collection, read_only=True) as db:
            total = db.require_metadata() and db.count()
            with tqdm(total=total, unit="pt", desc="snapshot") as bar:
                count = write_snapshot(db, out, progress=bar.update)
        echo(f"snapshot of {count} points from {db.describe()} collection {collection!r}: {out}")


@app.command()
def restore(
    source: Annotated[Path, typer.Option("--from", help="Snapshot file from `ingest snapshot`.")],
    recreate: Annotated[bool, typer.Option(help="Replace an existing collection.")] = False,
    store: StoreDir = None,
    qdrant_url: QdrantUrl = None,
    collection: Collection = DEFAULT_COLLECTION,
    verbose: Verbose = False,
) -> None:
    """Recreate a collection from a snapshot file, in the embedded store or on a server."""
    setup_logging(verbose)
    with clean_errors():
        from tqdm import tqdm

        from ingest.transfer import read_header, restore_snapshot

        if not source.is_file():
            raise FileNotFoundError(f"snapshot {str(source)!r} not found")
        total = read_header(source)["count"]
        with open_from(store, qdrant_url, collection) as db:
            with tqdm(total=total, unit="pt", desc="restore") as bar:
                count = restore_snapshot(source, db, recreate=recreate, progress=bar.update)
            echo(f"restored {count} points into {db.describe()} collection {collection!r}")


@app.command()
def info(
    store: StoreDir = None,
    qdrant_url: QdrantUrl = None,
    collection: Collection = DEFAULT_COLLECTION,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Also read every point and check it: vectors finite and unit length, payloads, "
            "count, index complete. Exit 2 naming the first problem.",
        ),
    ] = False,
) -> None:
    """Show a collection: points, model, index settings, counts per category and source."""
    with clean_errors(), open_from(store, qdrant_url, collection, read_only=True) as db:
        meta = db.require_metadata()
        echo(f"collection {collection!r} in {db.describe()}: {db.count()} points")
        echo(f"model: {meta.get('model')}")
        echo(f"weights file: {meta.get('weights_file')}; dataset: {meta.get('dataset_root')}")
        echo(f"index: {meta.get('index')}; payload indexes: {', '.join(db.indexes()) or 'none'}")
        for key in ("category", "source", "split"):
            counts = db.facet(key)
            echo(f"{key}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if not db.index_complete():
            echo("index: build not recorded as complete; rerun `ingest run` to finish it")
        if check:
            from ingest.transfer import verify

            checked = verify(db)
            index = "complete" if checked["index_complete"] else "NOT complete"
            echo(
                f"check: ok, {checked['points']} points read, vectors finite and unit length, "
                f"payloads complete, index {index}"
            )
