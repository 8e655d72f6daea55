"""`ingest`: generate a sample dataset, embed a dataset into a collection, publish it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embedder.choices import Decode
from embedder.commands import (
    DATA_ROOT_HELP,
    StorageOption,
    Verbose,
    clean_errors,
    echo,
    option_set,
    recipe_options,
    run_app,
    setup_logging,
)
from ingest.control import Engine, SampleStyle
from search.options import StoreOptions, embedded_options, index_options, store_options

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


INTERRUPTED = "interrupted: what was embedded is stored; rerun the same command to continue"


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
    out: Annotated[
        str,
        typer.Option(
            help="Folder to write the dataset into, or an object-store URL (s3://bucket/prefix: "
            "drawn locally, then uploaded)."
        ),
    ],
    items: Annotated[int, typer.Option(min=1, help="Number of garments (items).")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same files.")] = 0,
    processes: Annotated[int, typer.Option(min=1, help="Drawing processes.")] = 1,
    style: Annotated[
        SampleStyle,
        typer.Option(
            help="Consumer photos as a phone's close-up of the garment, or as street photos "
            "(a person in a cluttered street, the garment 30-55% of the frame's height; adds "
            "outfit photos of two test items each under outfits/, for shop-the-look tests)."
        ),
    ] = SampleStyle.phone,
    storage_option: StorageOption = None,
    verbose: Verbose = False,
) -> None:
    """Write a generated dataset in DeepFashion consumer-to-shop layout: img/ with shop and
    'comsumer' photos of each item, Anno/list_bbox_consumer2shop.txt (boxes and clothes_type)
    and Eval/list_eval_partition.txt."""
    setup_logging(verbose)
    with clean_errors():
        from embedder.catalog import read_catalog
        from embedder.commands import dataset_root
        from embedder.storage import parse_options
        from ingest.sample import write_sample

        options = parse_options(storage_option)
        write_sample(
            out,
            items=items,
            seed=seed,
            processes=processes,
            storage_options=options,
            style=style.value,
        )
        images = len(read_catalog(dataset_root(out, storage_option)))
        echo(f"wrote {items} items, {images} images to {out}")


def _settings(image_url, **given):
    from ingest.control import IngestSettings
    from ingest.plan import check_image_url

    return IngestSettings(image_base=check_image_url(image_url), **given)


# how an ingest runs, as one IngestSettings (`settings`)
settings_options = option_set(
    "settings",
    _settings,
    batch_size=(
        Annotated[
            int | None,
            typer.Option(min=1, help="Images per forward pass [default: 32 on CPU, 256 on CUDA]."),
        ],
        None,
    ),
    workers=(
        Annotated[
            int | None,
            typer.Option(
                min=0,
                help="Reader processes, decoding beside the model [default: a quarter of the "
                "cores on CPU, at least 1; up to 8 on CUDA].",
            ),
        ],
        None,
    ),
    decode=(
        Annotated[
            Decode,
            typer.Option(
                help="cpu: workers decode; device: workers read, JPEGs decode on the GPU (nvjpeg)."
            ),
        ],
        Decode.cpu,
    ),
    report=(
        Annotated[Path, typer.Option(help="Where failed files and reasons are written.")],
        Path("ingest-failures.csv"),
    ),
    prune=(
        Annotated[bool, typer.Option(help="Delete points whose image files are gone from ROOT.")],
        False,
    ),
    engine=(
        Annotated[
            Engine,
            typer.Option(
                help="local: this process and its readers; ray: Ray Data across the cluster at "
                "--ray-address (decode tasks, one embedder actor per GPU, parallel writes to a "
                "server). Needs the ray extra."
            ),
        ],
        Engine.local,
    ),
    ray_address=(
        Annotated[
            str | None,
            typer.Option(
                envvar="RAY_ADDRESS",
                help="With --engine ray: the cluster (ray://HOST:10001 or HOST:6379) [default: a "
                "Ray started for the run with this machine's cores and GPUs].",
                show_default=False,
            ),
        ],
        None,
    ),
    actors=(
        Annotated[
            int | None,
            typer.Option(
                min=1,
                help="With --engine ray: embedder actors [default: one per GPU; without GPUs one "
                "per node].",
            ),
        ],
        None,
    ),
    image_url=(ImageUrl, None),
    progress=(Annotated[bool, typer.Option(help="Show a progress bar.")], True),
)


@app.command()
@store_options
@recipe_options
@index_options
@settings_options
def run(
    root: Annotated[str, typer.Option(help=DATA_ROOT_HELP + " Or any folder of images.")],
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
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any file failed.")] = False,
    detector: Annotated[
        Path | None,
        typer.Option(
            help="A garment detector (`embedder train-detector`'s best.safetensors): photos "
            "without an annotated box are embedded in the box it finds of the type their "
            "category implies (TOPS upper, TROUSERS lower, DRESSES full; else its best), and "
            "searches of outside photos go garment by garment. Recorded in the collection "
            "[default: the one it records].",
            show_default=False,
        ),
    ] = None,
    storage_option: StorageOption = None,
    verbose: Verbose = False,
    where: StoreOptions = StoreOptions(),
    recipe=None,
    index=None,
    settings=None,
) -> None:
    """Embed every image under ROOT and upsert it with its payload (category, subcategory,
    item_id, source, split, path, the box and where it came from). Resumable: rerun after a
    crash or with new files and only missing or changed images are embedded."""
    setup_logging(verbose)
    with clean_errors(INTERRUPTED):
        from embedder.storage import parse_options
        from ingest.runner import ingest

        summary = ingest(
            where.open,
            root,
            recipe,
            settings,
            index,
            limit=limit,
            shard=tuple(shard) if shard else None,
            recreate=recreate,
            announce=echo,
            storage_options=parse_options(storage_option),
            detector=str(detector) if detector else None,
        )
    for line in summary.lines():
        echo(line)
    if strict and summary.failed:
        raise typer.Exit(1)


@app.command()
@embedded_options
def publish(
    to: Annotated[
        str, typer.Option("--to", help="Qdrant server URL (API key from QDRANT_API_KEY).")
    ],
    target_collection: Annotated[
        str | None, typer.Option(help="Name on the server [default: same].")
    ] = None,
    recreate: Annotated[bool, typer.Option(help="Replace the server collection.")] = False,
    image_url: ImageUrl = None,
    verbose: Verbose = False,
    where: StoreOptions = StoreOptions(),
) -> None:
    """Copy an embedded collection to a Qdrant server (vectors, payloads, indexes, model
    metadata) without re-embedding, e.g. to inspect it in the dashboard."""
    setup_logging(verbose)
    with clean_errors():
        from ingest.plan import check_image_url
        from ingest.transfer import copy_collection
        from search.store import open_store

        image_base = check_image_url(image_url)
        name = target_collection or where.collection
        with where.open(read_only=True) as source, open_store(url=to, collection=name) as target:
            with _bar(source.require_metadata() and source.count(), "publish") as bar:
                copied = copy_collection(
                    source, target, recreate=recreate, progress=bar.update, image_base=image_base
                )
            echo(f"published {copied} points to {target.describe()} collection {name!r}")


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="pt", desc=desc)


@app.command()
@store_options
def snapshot(
    out: Annotated[Path, typer.Option(help="Snapshot file to write (a tar).")],
    verbose: Verbose = False,
    where: StoreOptions = StoreOptions(),
) -> None:
    """Write a collection (model metadata, ids, payloads, vectors) to one file. The format is
    the same for the embedded and the server store: restore into either."""
    setup_logging(verbose)
    with clean_errors():
        from ingest.transfer import write_snapshot

        with where.open(read_only=True) as db:
            with _bar(db.require_metadata() and db.count(), "snapshot") as bar:
                count = write_snapshot(db, out, progress=bar.update)
        echo(f"snapshot of {count} points from {db.describe()} collection {db.collection!r}: {out}")


@app.command()
@store_options
def restore(
    source: Annotated[Path, typer.Option("--from", help="Snapshot file from `ingest snapshot`.")],
    recreate: Annotated[bool, typer.Option(help="Replace an existing collection.")] = False,
    verbose: Verbose = False,
    where: StoreOptions = StoreOptions(),
) -> None:
    """Recreate a collection from a snapshot file, in the embedded store or on a server."""
    setup_logging(verbose)
    with clean_errors():
        from ingest.transfer import read_header, restore_snapshot

        if not source.is_file():
            raise FileNotFoundError(f"snapshot {str(source)!r} not found")
        total = read_header(source)["count"]
        with where.open() as db:
            with _bar(total, "restore") as bar:
                count = restore_snapshot(source, db, recreate=recreate, progress=bar.update)
            echo(f"restored {count} points into {db.describe()} collection {db.collection!r}")


@app.command()
@store_options
def info(
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Also read every point and check it: vectors finite and unit length, payloads, "
            "count, index complete. Exit 2 naming the first problem.",
        ),
    ] = False,
    where: StoreOptions = StoreOptions(),
) -> None:
    """Show a collection: points, model, index settings, photos per category, source and
    split (every indexed field but the garment)."""
    with clean_errors(), where.open(read_only=True) as db:
        from ingest.transfer import describe_collection, verify

        for line in describe_collection(db):
            echo(line)
        if check:
            checked = verify(db)
            index = "complete" if checked["index_complete"] else "NOT complete"
            echo(
                f"check: ok, {checked['points']} points read, vectors finite and unit length, "
                f"payloads complete, index {index}"
            )


def console() -> None:
    """Console script `ingest`: usage errors as one line (embedder.commands.run_app)."""
    run_app(app)
