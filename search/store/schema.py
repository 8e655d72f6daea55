"""The one payload schema: the fields a stored photo carries, which of them Qdrant indexes and
which are search filters. The store's indexes, ingest's payloads, the service's filters and the
web API's photo model are all derived from FIELDS; nothing else lists them."""

from __future__ import annotations

from dataclasses import dataclass

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


FIELDS: tuple[PayloadField, ...] = (
    PayloadField(
        "category", str, "Top-level category, e.g. TOPS.", label=True, indexed=True, filter=True
    ),
    PayloadField(
        "subcategory", str, "Subcategory folder, e.g. Tees.", label=True, indexed=True, filter=True
    ),
    PayloadField(
        "item_id",
        str,
        "The garment: its shop and consumer photos share it.",
        label=True,
        indexed=True,
    ),
    PayloadField(
        "source", str, "shop, consumer or unknown.", label=True, indexed=True, filter=True
    ),
    PayloadField("split", str, "train, val, test or unknown.", label=True, indexed=True),
    PayloadField("path", str, "The photo's path in the dataset folder.", label=True),
    PayloadField("bbox", list[int], "x1, y1, x2, y2: the garment in the photo's pixels."),
    PayloadField(
        "image_url",
        str,
        "Where Qdrant's dashboard finds the photo (ingest --image-url).",
        shown=False,
    ),
    PayloadField("size", int, "File size in bytes (change detection).", shown=False),
    PayloadField("mtime", int, "File mtime in ns (change detection).", shown=False),
)

BY_NAME = {f.name: f for f in FIELDS}
LABELS = tuple(f.name for f in FIELDS if f.label)
INDEXED = tuple(f.name for f in FIELDS if f.indexed)
FILTERS = tuple(f.name for f in FIELDS if f.filter)
SHOWN = tuple(f.name for f in FIELDS if f.shown)
CHANGE = ("size", "mtime")  # a stored photo whose file differs in these is embedded again
GROUP = "item_id"  # one garment: grouping, "more like this" outlines, a garment's photos
