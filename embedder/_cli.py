"""Shared CLI plumbing: logging setup and turning known errors into one-line exits."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Annotated

import typer

from embedder.errors import UserError

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]


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
