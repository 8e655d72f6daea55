"""The search service: the one set of query functions behind the `search` CLI and the web app.

Embed a query (a dataset photo, any photo file, or uploaded bytes), search with filters, group
by garment, "more like this" for a stored photo, a garment's photos, facets, and the image file
of a point. Callers render; nothing here prints or knows about HTTP.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from embedder.boxes import Garment
from embedder.errors import UserError
from embedder.geometry import Box
from embedder.storage import LOCAL, Storage, is_remote, split
from search.store import (
    APPROXIMATE,
    Exclude,
    Filters,
    Hit,
    Recommend,
    SearchParams,
    Store,
    StoreError,
    point_id,
    search,
    search_groups,
)
from search.store.schema import FILTERS, GROUP, SHOWN

log = logging.getLogger(__name__)

MAX_TOP = 1000
MAX_EXAMPLES = 50  # photos a recommendation may like, and as many it may dislike
KINDS = "a JPEG, PNG, WebP or BMP photo"
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class PhotoFile:
    """A stored point's image file (SearchService.image_file): a path on this machine's disk or
    a key in the dataset's object store, with its length and change stamp when it was found."""

    path: str
    storage: Storage = LOCAL
    size: int = 0
    changed: int = 0

    def __fspath__(self) -> str:
        if not self.storage.local:
            raise TypeError("a photo in an object store has no local path")
        return self.path

    def read(self) -> bytes:
        """The file's bytes (one GET from an object store)."""
        try:
            return self.storage.read(self.path)
        except FileNotFoundError:
            raise NotFound("the image file of this photo is missing") from None
        except Exception as exc:
            raise StoreError(f"the photo store does not answer ({type(exc).__name__})") from None

    def source(self):
        """What Pillow opens: the local path, or the object's bytes."""
        return self.path if self.storage.local else io.BytesIO(self.read())

    def signed_url(self, seconds: int) -> str | None:
        """A presigned URL that reads this object for `seconds` (None on the local disk)."""
        return None if self.storage.local else self.storage.sign(self.path, seconds)


class Grouping(str, Enum):
    """How results are listed: one per garment (its best photo) or every photo."""

    item = "item"
    none = "none"


class Source(str, Enum):
    shop = "shop"
    consumer = "consumer"


class NotFound(StoreError, LookupError):
    """An unknown point, item or image (HTTP 404)."""


class UnknownValue(StoreError):
    """A filter value the collection does not hold (HTTP 422); `known` lists the ones it does."""

    def __init__(self, key: str, value: str, known: Sequence[str]):
        self.key, self.value, self.known = key, value, sorted(known)
        listing = ", ".join(self.known) or "none"
        super().__init__(f"unknown --{key} {value!r}; the collection has: {listing}")


class BadImage(UserError, ValueError):
    """An upload or query file that is not a usable image (HTTP 400)."""


@dataclass(frozen=True)
class Query:
    """What to search for, besides the photo: how many, which filters, grouped or not."""

    top: int = 20
    filters: Filters = field(default_factory=dict)
    group: Grouping = Grouping.none
    group_size: int = 10  # photos listed per garment in a grouped answer
    params: SearchParams = APPROXIMATE
    offset: int = 0  # results already shown (garments when grouped): the next page starts here

    def __post_init__(self) -> None:
        if not 1 <= self.top <= MAX_TOP:
            raise ValueError(f"--top must be between 1 and {MAX_TOP}, got {self.top}")
        if not 0 <= self.offset <= MAX_TOP - self.top:
            raise ValueError(
                f"offset must be between 0 and {MAX_TOP} - top ({MAX_TOP - self.top}), "
                f"got {self.offset}"
            )
        unknown = set(self.filters) - set(FILTERS)
        if unknown:
            raise ValueError(f"unknown filter {sorted(unknown)}; use {', '.join(FILTERS)}")

    @classmethod
    def make(
        cls,
        top: int = 20,
        group: Grouping | str = Grouping.none,
        params: SearchParams = APPROXIMATE,
        offset: int = 0,
        **filters: str | Enum | None,
    ) -> Query:
        """A query from optional filter values by field name (empty or None: no filter)."""
        chosen = {k: v.value if isinstance(v, Enum) else v for k, v in filters.items() if v}
        return cls(top=top, filters=chosen, group=Grouping(group), params=params, offset=offset)


@dataclass(frozen=True)
class Result:
    """One line of an answer: a photo, or (grouped) a garment shown by its best photo.

    `photos` holds the garment's matching photos, best first (just the hit when ungrouped);
    `matches` is how many of them matched.
    """

    rank: int
    hit: Hit
    photos: list[Hit]

    @property
    def matches(self) -> int:
        return len(self.photos)

    @property
    def item_id(self) -> str | None:
        return self.hit.payload.get(GROUP)


class Asked(str, Enum):
    """What an answer answers: a photo file, an upload, more like a stored photo, or likes."""

    photo = "photo"
    upload = "upload"
    similar = "similar"
    recommend = "recommend"


@dataclass
class Answer:
    """The results for one query, what the query was, and where the time went.

    `query`: the photo file's path, "upload", "recommend", or the stored photo's point id;
    `shown`: the stored photo that stands for the query (a contact sheet's first tile)."""

    query: str
    results: list[Result]
    item_id: str | None = None  # the query photo's own garment, when it is a dataset photo
    shown: str | None = None  # the stored photo shown as the query (more like this, likes)
    asked: Asked = Asked.photo
    seconds: dict[str, float] = field(default_factory=dict)  # detector, model, store
    vector: np.ndarray | None = None  # an uploaded photo's query vector
    garment: Garment | None = None  # the garment of the photo these results are for
    notice: str | None = None  # why the photo was searched whole although garments were sought
    found: list[Garment] = field(default_factory=list)  # an upload's garments (the page's)


AUTO, WHOLE = "auto", "none"  # --bbox: the garments found (or the annotated box), the photo


def canonical_id(text: str) -> str:
    """A point id as the collection writes it (lower-case hex with dashes); any other spelling
    or length is NotFound, without echoing what was sent."""
    if not isinstance(text, str) or not _CANONICAL.fullmatch(text):
        raise NotFound("no stored photo with that id (ids look like 1b4e28ba-2fa1-5ad2-...)")
    return text


def check_filters(store: Store, filters: Filters) -> dict[str, str]:
    """The filters as the collection spells its values (`tops` is TOPS, when only one stored
    value matches regardless of case); an unknown value is an error that lists the known ones,
    not an empty answer."""
    spelled = {}
    for key, value in filters.items():
        known = store.facet(key)
        if value not in known:
            alike = [k for k in known if k.casefold() == str(value).casefold()]
            if len(alike) != 1:
                raise UnknownValue(key, value, list(known))
            value = alike[0]
        spelled[key] = value
    return spelled


def dataset_points(
    store: Store, photos: Sequence[str | Path], root: str | Path | None
) -> list[dict]:
    """For each query that is itself an image of the collection's dataset (under `root`), its
    stored payload (bbox, item_id, ...), else {}: a dataset photo is embedded exactly as it was
    at ingest."""
    if not root:
        return [{} for _ in photos]
    ids = []
    for image in photos:
        try:
            rel = Path(image).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:  # not under the dataset
            rel = None
        ids.append(point_id(rel) if rel else None)
    found = store.retrieve([i for i in ids if i], ["bbox", "item_id"])
    return [{**found[i], "id": i} if i in found else {} for i in ids]


def boxes_of(points: Sequence[dict]) -> list[Box | None]:
    return [tuple(p["bbox"]) if p.get("bbox") else None for p in points]


def check_query_file(path: str | Path) -> Path:
    """A query photo must be an existing image file of a kind ingest reads."""
    from embedder.transforms import IMAGE_SUFFIXES as QUERY_SUFFIXES  # ingest's rule too

    path = Path(path)
    if path.is_dir():
        raise BadImage(f"query {str(path)!r} is a folder, not an image file")
    if path.exists() and not path.is_file():  # reading a FIFO or /dev/zero would never end
        raise BadImage(f"query {str(path)!r} is not a regular file (a FIFO, device or socket)")
    if not path.is_file():
        raise FileNotFoundError(f"query image {str(path)!r} not found")
    if path.suffix.lower() not in QUERY_SUFFIXES:
        kinds = ", ".join(sorted(QUERY_SUFFIXES))
        raise BadImage(f"query {str(path)!r} is not an image ingest reads ({kinds})")
    return path


def answer_vectors(
    store: Store, queries, query: Query, exclude: Exclude | Sequence[str] = ()
) -> list[list[Result]]:
    """Search (or grouped search) for each query (vectors or a Recommend); the one place
    results are ranked. A page after `query.offset` results: the same ranking, cut."""
    first, wanted = query.offset, query.offset + query.top
    if query.group is Grouping.item:
        grouped = search_groups(
            store, queries, wanted, query.filters, query.params, exclude, query.group_size
        )
        return [
            [Result(rank, g.hits[0], g.hits) for rank, g in enumerate(groups[first:], first + 1)]
            for groups in grouped
        ]
    found = search(store, queries, wanted, query.filters, query.params, exclude)
    return [
        [Result(rank, h, [h]) for rank, h in enumerate(hits[first:], first + 1)] for hits in found
    ]


def searched_whole(kind: str | None = None) -> str:
    """The notice of a photo searched whole because no garment (of type `kind`) was found."""
    what = f"{kind}-body garment" if kind else "garment"
    return f"no {what} found in the photo: searched it whole"


def _decoded(source, bbox: Box | None, min_side: int):
    """A photo (a path or bytes) decoded upright, cropped to `bbox` (which must fit it), no
    smaller than `min_side`; BadImage (or BadBox) in words a user can act on."""
    from embedder.transforms import load_image

    return _readable(load_image, source, bbox, min_side, strict_box=True)


def _readable(load, *args, **kwargs):
    """`load(*args, **kwargs)`, a photo's failure raised as BadImage, a bad box as BadBox."""
    from embedder.errors import BadBox

    try:
        return load(*args, **kwargs)
    except BadBox:
        raise  # a bad box is the request's fault (422), not the photo's
    except Exception as exc:
        raise _unreadable(exc) from None


def _unreadable(exc: Exception) -> BadImage:
    from PIL import Image, UnidentifiedImageError

    from embedder.errors import TooThin, describe_failure

    if isinstance(exc, UnidentifiedImageError):
        return BadImage(f"This file is not an image we can read: send {KINDS}.")
    if isinstance(exc, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return BadImage("This photo has too many pixels to be read safely.")
    if isinstance(exc, TooThin):
        return BadImage(str(exc))
    log.info("refused a photo: %s", describe_failure(exc))  # truncated, damaged, odd mode
    return BadImage("We cannot decode this photo: it is damaged or cut off.")


def _one_kind(photos: Sequence, like: Sequence, unlike: Sequence) -> None:
    if unlike and not like:
        raise ValueError("--unlike needs at least one --like")
    if bool(photos) == bool(like):
        raise ValueError("give query photo(s) or --like POINT, one of the two")


@contextlib.contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the block's wall time to seconds[stage]."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started


class SearchService:
    """A collection and (for queries by photo) the model that made it, for many queries.

    The CLI makes one per command; the web app makes one at start-up and shares it between
    requests. `encoder`: any callable from uint8 pixels to vectors with a `spec` (the model a
    ModelRecipe builds for the collection, or the web app's batching pool); None for a service
    that only answers from stored vectors (more like this, recommendations, payloads)."""

    @classmethod
    def for_queries(
        cls,
        store: Store,
        query: Query,
        photos=(),
        like=(),
        unlike=(),
        weights=None,
        run=None,
        detector=None,
        bbox=AUTO,
    ) -> SearchService:
        """A service for one command's queries (as ask() takes them): the request, the photo
        files and the filters are checked first, then the collection's model is built (and
        checked) only if there are photos to embed, and the garment detector (`detector`, a
        checkpoint, else the collection's) only if garments are to be found (`bbox` auto).
        `weights`, `run`: as ModelRecipe.for_collection takes them."""
        from embedder.recipe import DetectorRecipe, ModelRecipe, RunOptions

        _one_kind(photos, like, unlike)
        for photo in photos:
            check_query_file(photo)
        metadata = store.require_metadata()
        check_filters(store, query.filters)
        run = run or RunOptions(traced=True)
        recipe = ModelRecipe.for_collection(metadata, weights, run)
        finder = DetectorRecipe.for_collection(metadata, detector, run)
        if not photos:
            return cls(store)
        if finder is None or bbox != AUTO:
            return cls(store, recipe.build(throughput=False))
        if not finder.cached():  # exported (with torch) first, one model at a time
            return cls(store, recipe.build(throughput=False), detector=finder.build())
        import locale
        from concurrent.futures import ThreadPoolExecutor

        kept = locale.setlocale(locale.LC_ALL)  # OpenVINO's reader sets and restores "C" around
        try:  # its parsing: two at once would leave the process in "C" (ASCII file names)
            with ThreadPoolExecutor(1) as pool:  # both loaded at once, compiled off the GIL
                detecting = pool.submit(finder.build)
                encoder = recipe.build(throughput=False)
                return cls(store, encoder, detector=detecting.result())
        finally:
            locale.setlocale(locale.LC_ALL, kept)

    def __init__(
        self,
        store: Store,
        encoder=None,
        dataset: str | Path | None = None,
        storage_options: dict | None = None,
        detector=None,
    ):
        """`dataset`: where the photos are served from [default: the root recorded at ingest],
        a folder or an object-store URL (opened with `storage_options`). `detector`: a
        GarmentFinder, for photos searched garment by garment."""
        self.store = store
        self.metadata = store.require_metadata()
        if not self.metadata.get("model"):
            raise StoreError("the collection records no model; it was not made by `ingest run`")
        self.encoder = encoder
        self.detector = detector
        root = dataset or self.metadata.get("dataset_root")
        self.storage, self.dataset = LOCAL, None  # a Path on the local disk, else bucket/prefix
        if root:
            try:
                options = storage_options if is_remote(root) else None
                self.storage, where = split(str(root), options)
            except UserError as exc:  # e.g. no client for its protocol: searches still work
                log.warning("photos cannot be served: %s", exc)
                return
            self.dataset = Path(where).expanduser() if self.storage.local else where

    @property
    def local_dataset(self) -> Path | None:
        """The dataset folder when it is on this machine's disk (query photos may be in it)."""
        return self.dataset if self.storage.local else None

    # the model --------------------------------------------------------------------------------
    def _model(self):
        if self.encoder is None:
            raise ValueError("this search service was opened without the collection's model")
        return self.encoder

    def warm(self) -> None:
        """Run the model once, so the first real query is not the slow one."""
        size = self._model().spec.img_size
        self._model()(np.zeros((1, 3, size, size), np.uint8))
        if self.detector is not None:
            from PIL import Image

            self.detector(Image.new("RGB", (size, size)))

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        if not np.isfinite(vectors).all():
            raise StoreError("the model gave a non-finite query vector; rerun with --no-traced")
        return vectors

    def embed_files(self, paths: Sequence[str | Path], boxes: Sequence[Box | None]) -> np.ndarray:
        from embedder.inference import embed_files

        vectors = embed_files(self._model(), [str(p) for p in paths], list(boxes), batch_size=32)
        return self._check_vectors(vectors)

    def embed_upload(self, data: bytes, bbox: Box | None = None) -> np.ndarray:
        """One uploaded photo (bytes) → its vector; BadImage when it is not a usable image."""
        from embedder.transforms import eval_transform, load_pixels

        transform = eval_transform(self._model().spec)
        pixels = _readable(load_pixels, io.BytesIO(data), bbox, transform, strict_box=True)
        return self._check_vectors(self._model()(pixels[None]))

    # queries ----------------------------------------------------------------------------------
    def check(self, query: Query) -> Query:
        """The query with its filter values as the collection spells them (see check_filters)."""
        return replace(query, filters=check_filters(self.store, query.filters))

    def _answer(self, vectors: np.ndarray, query: Query, exclude: Sequence[str] = ()):
        return answer_vectors(self.store, vectors, query, exclude)

    def search_files(
        self,
        paths: Sequence[str | Path],
        query: Query,
        boxes: Sequence[Box | None] | None = None,
        whole: bool = False,
    ) -> list[Answer]:
        """Search with photo files; `boxes`: the garment's box in each photo, by default the
        annotated box of dataset photos, and for other photos each garment the detector finds
        (an answer per garment, only those of the --category's type), else the whole photo;
        `whole`: every photo whole. Everything is checked (files, filters) before the model
        loads."""
        paths = [check_query_file(p) for p in paths]
        query = self.check(query)
        known = dataset_points(self.store, paths, self.local_dataset)
        if whole:
            boxes = [None] * len(paths)
        seconds: dict[str, float] = {}
        asked: list[tuple[Path, Box | None, Garment | None, str | None, dict]] = []
        for n, (path, point) in enumerate(zip(paths, known, strict=True)):
            if boxes is not None or point or self.detector is None:
                box = boxes[n] if boxes is not None else boxes_of([point])[0]
                asked.append((path, box, None, None, point))
                continue
            with timed(seconds, "detector"):
                found, notice = self.garments_of(path, query)
            asked += [(path, g and g.box, g, notice, point) for g in found or [None]]
        with timed(seconds, "model"):
            vectors = self.embed_files([a[0] for a in asked], [a[1] for a in asked])
        queries = [self.garment_query(query, a[2]) for a in asked]
        results: list = [None] * len(asked)
        with timed(seconds, "store"):
            groups: dict[tuple, list[int]] = {}  # one store call per distinct filter set
            for i, q in enumerate(queries):
                groups.setdefault(tuple(sorted(q.filters.items())), []).append(i)
            for rows in groups.values():
                found = self._answer(vectors[rows], queries[rows[0]])
                for i, answer in zip(rows, found, strict=True):
                    results[i] = answer
        per = {stage: t / len(paths) for stage, t in seconds.items()}
        return [
            Answer(str(p), r, k.get("item_id"), seconds=dict(per), garment=g, notice=why)
            for (p, _, g, why, k), r in zip(asked, results, strict=True)
        ]

    def garment_query(self, query: Query, garment: Garment | None) -> Query:
        """The query for one garment found in a photo: without a category filter, restricted
        to the category its type implies (an upper-body garment among TOPS), where the
        collection has that category; as it is otherwise."""
        from embedder.spec import CATEGORY_TYPES, GARMENT_TYPES

        if garment is None or "category" in query.filters:
            return query
        kinds = {GARMENT_TYPES[k]: c for c, k in CATEGORY_TYPES.items()}
        category = kinds.get(garment.type)
        if category is None or category not in self.store.facet("category"):
            return query
        return replace(query, filters={**query.filters, "category": category})

    def detect(self, source) -> list[Garment]:
        """Every garment the detector finds in a photo (a path or a file object), best first,
        boxes in the upright photo's pixels; BadImage when it cannot be read. The photo is
        decoded no larger than the detector needs."""
        from embedder.transforms import photo_size

        try:
            size = photo_size(source)
            img = _decoded(source, None, self.detector.spec.img_size)
        except BadImage:
            raise
        except Exception as exc:  # not a photo, damaged
            raise _unreadable(exc) from None
        return self.detector(img, size=size)

    def garments_of(self, source, query: Query) -> tuple[list[Garment], str | None]:
        """The garments the detector finds in a photo of the type the query's category
        implies (all, when it implies none), best first; none: ([], the one-line notice)."""
        from embedder.boxes import of_category
        from embedder.spec import category_type

        category = query.filters.get("category")
        found = of_category(self.detect(source), category)
        if found:
            return found, None
        return [], searched_whole(category_type(category) if category else None)

    def ask(
        self,
        query: Query,
        photos: Sequence[str | Path] = (),
        like: Sequence[str] = (),
        unlike: Sequence[str] = (),
        bbox: Box | str = AUTO,
    ) -> list[Answer]:
        """The answers to one command: photo files (each in `bbox`; AUTO: its annotated box, or
        each garment the detector finds, or whole; WHOLE: whole), more like one stored photo,
        or like several and unlike others."""
        _one_kind(photos, like, unlike)
        if len(like) == 1 and not unlike:
            return [self.similar(like[0], query)]
        if like:
            ids = [self.resolve(p) for p in like], [self.resolve(p) for p in unlike]
            return [self.recommend(*ids, query)]
        if bbox in (AUTO, WHOLE):
            return self.search_files(photos, query, whole=bbox == WHOLE)
        return self.search_files(photos, query, [bbox] * len(photos))

    def search_upload(self, data: bytes, query: Query, bbox: Box | None = None) -> Answer:
        """An uploaded photo searched in `bbox`; without one, with a detector, in the garment
        that fits the query's category (else the best-scoring one), every garment found
        listed in the answer (`found`) for the page to outline."""
        query = self.check(query)
        seconds: dict[str, float] = {}
        found, chosen, notice = [], None, None
        if bbox is None and self.detector is not None:
            with timed(seconds, "detector"):
                found = self.detect(io.BytesIO(data))
            from embedder.boxes import of_category

            fits = of_category(found, query.filters.get("category"))
            chosen = (fits or found or [None])[0]
            bbox = chosen.box if chosen else None
            notice = None if chosen else searched_whole()
        with timed(seconds, "model"):
            vector = self.embed_upload(data, bbox)
        with timed(seconds, "store"):
            results = self._answer(vector, query)[0]
        return Answer(
            "upload",
            results,
            seconds=seconds,
            vector=vector[0],
            asked=Asked.upload,
            garment=chosen,
            notice=notice,
            found=found,
        )

    def resolve(self, point: str) -> str:
        """A point id, or a photo of the dataset: its path relative to the dataset, or the path
        of its file (absolute, or relative to the working folder) → its id."""
        try:
            return str(uuid.UUID(point))
        except ValueError:
            pass
        rel = point
        if not os.path.isabs(point) and Path(point).is_file():  # a file seen from here
            point = str(Path(point).resolve())
        if self.local_dataset is not None and os.path.isabs(point):
            try:
                rel = Path(point).resolve().relative_to(self.dataset.resolve()).as_posix()
            except ValueError:
                where = str(self.dataset)
                raise NotFound(f"{point!r} is not under the dataset {where!r}") from None
        return point_id(Path(rel).as_posix())

    def point(self, point: str) -> dict:
        """The stored payload of a point (id or dataset path), with its id."""
        pid = self.resolve(point)
        payload = self.store.retrieve([pid], list(SHOWN))
        if pid not in payload:
            raise NotFound(f"no stored photo {point!r} in collection {self.store.collection!r}")
        return {"id": pid, **payload[pid]}

    def similar(self, point: str, query: Query) -> Answer:
        """ "More like this" for a stored photo: its own vector as the query, itself left out."""
        query = self.check(query)
        stored = self.point(point)
        seconds = {"model": 0.0}
        with timed(seconds, "store"):
            vector = self.store.vectors([stored["id"]])[stored["id"]]
            results = self._answer(vector[None], query, exclude=[stored["id"]])[0]
        garment = stored.get(GROUP)
        return Answer(
            stored["id"], results, garment, shown=stored["id"], seconds=seconds, asked=Asked.similar
        )

    def recommend(
        self,
        positive: Sequence[str],
        negative: Sequence[str],
        query: Query,
        vectors: Sequence[Sequence[float]] = (),
    ) -> Answer:
        """More like these stored photos (and these query vectors, e.g. an uploaded photo's),
        not like those: Qdrant's recommendation (best score). The photos given are left out,
        and so is every photo of the garments marked as not it."""
        if not positive and not len(vectors):
            raise ValueError("give at least one photo (or photo vector) to look like")
        if len(positive) + len(vectors) > MAX_EXAMPLES or len(negative) > MAX_EXAMPLES:
            raise ValueError(f"give at most {MAX_EXAMPLES} photos to look like and unlike")
        if set(positive) & set(negative):
            raise ValueError("a photo cannot be both liked and not it: give it in one list")
        query = self.check(query)
        seconds = {"model": 0.0}
        with timed(seconds, "store"):
            liked, disliked = self._stored(positive), self._stored(negative)
            dim = self.metadata["dim"]
            extra = [self._example(v, dim) for v in vectors]
            unlike = [v for v, _ in disliked.values()]
            examples = Recommend(
                np.stack([v for v, _ in liked.values()] + extra),
                np.stack(unlike) if unlike else np.zeros((0, dim), np.float32),
            )
            exclude = Exclude(
                ids=tuple(liked) + tuple(disliked),
                items=tuple({g for _, g in disliked.values() if g}),
            )
            results = self._answer(examples, query, exclude)[0]
        first = next(iter(liked), None)  # the photo a contact sheet shows as the query
        return Answer("recommend", results, shown=first, seconds=seconds, asked=Asked.recommend)

    def _stored(self, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, str | None]]:
        """id → (stored vector, garment) for each id; NotFound for one that is not stored."""
        ids = list(dict.fromkeys(canonical_id(i) for i in ids))
        vectors = self.store.vectors(ids) if ids else {}
        garments = self.store.retrieve(ids, [GROUP]) if ids else {}
        for pid in ids:
            if pid not in vectors:
                raise NotFound(f"no stored photo {pid}")
        return {pid: (vectors[pid], garments.get(pid, {}).get(GROUP)) for pid in ids}

    @staticmethod
    def _example(vector: Sequence[float], dim: int) -> np.ndarray:
        """A query vector given by a client: `dim` finite numbers, normalised."""
        vec = np.asarray(vector, np.float32).reshape(-1)
        norm = float(np.linalg.norm(vec)) if vec.size == dim else 0.0
        if vec.size != dim or not np.isfinite(vec).all() or not 0 < norm < np.inf:
            raise ValueError(
                f"a photo vector must be {dim} finite numbers, not all zero, whose length is "
                f"finite (an upload's query_vector has length 1)"
            )
        return vec / norm

    def item(self, item_id: str) -> list[Hit]:
        """Every stored photo of one garment: shop photos first, then consumer, by path."""
        photos = [
            Hit(pid, None, payload)
            for points in self.store.scroll(256, vectors=False, filters={GROUP: item_id})
            for pid, payload in zip(points.ids, points.payloads, strict=True)
        ]
        if not photos:
            raise NotFound(f"no garment {item_id!r} in collection {self.store.collection!r}")
        return sorted(
            photos, key=lambda h: (h.payload.get("source") != "shop", h.payload.get("path", ""))
        )

    def facets(self) -> dict:
        """Counts for the filter controls: categories, subcategories per category, sources."""
        categories = self.store.facet("category")
        return {
            "categories": categories,
            "subcategories": {
                c: self.store.facet("subcategory", filters={"category": c})
                for c in sorted(categories)
            },
            "sources": self.store.facet("source"),
        }

    def info(self) -> dict:
        return {
            "collection": self.store.collection,
            "store": self.store.describe(),
            "points": self.store.count(),
            "model": self.metadata["model"],
            "index": self.store.index_settings(),
            "dataset_root": self.storage.url(str(self.dataset)) if self.dataset else None,
        }

    def image_file(self, point: str) -> PhotoFile:
        """The image file of a stored point, only ever a regular file below the dataset root
        once every symbolic link is followed, or an object below the dataset's prefix in its
        object store. Messages never show the server's paths."""
        pid = canonical_id(point)
        if self.dataset is None:
            raise NotFound("the collection records no dataset folder; start with --images DIR")
        rel = self.store.retrieve([pid], ["path"]).get(pid, {}).get("path")
        if not rel:
            raise NotFound(f"no stored photo {pid}")
        from embedder.transforms import IMAGE_SUFFIXES

        outside = NotFound(f"photo {pid} is not an image below the dataset folder")
        missing = NotFound(f"the image file of photo {pid} is missing")
        if not self.storage.local:
            return self._object(str(rel), outside, missing)
        try:
            root = self.dataset.resolve(strict=True)
            climbs_out = not (root / rel).resolve().is_relative_to(root)  # "../.." in the path
        except (OSError, RuntimeError):
            raise missing from None
        if climbs_out:
            raise outside
        try:
            path = (root / rel).resolve(strict=True)  # every link followed
        except (OSError, RuntimeError):  # missing, a loop of links, no permission
            raise missing from None
        if (
            not path.is_relative_to(root)  # a link that leads out of the dataset
            or path.suffix.lower() not in IMAGE_SUFFIXES
            or not path.is_file()
        ):
            raise outside
        stat = path.stat()
        return PhotoFile(str(path), LOCAL, stat.st_size, stat.st_mtime_ns)

    def image_origin(self) -> str | None:
        """Where presigned photo URLs lead (scheme://host[:port]), for the page's
        Content-Security-Policy; None for photos on this machine's disk. Signing is local:
        no request is made."""
        if self.dataset is None or self.storage.local:
            return None
        url = urlsplit(self.storage.sign(f"{self.dataset}/origin.jpg", 60))
        return f"{url.scheme}://{url.netloc}"

    def photo_source(self, point: str):
        """What Pillow opens for a stored point's photo (a path, or the object's bytes), or
        None when it cannot be had (a contact sheet draws a placeholder)."""
        try:
            return self.image_file(point).source()
        except (NotFound, StoreError, OSError):
            return None

    def _object(self, rel: str, outside: NotFound, missing: NotFound) -> PhotoFile:
        """image_file in an object store: the key is the dataset prefix and the stored path,
        normalised, and must stay below the prefix ("../" or an absolute path never leaves
        it); one HEAD request gives its length and change stamp."""
        from embedder.transforms import IMAGE_SUFFIXES

        prefix = str(self.dataset).rstrip("/")
        key = posixpath.normpath(f"{prefix}/{rel}")
        if (
            rel.startswith("/")
            or "\\" in rel
            or not key.startswith(prefix + "/")
            or posixpath.splitext(key)[1].lower() not in IMAGE_SUFFIXES
        ):
            raise outside
        try:
            size, changed = self.storage.head(key)
        except FileNotFoundError:
            raise missing from None
        except Exception as exc:  # the store does not answer: the service is unavailable
            raise StoreError(f"the photo store does not answer ({type(exc).__name__})") from None
        return PhotoFile(key, self.storage, size, changed)
