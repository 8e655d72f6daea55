"""`search QUERY.jpg --top 20 --category TOPS`: nearest shop/consumer photos of a garment."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from embedder.choices import Boxes
from embedder.commands import (
    DataRoot,
    Ks,
    QueryBoxes,
    StorageOption,
    Verbose,
    clean_errors,
    dataset_root,
    echo,
    run_app,
    run_options,
    setup_logging,
)
from search.options import StoreOptions, filter_options, store_options
from search.service import MAX_TOP, Grouping

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    help="Find the photos most similar to a garment photo in a Qdrant collection.",
)


class PixelBox(tuple):
    """x1, y1, x2, y2 in a photo's pixels."""


Weights = Annotated[
    Path | None, typer.Option(help="The collection's weights file, if it moved since ingest.")
]
HnswEf = Annotated[
    int | None,
    typer.Option(help="HNSW ef for this search [default: the collection's, 512 unless set]."),
]


def parse_box(text: str) -> PixelBox | str:
    if text in ("auto", "none"):
        return text
    try:
        x1, y1, x2, y2 = (int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter("--bbox takes auto, none or x1,y1,x2,y2 in pixels") from None
    if x2 <= x1 or y2 <= y1:
        raise typer.BadParameter("--bbox needs x2 > x1 and y2 > y1")
    return PixelBox((x1, y1, x2, y2))


@app.command()
@store_options
@filter_options()
@run_options(traced_option=True)
def search(
    queries: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Query photo(s). Several at once share one model load.", show_default=False
        ),
    ] = None,
    top: Annotated[
        int, typer.Option("--top", "-k", min=1, max=MAX_TOP, help="How many results per query.")
    ] = 20,
    group: Annotated[
        Grouping,
        typer.Option(
            help="item: one line per garment (its best photo, and how many of its photos "
            "matched); none: every photo."
        ),
    ] = Grouping.none,
    like: Annotated[
        list[str] | None,
        typer.Option(
            help="More like this stored photo (a point id or a dataset path such as "
            "img/TOPS/Tees/id_00000005/shop_01.jpg) instead of query photos; the photo itself "
            "is left out. Repeat it to like several (Qdrant's recommendation).",
            show_default=False,
        ),
    ] = None,
    unlike: Annotated[
        list[str] | None,
        typer.Option(
            help="With --like: not like this stored photo; its garment is left out. Repeatable.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
    sheet: Annotated[
        Path | None,
        typer.Option(
            help="Write a contact sheet PNG (query + results, scores, item ids). With several "
            "queries, one sheet per query: NAME-1.png, NAME-2.png, ..."
        ),
    ] = None,
    bbox: Annotated[
        str,
        typer.Option(
            parser=parse_box,
            metavar="auto|none|X1,Y1,X2,Y2",
            help="auto: dataset photos in their annotated box; other photos garment by garment "
            "when there is a detector (the collection's, or --detector): every garment found, "
            "or with --category only those of its type, each searched in its box (no garment "
            "found: the whole photo); without one, whole. none: the whole photo. x1,y1,x2,y2: "
            "the garment's box in the photo (pixels).",
        ),
    ] = "auto",
    detector: Annotated[
        Path | None,
        typer.Option(
            help="A garment detector (`embedder train-detector`'s best.safetensors) for --bbox "
            "auto [default: the one the collection records, if any].",
            show_default=False,
        ),
    ] = None,
    exact: Annotated[bool, typer.Option(help="Exact search instead of HNSW.")] = False,
    hnsw_ef: HnswEf = None,
    weights: Weights = None,
    verbose: Verbose = False,
    where: StoreOptions = StoreOptions(),
    filters: dict | None = None,
    run=None,
) -> None:
    """Embed QUERY photo(s) with the model that built the collection and print the nearest
    images: rank, score (cosine), category, subcategory, item_id, source, path.

    The web app: `search serve --help`; the collection's accuracy: `search evaluate --help`."""
    setup_logging(verbose)
    started = time.perf_counter()
    with clean_errors():
        from search import render
        from search.service import Query, SearchService
        from search.store import SearchParams

        params = SearchParams(exact=exact, hnsw_ef=hnsw_ef)
        query = Query(top=top, filters=filters or {}, group=group, params=params)
        asked = {"photos": queries or [], "like": like or [], "unlike": unlike or []}
        with where.open(read_only=True) as db:
            service = SearchService.for_queries(
                db, query, **asked, weights=weights, run=run, detector=detector, bbox=bbox
            )
            answers = service.ask(query, **asked, bbox=bbox)
            if as_json:
                echo(render.to_json(answers, query.group))
            else:
                seconds = time.perf_counter() - started
                for line in render.answers_text(answers, query, service.metadata, seconds):
                    echo(line)
            if sheet:
                from search.sheet import write_sheets

                for out in write_sheets(sheet, answers, service):
                    typer.echo(f"contact sheet: {out}", err=as_json)


def _subcommand(help: str) -> typer.Typer:
    """A `search` subcommand (serve, evaluate) as its own typer app: main() dispatches."""
    return typer.Typer(add_completion=False, rich_markup_mode=None, help=help)


serve_app = _subcommand("The web app: find a garment from a photo in the browser.")


@serve_app.command()
@store_options
@run_options()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 to accept other machines).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    images: Annotated[
        str | None,
        typer.Option(
            help="Dataset folder the photos are served from, or its object-store URL "
            "(s3://bucket/prefix) [default: the one recorded at ingest].",
            show_default=False,
        ),
    ] = None,
    storage_option: StorageOption = None,
    image_redirect: Annotated[
        bool,
        typer.Option(
            help="Photos in an object store: answer /images/ID.jpg with a 307 to a presigned "
            "URL valid for 5 minutes instead of relaying the bytes (thumbnails are still made "
            "here).",
        ),
    ] = False,
    weights: Weights = None,
    detector: Annotated[
        Path | None,
        typer.Option(
            help="A garment detector: an upload without a box is searched in the garment that "
            "fits the category (else the best one), every garment outlined on the page "
            "[default: the one the collection records, if any].",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Model worker threads; concurrent queries are batched into one forward pass.",
        ),
    ] = 1,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.01, help="Largest accepted upload, in MB (larger: HTTP 413).")
    ] = 20.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SEARCH_API_KEY",
            help="Ask every request for this key (Authorization: Bearer KEY, or the page's "
            "prompt); /healthz stays open. Prefer the SEARCH_API_KEY environment variable: an "
            "option shows in the process list. Never printed.",
            show_default=False,
            show_envvar=True,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host name the server answers to besides localhost and --host (repeat it; "
            "'*' for any). Others get 400: a DNS-rebinding page cannot read the server.",
            show_default=False,
        ),
    ] = None,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds for a request body (a photo) to arrive.")
    ] = 30.0,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds for a request's headers to arrive.")
    ] = 10.0,
    client_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Connections one client address may hold open; more are closed as they open "
            "(behind a reverse proxy every client has its address: raise it, or cap there).",
        ),
    ] = 32,
    verbose: Verbose = False,
    where: StoreOptions = StoreOptions(),
    run=None,
) -> None:
    """Serve the search page at / and its JSON API at /api (OpenAPI docs at /docs, Prometheus
    metrics at /metrics). The collection and its model are loaded once and kept warm."""
    setup_logging(verbose)
    with clean_errors():
        from embedder.storage import parse_options
        from search.web import Settings
        from search.web import run as serve_app

        settings = Settings(
            store=str(where.store) if where.store else None,
            url=where.url,
            collection=where.collection,
            images=images or None,
            storage_options=parse_options(storage_option),
            image_redirect=image_redirect,
            weights=str(weights) if weights else None,
            detector=str(detector) if detector else None,
            run=run,
            workers=workers,
            max_upload=int(max_upload_mb * 1_000_000),
            host=host,
            port=port,
            api_key=api_key or None,
            allowed_hosts=tuple(allowed_host or ()),
            body_timeout=body_timeout,
            header_timeout=header_timeout,
            client_connections=client_connections,
        )
        serve_app(settings, ready=lambda line: echo(line) or sys.stdout.flush())


evaluate_app = _subcommand(
    "Top-k accuracy of a collection: the standard protocol, answered by Qdrant."
)


@evaluate_app.command()
@store_options
@run_options()
def evaluate(
    root: DataRoot,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    k: Ks = "1,5,10,20,50",
    hnsw_ef: HnswEf = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the top-k curve PNG.")] = None,
    weights: Weights = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[int, typer.Option(min=0)] = 1,
    boxes: QueryBoxes = Boxes.annotated,
    detector: Annotated[
        Path | None,
        typer.Option(
            help="With --boxes detected: this garment detector [default: the collection's].",
            show_default=False,
        ),
    ] = None,
    storage_option: StorageOption = None,
    verbose: Verbose = False,
    where: StoreOptions = StoreOptions(),
    run=None,
) -> None:
    """`embedder evaluate`'s report for a collection: the split's consumer photos, embedded with
    the collection's model, are looked up in the collection (HNSW, split and source filters) as
    user queries are; exact search over the same stored vectors is printed beside it, with how
    far the two agree."""
    setup_logging(verbose)
    with clean_errors():
        from search.evaluate import evaluate_store, report_lines, write_outputs
        from search.store import SearchParams

        root = dataset_root(root, storage_option)
        with where.open(read_only=True) as db:
            found = evaluate_store(
                db,
                root,
                weights=weights,
                run=run,
                split=split,
                ks=tuple(k),
                params=SearchParams(hnsw_ef=hnsw_ef),
                batch_size=batch_size,
                workers=workers,
                boxes=boxes.value,
                detector=detector,
            )
            for line in report_lines(found, db, split):
                echo(line)
        for line in write_outputs(found, plot=plot, as_json=as_json):
            echo(line)


SUBCOMMANDS = {"serve": serve_app, "evaluate": evaluate_app}


def main() -> None:
    """Console script: `search serve ...` runs the web app, `search evaluate ...` scores a
    collection, anything else is a search."""
    if (sub := SUBCOMMANDS.get(sys.argv[1] if len(sys.argv) > 1 else "")) is not None:
        run_app(sub, sys.argv[2:], prog_name=f"search {sys.argv[1]}")
    else:
        run_app(app)
