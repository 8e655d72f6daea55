"""What the three command-line tools share: logging, one-line errors, the options every
command has (device, precision, runtime, top-k values) and option sets that several commands
take as one value (option_set). The store and filter options live in search.options."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from embedder.choices import Boxes
from embedder.choices import Precision as PrecisionChoice
from embedder.choices import Runtime as RuntimeChoice
from embedder.errors import UserError, first_line

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


DATA_ROOT_HELP = (
    "Dataset folder (img/, Anno/, Eval/), its img/ folder, or the same in an object store: "
    "s3://bucket/prefix, gs://..., az://..., any fsspec URL (credentials from AWS_* variables "
    "or --storage-option)."
)
DataRoot = Annotated[str, typer.Option(help=DATA_ROOT_HELP)]
QueryBoxes = Annotated[
    Boxes,
    typer.Option(
        help="The box each query photo is searched in: annotated (the dataset's box, the "
        "literature's protocol), detected (the garment detector's box of the category's type, "
        "as users' photos are searched; needs a detector), or none (the whole photo)."
    ),
]
DetectorFile = Annotated[
    Path | None,
    typer.Option(
        "--detector",
        help="A garment detector (`embedder train-detector`'s best.safetensors).",
        show_default=False,
    ),
]
StorageOption = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        help="A keyword for an object-store root's file system (fsspec), repeatable: "
        "endpoint_url=http://127.0.0.1:8333 for MinIO or SeaweedFS, key=..., secret=..., "
        "anon=true.",
        show_default=False,
    ),
]


def dataset_root(root: str, storage_option: list[str] | None):
    """--root and --storage-option as one located dataset (embedder.catalog.DatasetRoot)."""
    from embedder.catalog import locate
    from embedder.storage import parse_options

    return locate(root, parse_options(storage_option))


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
def clean_errors(interrupted: str = "interrupted"):
    """Known failures → 'error: …' on stderr and exit 2; Ctrl-C → `interrupted` and exit 130.
    No tracebacks."""
    try:
        yield
    except BrokenPipeError:  # `search ... | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        typer.echo(interrupted, err=True)
        raise typer.Exit(130) from None
    except (UserError, ValueError, OSError) as exc:
        typer.echo(f"error: {first_line(exc)}", err=True)
        raise typer.Exit(2) from None


def echo(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def option_set(target: str, build: Callable[..., Any], **options: tuple[Any, Any]):
    """A typer command decorator: adds `options` (name → (Annotated type, default)) to the
    command's options and hands the command one value instead, `target=build(**their
    values)`. One definition of an option set serves every command that takes it."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != target]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for name, (a, d) in options.items()
        ]

        @functools.wraps(command)
        def run(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in options}
            with clean_errors():  # a bad combination of the set's options: one line
                value = build(**values)
            return command(*args, **kwargs, **{target: value})

        run.__signature__ = signature.replace(parameters=[*kept, *added])
        return run

    return decorate


def run_options(traced_option: bool = False):
    """The model options of every command that runs a collection's model, as one RunOptions
    (`run`); torch on a CPU keeps a traced copy, which `traced_option` adds --no-traced for."""
    from embedder.recipe import RunOptions

    extra = {"traced": (Traced, True)} if traced_option else {}
    return option_set(
        "run",
        RunOptions if traced_option else functools.partial(RunOptions, traced=True),
        device=(Device, "auto"),
        precision=(Precision, PrecisionChoice.auto),
        runtime=(Runtime, RuntimeChoice.auto),
        int8=(Int8, False),
        **extra,
    )


Traced = Annotated[
    bool,
    typer.Option(
        help="On CPU with torch, keep a traced copy of the model in ~/.cache/fashion-retrieval "
        "for faster starts (FASHION_RETRIEVAL_CACHE moves it)."
    ),
]


def _recipe(weights, backbone, pretrained, img_size, **run):
    from embedder.recipe import ModelRecipe

    weights = str(weights) if weights else None
    return ModelRecipe(backbone, img_size=img_size, pretrained=pretrained, weights=weights, **run)


Weights = Annotated[
    Path | None, typer.Option(help="Trained checkpoint (.safetensors from `embedder train`).")
]
Backbone = Annotated[str, typer.Option(help="timm backbone, without --weights.")]
Pretrained = Annotated[
    str,
    typer.Option(
        help="Without --weights: 'default' (timm's ImageNet weights, needs the network), a timm "
        "tag, or 'none' for an untrained model."
    ),
]
ImgSize = Annotated[
    int | None, typer.Option(help="Input size, without --weights [default: the backbone's].")
]
Calibration = Annotated[
    Path | None,
    typer.Option(help="With --int8: photos to calibrate on [default: a sample of ROOT]."),
]
Compile = Annotated[
    bool,
    typer.Option("--compile", help="torch.compile the model: ~30 s to start, then ~1.3x faster."),
]
# the model an ingest embeds with, as one ModelRecipe (`recipe`)
recipe_options = option_set(
    "recipe",
    lambda calibration, **given: _recipe(
        calibration=str(calibration) if calibration else None, **given
    ),
    weights=(Weights, None),
    pretrained=(Pretrained, "default"),
    backbone=(Backbone, "resnet50"),
    img_size=(ImgSize, None),
    device=(Device, "auto"),
    precision=(Precision, PrecisionChoice.auto),
    runtime=(Runtime, RuntimeChoice.auto),
    int8=(Int8, False),
    calibration=(Calibration, None),
    compile=(Compile, False),
)


PLAIN = (  # click's and pydantic's wording → a user's
    (r"Invalid value for '([^']+)'(?: / '[^']+')?: ", r"\1: "),
    (r"Input should be greater than or equal to (\S+)", r"must be at least \1"),
    (r"Input should be less than or equal to (\S+)", r"must be at most \1"),
    (r"Input should be greater than (\S+)", r"must be more than \1"),
    (r"Input should be a valid integer.*", "must be a whole number"),
    (r"Input should be a valid number.*", "must be a number"),
    (r"Value error, ", ""),
    (r"(\S+) is not in the range (\S+)<=x<=(\S+?)\.?$", lambda m: _outside(*m.groups())),
    (r"\S+ is not in the range x>=(\S+?)\.?$", r"must be at least \1"),
    (r"\S+ is not in the range x<=(\S+?)\.?$", r"must be at most \1"),
    (r"\S+ is not in the range x>(\S+?)\.?$", r"must be more than \1"),
    (r"'[^']*' is not a valid int(eger| range).*", "must be a whole number"),
    (r"'[^']*' is not a valid float.*", "must be a number"),
)


def _outside(value: str, low: str, high: str) -> str:
    """click's two-sided range, in the words of the bound that was crossed."""
    try:
        return f"must be at least {low}" if float(value) < float(low) else f"must be at most {high}"
    except ValueError:
        return f"must be between {low} and {high}"


def plain_usage(message: str) -> str:
    """A usage error in one plain line: the option, then what is wrong with it."""
    import re

    for pattern, replacement in PLAIN:
        message = re.sub(pattern, replacement, message)
    return " ".join(message.split())


def run_app(app, args: list[str] | None = None, prog_name: str | None = None):
    """A typer app as a console script: a usage error (a bad value, a missing option) is one
    line `error: …` and exit 2, as every other error is, instead of click's box."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    try:
        code = app(args, prog_name=prog_name, standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `ingest` alone: its help, as click would show it
        exc.show()
        sys.exit(0)
    except UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        typer.echo(f"error: {plain_usage(exc.format_message())}{hint}", err=True)
        sys.exit(2)
    except ClickException as exc:
        typer.echo(f"error: {plain_usage(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
