"""The option sets of every command that reaches a collection: where the store is (one
StoreOptions value) and the search filters (one dict, an option per schema filter field)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from embedder.commands import option_set
from search.store import SEGMENT_POINTS, schema
from search.store.schema import DEFAULT_COLLECTION

StoreDir = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Embedded Qdrant folder (the default store). [default: ./qdrant_data]",
        show_default=False,
    ),
]
QdrantUrl = Annotated[
    str | None,
    typer.Option(
        "--qdrant-url",
        help="Qdrant server URL (http(s)://host:6333) instead of the embedded store; API key from "
        "QDRANT_API_KEY. ':memory:' or 'file:DIR' use qdrant-client's local mode. [default: "
        "QDRANT_URL when set and --store is not given]",
        show_default=False,
    ),
]
Collection = Annotated[
    str,
    typer.Option(
        "--collection",
        "-c",
        envvar="QDRANT_COLLECTION",
        help=f"Collection name. [default: {DEFAULT_COLLECTION}]",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class StoreOptions:
    """Where a command's collection is: an embedded folder, or a server URL, and its name."""

    store: Path | None = None
    url: str | None = None
    collection: str = DEFAULT_COLLECTION

    def open(self, read_only: bool = False):
        """The store the options name; `read_only` for commands that only read it."""
        from search.store import open_store

        folder = str(self.store) if self.store else None
        return open_store(
            store_dir=folder, url=self.url, collection=self.collection, read_only=read_only
        )


store_options = option_set(
    "where",
    StoreOptions,
    store=(StoreDir, None),
    url=(QdrantUrl, None),
    collection=(Collection, DEFAULT_COLLECTION),
)
embedded_options = option_set(  # commands that read an embedded store only (publish)
    "where", StoreOptions, store=(StoreDir, None), collection=(Collection, DEFAULT_COLLECTION)
)


def _filters(**values: str | Enum | None) -> dict[str, str]:
    return {k: v.value if isinstance(v, Enum) else v for k, v in values.items() if v}


def filter_options():
    """An option per filter field of the schema (--category, --subcategory, --source, ...),
    handed to the command as one `filters` dict of the values given."""
    options = {
        field.name: (
            Annotated[
                schema.CHOICES.get(field.name, str) | None,
                typer.Option(help=field.filter_help),
            ],
            None,
        )
        for field in schema.FILTER_FIELDS
    }
    return option_set("filters", _filters, **options)


def _index(**given):
    from search.store import IndexSettings

    return IndexSettings(**given)


# how a new collection is indexed, as one IndexSettings (`index`)
index_options = option_set(
    "index",
    _index,
    quantization=(
        Annotated[
            bool,
            typer.Option(
                "--quantize/--no-quantize",
                help="int8 scalar quantization (with rescoring) on a new collection: a third of "
                "the index build, faster queries at the same recall (the README's store table).",
            ),
        ],
        True,
    ),
    segment_points=(
        Annotated[
            int,
            typer.Option(
                min=0,
                help="Embedded store: while points arrive, index each segment of this many "
                "points, so the collection is searchable seconds after the last photo "
                "(0: one build of everything after it).",
            ),
        ],
        SEGMENT_POINTS,
    ),
    m=(Annotated[int, typer.Option("--hnsw-m", help="HNSW m of a new collection.")], 16),
    ef_construct=(Annotated[int, typer.Option(help="HNSW ef_construct of a new collection.")], 100),
    hnsw_ef=(
        Annotated[int, typer.Option(help="Search-time HNSW ef recorded with a new collection.")],
        512,
    ),
    shard_number=(
        Annotated[
            int | None, typer.Option(min=1, help="Server: shards of a new collection (cluster).")
        ],
        None,
    ),
    replication_factor=(
        Annotated[int | None, typer.Option(min=1, help="Server: copies of each shard (cluster).")],
        None,
    ),
    write_consistency=(
        Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Server: copies that must acknowledge a write before it counts (at most "
                "--replication-factor).",
            ),
        ],
        None,
    ),
)
