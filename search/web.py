"""The web app (`search serve`): the page at /, a JSON API over the search service at /api,
photos by point id at /images, health and Prometheus metrics. No query logic of its own."""

from __future__ import annotations

import io
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field

from embedder.errors import UserError
from search.batcher import Batcher, Busy
from search.service import (
    MAX_TOP,
    Answer,
    BadImage,
    Grouping,
    NotFound,
    SearchService,
    Source,
    UnknownValue,
)
from search.service import Query as SearchQuery
from search.store import Hit, StoreError

log = logging.getLogger(__name__)
THUMB_SIZES = (128, 256, 512)
Top = Annotated[int, Query(ge=1, le=MAX_TOP, description="Results (garments or photos).")]
DEFAULT_MAX_UPLOAD = 20_000_000


@dataclass(frozen=True)
class Settings:
    """What `search serve` was told: where the collection is, the model, the limits."""

    store: str | None = None
    url: str | None = None
    collection: str = "deepfashion"
    images: str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    traced: bool = True
    workers: int = 1  # model worker threads
    max_batch: int = 16
    max_upload: int = DEFAULT_MAX_UPLOAD  # bytes


# response models (the OpenAPI page at /docs shows these) --------------------------------------
class Photo(BaseModel):
    id: str
    score: float | None = None
    category: str | None = None
    subcategory: str | None = None
    item_id: str | None = None
    source: str | None = None
    split: str | None = None
    path: str | None = None
    bbox: list[int] | None = None
    image_url: str = Field(description="The photo, served by point id.")
    thumb_url: str = Field(description="A 256-px thumbnail of the photo.")


class ResultOut(BaseModel):
    rank: int
    score: float
    matches: int = Field(description="Photos of this garment that matched (1 when ungrouped).")
    photo: Photo = Field(description="The best-scoring photo.")
    photos: list[Photo] = Field(description="The garment's matching photos, best first.")


class SearchOut(BaseModel):
    query: str = Field(description="'upload', or the point id of a 'more like this' search.")
    query_item: str | None = Field(None, description="The query photo's garment, if stored.")
    group: Grouping
    filters: dict[str, str]
    results: list[ResultOut]
    timings_ms: dict[str, float]


class ItemOut(BaseModel):
    item_id: str
    photos: list[Photo]


class FacetsOut(BaseModel):
    categories: dict[str, int]
    subcategories: dict[str, dict[str, int]]
    sources: dict[str, int]


class InfoOut(BaseModel):
    collection: str
    store: str
    points: int
    model: dict
    index: dict
    dataset_root: str | None
    max_upload_bytes: int
    thumb_sizes: list[int]


PHOTO_FIELDS = ("category", "subcategory", "item_id", "source", "split", "path", "bbox")


def photo(hit: Hit, score: bool = True) -> dict:
    """A stored photo as the API shows it (the Photo model's fields)."""
    p = hit.payload
    return {
        "id": hit.id,
        "score": hit.score if score else None,
        **{k: p.get(k) for k in PHOTO_FIELDS},
        "image_url": f"/images/{hit.id}.jpg",
        "thumb_url": f"/images/{hit.id}.jpg?size=256",
    }


def answer_out(answer: Answer, query: SearchQuery) -> JSONResponse:
    """A SearchOut as JSON, built from plain data: validating hundreds of photo models again on
    every answer cost a noticeable share of a query's time."""
    return JSONResponse(
        {
            "query": answer.query,
            "query_item": answer.item_id,
            "group": query.group.value,
            "filters": dict(query.filters),
            "results": [
                {
                    "rank": r.rank,
                    "score": r.hit.score,
                    "matches": r.matches,
                    "photo": photo(r.hit),
                    "photos": [photo(h) for h in r.photos],
                }
                for r in answer.results
            ],
            "timings_ms": {k: round(v * 1000, 2) for k, v in answer.seconds.items()},
        }
    )


class Metrics:
    """Prometheus metrics of one app: requests and latency per endpoint, model and store time."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "Requests by endpoint and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.model = Histogram(
            "search_model_seconds",
            "Model time per query (decode + forward).",
            registry=self.registry,
        )
        self.store = Histogram(
            "search_store_seconds", "Store time per query.", registry=self.registry
        )
        self.batch = Histogram(
            "model_batch_images",
            "Images per forward pass.",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )

    def observe(self, answer: Answer) -> None:
        self.model.observe(answer.seconds.get("model", 0.0))
        self.store.observe(answer.seconds.get("store", 0.0))


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if not text:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError("bbox takes x1,y1,x2,y2 in the uploaded photo's pixels") from None
    if not x2 > x1 or not y2 > y1:
        raise ValueError("bbox needs x2 > x1 and y2 > y1")
    return x1, y1, x2, y2


class TooLarge(UserError, ValueError):
    """An upload above the size cap (HTTP 413)."""


def _page() -> str:
    return resources.files("search").joinpath("static/index.html").read_text(encoding="utf-8")


def open_service(settings: Settings) -> SearchService:
    """Open the collection and check its model: errors here stop `serve` before it listens."""
    from search.stores import open_store

    store = open_store(
        store_dir=settings.store, url=settings.url, collection=settings.collection, read_only=True
    )
    try:
        service = SearchService(
            store,
            weights=settings.weights,
            device=settings.device,
            precision=settings.precision,
            traced=settings.traced,
            images=settings.images,
        )
        service.prepare()  # load (and check) the model now, not at the first query
    except BaseException:
        store.close()
        raise
    return service


def create_app(service: SearchService, settings: Settings = Settings()) -> FastAPI:
    """The app around an open service; the app owns it from now on (closed at shutdown)."""
    metrics = Metrics()
    service.forward = Batcher(
        service.encoder,
        workers=settings.workers,
        max_batch=settings.max_batch,
        on_batch=lambda n, _s: metrics.batch.observe(n),
    )
    page = _page()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.warm()
        yield
        service.close()
        service.store.close()

    app = FastAPI(
        title="fashion-retrieval",
        summary="Find a garment from a photo: consumer-to-shop search over a Qdrant collection.",
        version="0.1.0",
        lifespan=lifespan,
    )

    # errors: one line, the right status; never a traceback to the client ---------------------
    def error(status: int, exc: Exception, **extra) -> JSONResponse:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse({"detail": text, **extra}, status_code=status)

    app.add_exception_handler(BadImage, lambda r, e: error(400, e))
    app.add_exception_handler(NotFound, lambda r, e: error(404, e))
    app.add_exception_handler(TooLarge, lambda r, e: error(413, e))
    app.add_exception_handler(UnknownValue, lambda r, e: error(422, e, known=e.known))
    app.add_exception_handler(Busy, lambda r, e: error(503, e))
    app.add_exception_handler(StoreError, lambda r, e: error(503, e))
    app.add_exception_handler(ValueError, lambda r, e: error(422, e))

    @app.middleware("http")
    async def measure(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_upload + 65536:
            response = error(413, TooLarge(_too_large(settings.max_upload)))
        else:
            started = time.perf_counter()
            try:
                response = await call_next(request)
            except Exception:  # a bug: log it, answer 500, keep serving
                log.exception("error serving %s", request.url.path)
                response = JSONResponse({"detail": "internal server error (logged)"}, 500)
            route = request.scope.get("route")
            endpoint = getattr(route, "path", "other")
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
            return response
        metrics.requests.labels("too-large", request.method, "413").inc()
        return response

    # the page, health, metrics -----------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        """Liveness and readiness: the collection answers a count."""
        return {"status": "ok", "points": service.info()["points"]}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus metrics: requests and latency per endpoint, model and store time."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # the API ----------------------------------------------------------------------------------
    @app.get("/api/info", response_model=InfoOut, tags=["collection"])
    def info() -> InfoOut:
        """Collection size, the model that made it, index settings, upload limit."""
        return InfoOut(
            **service.info(), max_upload_bytes=settings.max_upload, thumb_sizes=list(THUMB_SIZES)
        )

    @app.get("/api/facets", response_model=FacetsOut, tags=["collection"])
    def facets() -> FacetsOut:
        """Categories, subcategories per category, and sources, with their photo counts."""
        return FacetsOut(**service.facets())

    @app.post("/api/search", response_model=SearchOut, tags=["search"])
    def search(
        file: Annotated[UploadFile, File(description="The photo (JPEG, PNG, WebP, ...).")],
        top: Annotated[int, Form(ge=1, le=MAX_TOP)] = 20,
        category: Annotated[str | None, Form()] = None,
        subcategory: Annotated[str | None, Form()] = None,
        source: Annotated[Source | None, Form()] = None,
        bbox: Annotated[
            str | None, Form(description="x1,y1,x2,y2: the garment in the photo's pixels.")
        ] = None,
        group: Annotated[Grouping, Form()] = Grouping.item,
    ) -> JSONResponse:
        """Find the photos (or garments) most like an uploaded photo."""
        query = SearchQuery.make(top, category, subcategory, source, group)
        box = _bbox(bbox)
        data = file.file.read(settings.max_upload + 1)
        if len(data) > settings.max_upload:
            raise TooLarge(_too_large(settings.max_upload))
        if not data:
            raise BadImage("the upload is empty")
        answer = service.search_upload(data, query, box)
        metrics.observe(answer)
        return answer_out(answer, query)

    @app.get("/api/points/{point_id}/similar", response_model=SearchOut, tags=["search"])
    def similar(
        point_id: str,
        top: Top = 20,
        category: str | None = None,
        subcategory: str | None = None,
        source: Source | None = None,
        group: Grouping = Grouping.item,
    ) -> JSONResponse:
        """More like this stored photo (itself left out), with the same filters and grouping."""
        query = SearchQuery.make(top, category, subcategory, source, group)
        answer = service.similar(point_id, query)
        metrics.observe(answer)
        return answer_out(answer, query)

    @app.get("/api/points/{point_id}", response_model=Photo, tags=["collection"])
    def point(point_id: str) -> Photo:
        """One stored photo's payload."""
        stored = service.point(point_id)
        return Photo(**photo(Hit(stored["id"], 1.0, stored), score=False))

    @app.get("/api/items/{item_id}", response_model=ItemOut, tags=["collection"])
    def item(item_id: str) -> ItemOut:
        """Every stored photo of one garment, shop photos first."""
        return ItemOut(
            item_id=item_id, photos=[photo(h, score=False) for h in service.item(item_id)]
        )

    @app.get("/images/{point_id}.jpg", tags=["images"], response_class=Response)
    def image(
        point_id: str,
        size: Annotated[
            int | None, Query(description=f"Thumbnail: longest side, one of {THUMB_SIZES}.")
        ] = None,
    ) -> Response:
        """A stored photo, by point id only (never by path), or a JPEG thumbnail of it."""
        if size is not None and size not in THUMB_SIZES:
            raise ValueError(f"size must be one of {', '.join(map(str, THUMB_SIZES))}")
        path = service.image_file(point_id)
        headers = {"Cache-Control": "public, max-age=86400"}
        if size is None:
            return FileResponse(path, headers=headers)
        stat = os.stat(path)
        return Response(
            _thumbnail(str(path), size, stat.st_mtime_ns, stat.st_size),
            media_type="image/jpeg",
            headers=headers,
        )

    return app


def _too_large(limit: int) -> str:
    return f"the upload is larger than {limit / 1e6:g} MB"


@lru_cache(maxsize=4096)
def _thumbnail(path: str, size: int, _mtime: int, _bytes: int) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(img).convert("RGB")
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85)
    return out.getvalue()


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Open the collection and model, then serve until Ctrl-C."""
    import uvicorn

    service = open_service(settings)
    app = create_app(service, settings)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    print(
        f"serving collection {service.store.collection!r} ({service.store.describe()}, "
        f"{service.info()['points']} points) at http://{shown}:{port}/  (API docs: /docs)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
