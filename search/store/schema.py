"""The one payload schema: the fields a stored photo carries, which of them Qdrant indexes and
which are search filters. The store's indexes, ingest's payloads, the service's filters, the
CLI's filter options, the web API's parameters and models, the page's controls (through
/api/info) and the tables are all derived from FIELDS; nothing else lists them. Adding a filter
field touches FIELDS and the catalog column it is copied from, nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DEFAULT_COLLECTION = "deepfashion"


@dataclass(frozen=True)
class PayloadField:
    """One payload field. `label`: copied from the dataset catalog's column of the same name
    (as a string); `indexed`: a keyword index in the collection; `filter`: a search filter
    (CLI option and web form field); `shown`: part of a photo in the API's answers."""

    name: str
    type: object  # the Python type of its values (str, int, list[int])
    description: str
    label: bool = False
    indexed: bool = False
    filter: bool = False
    shown: bool = True
    choices: tuple[str, ...] = ()  # a filter's only values (else any stored value)
    column: bool = False  # a column of the terminal's result table

    @property
    def filter_help(self) -> str:
        """How a filter is described to users, as a CLI option and as an API parameter."""
        return f"Only this {self.name}: {self.description}"


FIELDS: tuple[PayloadField, ...] = (
    PayloadField(
        "category",
        str,
        "Top-level category, e.g. TOPS.",
        label=True,
        indexed=True,
        filter=True,
        column=True,
    ),
    PayloadField(
        "subcategory",
        str,
        "Subcategory folder, e.g. Tees.",
        label=True,
        indexed=True,
        filter=True,
        column=True,
    ),
    PayloadField(
        "item_id",
        str,
        "The garment: its shop and consumer photos share it.",
        label=True,
        indexed=True,
        column=True,
    ),
    PayloadField(
        "source",
        str,
        "Shop or consumer photo (unknown where the file name says neither).",
        label=True,
        indexed=True,
        filter=True,
        choices=("shop", "consumer"),
        column=True,
    ),
    PayloadField("split", str, "train, val, test or unknown.", label=True, indexed=True),
    PayloadField("path", str, "The photo's path in the dataset folder.", label=True, column=True),
    PayloadField("bbox", list[int], "x1, y1, x2, y2: the garment in the photo's pixels."),
    PayloadField(
        "box_source",
        str,
        "Where the box came from: annotated (the dataset's), detected (the garment detector's) "
        "or whole (no box: the whole photo).",
    ),
    PayloadField(
        "image_url",
        str,
        "Where Qdrant's dashboard finds the photo (ingest --image-url).",
        shown=False,
    ),
    PayloadField("size", int, "File size in bytes (change detection).", shown=False),
    PayloadField("mtime", int, "File mtime in ns (change detection).", shown=False),
)

IMAGES = "/images/"  # where the web app serves a stored photo by point id


def image_url(pid: str, base: str = IMAGES, size: int | None = None) -> str:
    """The one spelling of a photo's address: BASE<point id>.jpg (the web app's /images route,
    and the image_url payload with ingest's --image-url base), `size`: a thumbnail."""
    return f"{base}{pid}.jpg" + (f"?size={size}" if size else "")


CHANGE = ("size", "mtime")  # a stored photo whose file differs in these is embedded again
GROUP = "item_id"  # one garment: grouping, "more like this" outlines, a garment's photos


def choice_type(field: PayloadField) -> type[Enum] | None:
    """A str Enum of a filter's choices (typer lists them in --help, FastAPI in the schema)."""
    if not field.choices:
        return None
    return Enum(field.name.title(), {c: c for c in field.choices}, type=str)


def derive() -> None:
    """The names derived from FIELDS (run again by a test that adds a field)."""
    global BY_NAME, LABELS, INDEXED, FILTERS, FILTER_FIELDS, SHOWN, CHOICES, COLUMNS, COUNTED
    BY_NAME = {f.name: f for f in FIELDS}
    LABELS = tuple(f.name for f in FIELDS if f.label)
    INDEXED = tuple(f.name for f in FIELDS if f.indexed)
    FILTER_FIELDS = tuple(f for f in FIELDS if f.filter)
    FILTERS = tuple(f.name for f in FILTER_FIELDS)
    SHOWN = tuple(f.name for f in FIELDS if f.shown)
    CHOICES = {f.name: choice_type(f) for f in FILTER_FIELDS if f.choices}
    COLUMNS = tuple(f.name for f in FIELDS if f.column)
    COUNTED = tuple(name for name in INDEXED if name != GROUP)


BY_NAME: dict[str, PayloadField]
LABELS: tuple[str, ...]  # copied from the catalog's columns of the same names
INDEXED: tuple[str, ...]  # keyword indexes
FILTERS: tuple[str, ...]  # search filters, in the order options and controls show them
FILTER_FIELDS: tuple[PayloadField, ...]
SHOWN: tuple[str, ...]  # a photo's fields in answers
CHOICES: dict[str, type[Enum]]  # the filters with fixed values, as Enums
COLUMNS: tuple[str, ...]  # the terminal's result table, after rank and score
COUNTED: tuple[str, ...]  # the fields `ingest info` counts photos by
derive()
