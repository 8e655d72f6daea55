"""Shared CLI plumbing of the three commands: logging, one-line errors, and the options every
command shares (device, precision, top-k values). The store options live in search.options."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Annotated

import typer

from embedder.choices import Precision as PrecisionChoice
from embedder.choices import Runtime as RuntimeChoice
from embedder.errors import UserError

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]


class TopKs(tuple):
    """Sorted, distinct, positive k values of top-k accuracy."""


def parse_ks(text: str) -> TopKs:
    try:
        ks = TopKs(sorted({int(k) for k in text.split(",")}))
    except ValueError:
        raise typer.BadParameter(f"--k {text!r}: give integers like 1,5,10,20,50") from None
    if not ks or ks[0] < 1:
        raise typer.BadParameter("--k values must be positive")
    return ks


Ks = Annotated[TopKs, typer.Option("--k", parser=parse_ks, metavar="K,K,...", help="Top-k values.")]
Device = Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda[:N].")]
Precision = Annotated[
    PrecisionChoice,
    typer.Option(help="auto: bf16 where the CPU/GPU has native bf16, else fp32."),
]
Runtime = Annotated[
    RuntimeChoice,
    typer.Option(
        help="What runs the model: torch, or the exported model on OpenVINO (no torch once it is "
        "cached); auto: OpenVINO on a CPU, torch on a GPU."
    ),
]
Int8 = Annotated[
    bool,
    typer.Option(
        "--int8",
        help="OpenVINO's int8 model: quantised once on your photos (by `embedder export --int8` "
        "or on first use), kept only if it finds what fp32 finds.",
    ),
]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@contextlib.contextmanager
def clean_errors():
    """Known failures → 'error: …' on stderr and exit 2; Ctrl-C → exit 130. No tracebacks."""
    try:
        yield
    except BrokenPipeError:  # `search ... | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except (UserError, ValueError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


def echo(text: str = "") -> None:
    sys.stdout.write(text + "\n")
