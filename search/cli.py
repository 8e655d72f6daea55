"""`search QUERY.jpg --top 20 --category TOPS`: nearest shop/consumer photos of a garment."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from embedder._cli import (
    Device,
    Int8,
    Ks,
    Precision,
    Runtime,
    Verbose,
    clean_errors,
    echo,
    setup_logging,
)
from search.options import Collection, QdrantUrl, StoreDir, open_from
from search.query import ModelOptions
from search.service import MAX_TOP, Grouping, Source
from search.store.schema import DEFAULT_COLLECTION

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


def parse_box(text: str) -> PixelBox:
    try:
        x1, y1, x2, y2 = (int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter("--bbox takes x1,y1,x2,y2 in pixels") from None
    if x2 <= x1 or y2 <= y1:
        raise typer.BadParameter("--bbox needs x2 > x1 and y2 > y1")
    return PixelBox((x1, y1, x2, y2))


@app.command()
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
    category: Annotated[str | None, typer.Option(help="Only this category, e.g. TOPS.")] = None,
    subcategory: Annotated[str | None, typer.Option(help="Only this subcategory.")] = None,
    source: Annotated[Source | None, typer.Option(help="Only shop or consumer photos.")] = None,
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
        PixelBox | None,
        typer.Option(
            parser=parse_box,
            metavar="X1,Y1,X2,Y2",
            help="x1,y1,x2,y2: the garment's box in the photo (pixels). Dataset photos use "
            "their annotated box by default; other photos are used whole.",
        ),
    ] = None,
    exact: Annotated[bool, typer.Option(help="Exact search instead of HNSW.")] = False,
    hnsw_ef: Annotated[
        int | None,
        typer.Option(help="HNSW ef for this search [default: the collection's, 512 unless set]."),
    ] = None,
    traced: Annotated[
        bool,
        typer.Option(
            help="On CPU, keep a traced copy of the model in ~/.cache/fashion-retrieval for "
            "faster starts (FASHION_RETRIEVAL_CACHE moves it)."
        ),
    ] = True,
    weights: Weights = None,
    store: StoreDir = None,
    qdrant_url: QdrantUrl = None,
    collection: Collection = DEFAULT_COLLECTION,
    device: Device = "auto",
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    int8: Int8 = False,
    verbose: Verbose = False,
) -> None:
    """Embed QUERY photo(s) with the model that built the collection and print the nearest
    images: rank, score (cosine), category, subcategory, item_id, source, path.

    The web app: `search serve --help`; the collection's accuracy: `search evaluate --help`."""
    setup_logging(verbose)
    started = time.perf_counter()
    queries, like, unlike = queries or [], like or [], unlike or []
    if unlike and not like:
        raise typer.BadParameter("--unlike needs at least one --like")
    if bool(queries) == bool(like):
        raise typer.BadParameter("give query photo(s) or --like POINT, one of the two")
    with clean_errors():
        from search import render
        from search.service import Query, SearchService
        from search.store import SearchParams

        query = Query.make(
            top,
            group,
            SearchParams(exact=exact, hnsw_ef=hnsw_ef),
            category=category,
            subcategory=subcategory,
            source=source,
        )
        with (
            open_from(store, qdrant_url, collection, read_only=True) as db,
            SearchService(
                db,
                model=ModelOptions(
                    str(weights) if weights else None, device, precision, traced, runtime, int8
                ),
            ) as service,
        ):
            if len(like) == 1 and not unlike:
                answers = [service.similar(like[0], query)]
            elif like:
                answers = [
                    service.recommend(
                        [service.resolve(p) for p in like],
                        [service.resolve(p) for p in unlike],
                        query,
                    )
                ]
            else:
                boxes = [bbox] * len(queries) if bbox else None
                answers = service.search_files(queries, query, boxes)
            elapsed = time.perf_counter() - started
            if as_json:
                echo(render.to_json(answers, query.group))
            else:
                for answer in answers:
                    echo(render.heading(answer, dict(query.filters), query.group))
                    for line in render.table(answer.results, query.group):
                        echo(line)
                echo(render.model_line(service.metadata, elapsed))
            if sheet:
                from search.sheet import write_sheet

                for n, answer in enumerate(answers, 1):
                    out = (
                        sheet
                        if len(answers) == 1
                        else sheet.with_name(f"{sheet.stem}-{n}{sheet.suffix}")
                    )
                    picture = service.image_file(answer.query) if answer.exclude else answer.query
                    write_sheet(
                        out,
                        picture,
                        [r.hit for r in answer.results],
                        str(service.images) if service.images else None,
                        answer.item_id,
                    )
                    typer.echo(f"contact sheet: {out}", err=as_json)


def _subcommand(help: str) -> typer.Typer:
    """A `search` subcommand (serve, evaluate) as its own typer app: main() dispatches."""
    return typer.Typer(add_completion=False, rich_markup_mode=None, help=help)


serve_app = _subcommand("The web app: find a garment from a photo in the browser.")


@serve_app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 to accept other machines).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Dataset folder the photos are served from [default: the one recorded at ingest]."
        ),
    ] = None,
    weights: Weights = None,
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
    store: StoreDir = None,
    qdrant_url: QdrantUrl = None,
    collection: Collection = DEFAULT_COLLECTION,
    device: Device = "auto",
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    int8: Int8 = False,
    verbose: Verbose = False,
) -> None:
    """Serve the search page at / and its JSON API at /api (OpenAPI docs at /docs, Prometheus
    metrics at /metrics). The collection and its model are loaded once and kept warm."""
    setup_logging(verbose)
    with clean_errors():
        from search.web import Settings, run

        run(
            Settings(
                store=str(store) if store else None,
                url=qdrant_url,
                collection=collection,
                images=str(images) if images else None,
                model=ModelOptions(
                    str(weights) if weights else None, device, precision, runtime=runtime, int8=int8
                ),
                workers=workers,
                max_upload=int(max_upload_mb * 1_000_000),
                host=host,
                port=port,
                api_key=api_key or None,
                allowed_hosts=tuple(allowed_host or ()),
                body_timeout=body_timeout,
                header_timeout=header_timeout,
            )
        )


evaluate_app = _subcommand(
    "Top-k accuracy of a collection: the standard protocol, answered by Qdrant."
)


@evaluate_app.command()
def evaluate(
    root: Annotated[Path, typer.Option(help="Dataset folder with img/ and Eval/.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    k: Ks = "1,5,10,20,50",
    hnsw_ef: Annotated[
        int | None,
        typer.Option(help="HNSW ef for the queries [default: the collection's, 512 unless set]."),
    ] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the top-k curve PNG.")] = None,
    weights: Weights = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[int, typer.Option(min=0)] = 1,
    store: StoreDir = None,
    qdrant_url: QdrantUrl = None,
    collection: Collection = DEFAULT_COLLECTION,
    device: Device = "auto",
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    int8: Int8 = False,
    verbose: Verbose = False,
) -> None:
    """`embedder evaluate`'s report for a collection: the split's consumer photos, embedded with
    the collection's model, are looked up in the collection (HNSW, split and source filters) as
    user queries are; exact search over the same stored vectors is printed beside it, with how
    far the two agree."""
    setup_logging(verbose)
    with clean_errors():
        import json

        from embedder.plots import topk_curve
        from search.evaluate import evaluate_collection
        from search.service import SearchService
        from search.store import SearchParams

        with (
            open_from(store, qdrant_url, collection, read_only=True) as db,
            SearchService(
                db,
                model=ModelOptions(
                    str(weights) if weights else None,
                    device,
                    precision,
                    runtime=runtime,
                    int8=int8,
                ),
            ) as service,
        ):
            found = evaluate_collection(
                db,
                service.encoder,
                root,
                split=split,
                ks=tuple(k),
                params=SearchParams(hnsw_ef=hnsw_ef),
                batch_size=batch_size,
                workers=workers,
            )
            echo(
                f"{db.describe()} collection {collection!r}: {found.store.queries} queries, "
                f"gallery {found.store.gallery} ({split})"
            )
        reports = {"store": found.store, "exact": found.exact}
        for name, title in (("store", "via the collection (HNSW)"), ("exact", "exact search")):
            echo(f"{title}:")
            for line in reports[name].table():
                echo(line)
        echo(
            "agreement with exact search: "
            + ", ".join(f"{key} {value:.3f}" for key, value in found.agreement.items())
        )
        if plot:
            topk_curve({n: r.overall for n, r in reports.items()}, plot)
            echo(f"top-k curve: {plot}")
        if as_json:
            body = {n: r.to_json() for n, r in reports.items()}
            as_json.write_text(json.dumps({**body, "agreement": found.agreement}, indent=1))


SUBCOMMANDS = {"serve": serve_app, "evaluate": evaluate_app}


def main() -> None:
    """Console script: `search serve ...` runs the web app, `search evaluate ...` scores a
    collection, anything else is a search."""
    if (sub := SUBCOMMANDS.get(sys.argv[1] if len(sys.argv) > 1 else "")) is not None:
        sub(sys.argv[2:], prog_name=f"search {sys.argv[1]}")
    else:
        app()
