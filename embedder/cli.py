"""`embedder`: inspect checkpoints (training and evaluation commands join here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embedder._cli import clean_errors, echo

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Train, evaluate and inspect the garment embedding model.",
)


@app.callback()
def main() -> None:
    """Train, evaluate and inspect the garment embedding model."""


@app.command()
def info(weights: Annotated[Path, typer.Argument(help="A .safetensors checkpoint.")]) -> None:
    """Print what a checkpoint records: backbone, dim, image size, normalisation, metrics."""
    with clean_errors():
        from embedder.checkpoint import read_metadata

        spec, extra = read_metadata(weights)
        for key, value in spec.__dict__.items():
            if key != "extra":
                echo(f"{key}: {value}")
        for key, value in extra.items():
            echo(f"{key}: {value}")
