"""`search QUERY.jpg --top 20 --category TOPS`: nearest shop/consumer photos of a garment."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from embedder._cli import Verbose, clean_errors, echo, setup_logging
from search.options import Collection, Device, Precision, QdrantUrl, StoreDir, open_from

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    help="Find the photos most similar to a garment photo in a Qdrant collection.",
)

COLUMNS = ("rank", "score", "category", "subcategory", "item_id", "source", "path")


def _table(hits) -> list[str]:
    rows = [
        [str(n), f"{h.score:.4f}", *(str(h.payload.get(c, "")) for c in COLUMNS[2:])]
        for n, h in enumerate(hits, 1)
    ]
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*COLUMNS), *(fmt.format(*r) for r in rows)]


def _box(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        x1, y1, x2, y2 = (int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter("--bbox takes x1,y1,x2,y2 in pixels") from None
    if x2 <= x1 or y2 <= y1:
        raise typer.BadParameter("--bbox needs x2 > x1 and y2 > y1")
    return x1, y1, x2, y2


@app.command()
def search(
    queries: Annotated[
        list[Path],
        typer.Argument(
            help="Query photo(s). Several at once share one model load.", show_default=False
        ),
    ],
    top: Annotated[int, typer.Option("--top", "-k", help="How many results per query.")] = 20,
    category: Annotated[str | None, typer.Option(help="Only this category, e.g. TOPS.")] = None,
    subcategory: Annotated[str | None, typer.Option(help="Only this subcategory.")] = None,
    source: Annotated[str | None, typer.Option(help="Only shop or consumer photos.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
    sheet: Annotated[
        Path | None,
        typer.Option(
            help="Write a contact sheet PNG (query + results, scores, item ids). With several "
            "queries, one sheet per query: NAME-1.png, NAME-2.png, ..."
        ),
    ] = None,
    bbox: Annotated[
        str | None,
        typer.Option(
            help="x1,y1,x2,y2: the garment's box in the photo (pixels). Dataset photos use "
            "their annotated box by default; other photos are used whole."
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
    weights: Annotated[
        Path | None, typer.Option(help="The collection's weights file, if it moved since ingest.")
    ] = None,
    store: StoreDir = None,
    qdrant_url: QdrantUrl = None,
    collection: Collection = "deepfashion",
    device: Device = "auto",
    precision: Precision = "auto",
    verbose: Verbose = False,
) -> None:
    """Embed QUERY photo(s) with the model that built the collection and print the nearest
    images: rank, score (cosine), category, subcategory, item_id, source, path."""
    setup_logging(verbose)
    started = time.perf_counter()
    if source not in (None, "shop", "consumer"):
        raise typer.BadParameter("--source must be shop or consumer")
    filters = {
        k: v
        for k, v in (("category", category), ("subcategory", subcategory), ("source", source))
        if v
    }
    box = _box(bbox)
    with clean_errors():
        for query in queries:
            if not query.is_file():
                raise FileNotFoundError(f"query image {str(query)!r} not found")
        with open_from(store, qdrant_url, collection) as db:
            meta = db.require()
            from search.query import (
                boxes_of,
                check_filters,
                dataset_points,
                query_encoder,
                search_images,
            )

            check_filters(db, filters)
            db.set_hnsw_ef(hnsw_ef)
            encoder, cache_model = query_encoder(
                meta, str(weights) if weights else None, device, precision, traced=traced
            )
            known = dataset_points(db, queries)  # dataset photos: their bbox and item
            results = search_images(
                db,
                encoder,
                queries,
                top=top,
                filters=filters,
                exact=exact,
                boxes=[box] * len(queries) if box else boxes_of(known),
            )
        elapsed = time.perf_counter() - started
        if as_json:
            answers = [
                {
                    "query": str(q),
                    "results": [
                        {"rank": n, "id": h.id, "score": h.score, **h.payload}
                        for n, h in enumerate(hits, 1)
                    ],
                }
                for q, hits in zip(queries, results, strict=True)
            ]
            echo(json.dumps(answers, indent=1))
        else:
            for query, hits in zip(queries, results, strict=True):
                echo(
                    f"query {query}: {len(hits)} results"
                    + (f" ({', '.join(f'{k}={v}' for k, v in filters.items())})" if filters else "")
                )
                for line in _table(hits):
                    echo(line)
            model = meta["model"]
            echo(
                f"model {model['backbone']} weights {model['weights']}"
                + (
                    "  (UNTRAINED: random weights, results are not meaningful)"
                    if model["weights"] == "none"
                    else ""
                )
                + f"; {elapsed:.2f}s"
            )
        if sheet:
            from search.sheet import write_sheet

            for n, (query, hits) in enumerate(zip(queries, results, strict=True), 1):
                out = (
                    sheet
                    if len(queries) == 1
                    else sheet.with_name(f"{sheet.stem}-{n}{sheet.suffix}")
                )
                write_sheet(out, query, hits, meta.get("dataset_root"), known[n - 1].get("item_id"))
                typer.echo(f"contact sheet: {out}", err=as_json)
        if cache_model is not None:
            cache_model()  # after answering: the next start loads the traced copy
