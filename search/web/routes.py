"""The app's routes, one router each: the page and operations, the JSON API, the photos."""

from __future__ import annotations

import io
import os
from functools import lru_cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from search.service import MAX_TOP, BadImage, Grouping, Source
from search.service import Query as SearchQuery
from search.store import Hit
from search.web.deps import MetricsDep, ServiceDep, SettingsDep, too_large
from search.web.models import (
    THUMB_SIZES,
    FacetsOut,
    InfoOut,
    ItemOut,
    Photo,
    SearchOut,
    answer_out,
    photo,
)

Top = Annotated[int, Query(ge=1, le=MAX_TOP, description="Results (garments or photos).")]

pages = APIRouter()
api = APIRouter(prefix="/api")
images = APIRouter(prefix="/images", tags=["images"])


# the page, health, metrics ------------------------------------------------------------------
@lru_cache(maxsize=1)
def _page() -> str:
    return resources.files("search").joinpath("static/index.html").read_text(encoding="utf-8")


@pages.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})


@pages.get("/healthz", tags=["operations"])
def healthz(service: ServiceDep) -> dict:
    """Liveness and readiness: the collection answers a count."""
    return {"status": "ok", "points": service.info()["points"]}


@pages.get("/metrics", tags=["operations"], response_class=Response)
def prometheus(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency per endpoint, model and store time."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# the API ------------------------------------------------------------------------------------
@api.get("/info", response_model=InfoOut, tags=["collection"])
def info(service: ServiceDep, settings: SettingsDep) -> InfoOut:
    """Collection size, the model that made it, index settings, the request limits."""
    return InfoOut(
        **service.info(),
        max_upload_bytes=settings.max_upload,
        max_top=MAX_TOP,
        thumb_sizes=list(THUMB_SIZES),
    )


@api.get("/facets", response_model=FacetsOut, tags=["collection"])
def facets(service: ServiceDep) -> FacetsOut:
    """Categories, subcategories per category, and sources, with their photo counts."""
    return FacetsOut(**service.facets())


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


@api.post("/search", response_model=SearchOut, tags=["search"])
def search(
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
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
    query = SearchQuery.make(top, group, category=category, subcategory=subcategory, source=source)
    box = _bbox(bbox)
    data = file.file.read(settings.max_upload + 1)
    if len(data) > settings.max_upload:
        raise too_large(settings.max_upload)
    if not data:
        raise BadImage("the upload is empty")
    answer = service.search_upload(data, query, box)
    metrics.observe(answer)
    return answer_out(answer, query)


@api.get("/points/{point_id}/similar", response_model=SearchOut, tags=["search"])
def similar(
    service: ServiceDep,
    metrics: MetricsDep,
    point_id: str,
    top: Top = 20,
    category: str | None = None,
    subcategory: str | None = None,
    source: Source | None = None,
    group: Grouping = Grouping.item,
) -> JSONResponse:
    """More like this stored photo (itself left out), with the same filters and grouping."""
    query = SearchQuery.make(top, group, category=category, subcategory=subcategory, source=source)
    answer = service.similar(point_id, query)
    metrics.observe(answer)
    return answer_out(answer, query)


@api.get("/points/{point_id}", response_model=Photo, tags=["collection"])
def point(service: ServiceDep, point_id: str) -> Photo:
    """One stored photo's payload."""
    stored = service.point(point_id)
    return Photo(**photo(Hit(stored["id"], 1.0, stored), score=False))


@api.get("/items/{item_id}", response_model=ItemOut, tags=["collection"])
def item(service: ServiceDep, item_id: str) -> ItemOut:
    """Every stored photo of one garment, shop photos first."""
    return ItemOut(item_id=item_id, photos=[photo(h, score=False) for h in service.item(item_id)])


# photos -------------------------------------------------------------------------------------
@images.get("/{point_id}.jpg", response_class=Response)
def image(
    service: ServiceDep,
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
