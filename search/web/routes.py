"""The app's routes, one router each: the page and operations, the JSON API, the photos, the
API docs (served from the package: no CDN)."""

from __future__ import annotations

import inspect
import os
from functools import lru_cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, create_model

from search.service import MAX_EXAMPLES, MAX_TOP, BadImage, Grouping, canonical_id
from search.service import Query as SearchQuery
from search.store import Hit, schema
from search.web.deps import (
    MetricsDep,
    PhotosDep,
    ServiceDep,
    SettingsDep,
    too_large,
)
from search.web.guard import KEY_COOKIE, key_matches
from search.web.models import (
    THUMB_SIZES,
    FacetsOut,
    InfoOut,
    ItemOut,
    Photo,
    SearchOut,
    ThumbSize,
    answer_out,
    photo,
    responses,
)
from search.web.photos import MEDIA_TYPES

SIGNED_SECONDS = 300  # how long a presigned photo URL (--image-redirect) reads the object

TOP = "Results (garments or photos); top + offset is at most 1000."
OFFSET = "Results already shown: the page after them; top + offset is at most 1000."
STATIC = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

pages = APIRouter()
api = APIRouter(prefix="/api")
images = APIRouter(prefix=schema.IMAGES.rstrip("/"), tags=["images"])
docs = APIRouter(include_in_schema=False)


# the page, health, metrics ------------------------------------------------------------------
@lru_cache(maxsize=16)
def _static(name: str) -> bytes:
    return resources.files("search").joinpath("static", name).read_bytes()


@pages.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-cache"})


@pages.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    """The page's script, style and icon: a fixed set of names, nothing else."""
    suffix = os.path.splitext(name)[1]
    if name not in ("app.js", "app.css", "favicon.svg") or suffix not in STATIC:
        return JSONResponse({"detail": "not found"}, 404)
    return Response(_static(name), media_type=STATIC[suffix], headers={"Cache-Control": "no-cache"})


@pages.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return Response(_static("favicon.svg"), media_type=STATIC[".svg"])


@pages.get("/healthz", tags=["operations"], responses=responses())
def healthz(service: ServiceDep) -> dict:
    """Liveness and readiness: the collection answers a count."""
    return {"status": "ok", "points": service.info()["points"]}


@pages.get("/metrics", tags=["operations"], response_class=Response, responses=responses())
def prometheus(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests and latency per endpoint, model and store time."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class KeyIn(BaseModel):
    key: str = Field(max_length=512)


@pages.post("/auth", status_code=204, tags=["operations"], responses=responses())
def auth(body: KeyIn, request: Request, settings: SettingsDep) -> Response:
    """Check an access key and keep it in a cookie for the page (HttpOnly, same site)."""
    if not settings.api_key or not key_matches(body.key, settings.api_key):
        return JSONResponse({"detail": "That key is not right."}, 401)
    response = Response(status_code=204)
    response.set_cookie(
        KEY_COOKIE,
        body.key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


# the API ------------------------------------------------------------------------------------
@api.get("/info", response_model=InfoOut, tags=["collection"], responses=responses())
def info(service: ServiceDep, settings: SettingsDep) -> InfoOut:
    """Collection size, the model that made it, index settings, the request limits and the
    photo formats taken. The server's paths only when the server has an access key."""
    from embedder.transforms import IMAGE_FORMATS

    about = service.info()
    if not settings.api_key:
        about = {**about, "store": service.store.kind, "dataset_root": None}
    return InfoOut(
        **about,
        max_upload_bytes=settings.max_upload,
        max_top=MAX_TOP,
        thumb_sizes=list(THUMB_SIZES),
        formats=list(IMAGE_FORMATS),
        access_key=bool(settings.api_key),
        filters=[
            {"name": f.name, "description": f.description, "choices": list(f.choices)}
            for f in schema.FILTER_FIELDS
        ],
    )


@api.get("/facets", response_model=FacetsOut, tags=["collection"], responses=responses())
def facets(service: ServiceDep) -> FacetsOut:
    """Categories, subcategories per category, and sources, with their photo counts."""
    return FacetsOut(**service.facets())


def _filter_type(field: schema.PayloadField, nullable: bool = False):
    """A filter's type: its choices or text; a form field or URL parameter is left out for no
    filter (a JSON body may also send null)."""
    kind = schema.CHOICES.get(field.name, str)
    return kind | None if nullable else kind


def _filter_rules(field: schema.PayloadField) -> dict:
    """A filter parameter's documented bounds: a free-text value at most 200 characters."""
    limit = {} if field.name in schema.CHOICES else {"max_length": 200}
    return {**limit, "description": field.filter_help}


def query_params(kind) -> object:
    """One dependency that builds a search's Query from a request's form fields (kind=Form)
    or URL parameters (kind=Query): top, offset, group and a parameter per schema filter."""

    def make(top: int, offset: int, group: Grouping, **filters) -> SearchQuery:
        return SearchQuery.make(top, group, offset=offset, **filters)

    def param(name: str, default, annotation) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )

    make.__signature__ = inspect.Signature(
        [
            param("top", 20, Annotated[int, kind(ge=1, le=MAX_TOP, description=TOP)]),
            param("offset", 0, Annotated[int, kind(ge=0, le=MAX_TOP, description=OFFSET)]),
            *(
                param(f.name, None, Annotated[_filter_type(f), kind(**_filter_rules(f))])
                for f in schema.FILTER_FIELDS
            ),
            param("group", Grouping.item, Annotated[Grouping, kind()]),
        ],
        return_annotation=SearchQuery,
    )
    return Depends(make)


FormQuery = Annotated[SearchQuery, query_params(Form)]
UrlQuery = Annotated[SearchQuery, query_params(Query)]


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


async def one_file(request: Request) -> None:
    """A search takes exactly one photo: several `file` parts are refused, not guessed at."""
    form = await request.form()
    if len(form.getlist("file")) > 1:
        raise BadImage("Send one photo at a time (the request had several files).")


@api.post(
    "/search",
    response_model=SearchOut,
    tags=["search"],
    dependencies=[Depends(one_file)],
    responses=responses(403),
)
def search(
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    file: Annotated[
        UploadFile,
        File(
            description="The photo: JPEG, PNG, WebP or BMP, not empty.",
            json_schema_extra={"minLength": 1},
        ),
    ],
    query: FormQuery,
    bbox: Annotated[
        str | None,
        Form(max_length=200, description="x1,y1,x2,y2: the garment in the photo's pixels."),
    ] = None,
) -> JSONResponse:
    """Find the photos (or garments) most like an uploaded photo. The answer carries the
    photo's vector (`query_vector`), to send back with likes to /api/recommend."""
    box = _bbox(bbox)
    data = file.file.read(settings.max_upload + 1)
    if len(data) > settings.max_upload:
        raise too_large(settings.max_upload)
    if not data:
        raise BadImage("The upload is empty: choose a photo.")
    answer = service.search_upload(data, query, box)
    metrics.observe(answer)
    return answer_out(answer, query)


@api.get(
    "/points/{point_id}/similar",
    response_model=SearchOut,
    tags=["search"],
    responses=responses(404),
)
def similar(
    service: ServiceDep,
    metrics: MetricsDep,
    point_id: str,
    query: UrlQuery,
) -> JSONResponse:
    """More like this stored photo (itself left out), with the same filters and grouping."""
    answer = service.similar(canonical_id(point_id), query)
    metrics.observe(answer)
    return answer_out(answer, query)


PointId = Annotated[str, Field(max_length=36)]
MAX_DIM = 4096  # the longest vector a body may carry (a collection's own size is checked)


class Examples(BaseModel):
    """More like these, not like those: at least one liked photo or vector."""

    model_config = {
        "json_schema_extra": {
            "anyOf": [
                {"required": ["positive"], "properties": {"positive": {"minItems": 1}}},
                {"required": ["vectors"], "properties": {"vectors": {"minItems": 1}}},
            ]
        }
    }

    positive: list[PointId] = Field([], max_length=MAX_EXAMPLES, description="Liked photos.")
    negative: list[PointId] = Field(
        [], max_length=MAX_EXAMPLES, description="Photos that are not it: their garments go."
    )
    vectors: list[Annotated[list[float], Field(max_length=MAX_DIM)]] = Field(
        [],
        max_length=4,
        description="Query vectors to like too: an upload's query_vector (the collection's "
        "size, finite, not all zero).",
    )
    top: int = Field(20, ge=1, le=MAX_TOP, description=TOP)
    offset: int = Field(0, ge=0, le=MAX_TOP, description=OFFSET)
    group: Grouping = Grouping.item


RecommendIn = create_model(
    "RecommendIn",
    __base__=Examples,
    **{
        f.name: (_filter_type(f, nullable=True), Field(None, **_filter_rules(f)))
        for f in schema.FILTER_FIELDS
    },
)


@api.post("/recommend", response_model=SearchOut, tags=["search"], responses=responses(403, 404))
def recommend(service: ServiceDep, metrics: MetricsDep, body: RecommendIn) -> JSONResponse:
    """Qdrant's recommendation (best score) from liked and disliked photos, with the same
    filters, grouping and paging as a search."""
    filters = {name: getattr(body, name) for name in schema.FILTERS}
    query = SearchQuery.make(body.top, body.group, offset=body.offset, **filters)
    answer = service.recommend(body.positive, body.negative, query, body.vectors)
    metrics.observe(answer)
    return answer_out(answer, query)


@api.get("/points/{point_id}", response_model=Photo, tags=["collection"], responses=responses(404))
def point(service: ServiceDep, point_id: str) -> Photo:
    """One stored photo's payload."""
    stored = service.point(canonical_id(point_id))
    return Photo(**photo(Hit(stored["id"], 1.0, stored), score=False))


@api.get("/items/{item_id}", response_model=ItemOut, tags=["collection"], responses=responses(404))
def item(service: ServiceDep, item_id: Annotated[str, Path(max_length=200)]) -> ItemOut:
    """Every stored photo of one garment, shop photos first."""
    return ItemOut(item_id=item_id, photos=[photo(h, score=False) for h in service.item(item_id)])


# photos -------------------------------------------------------------------------------------
@images.get(
    "/{point_id}.jpg",
    response_class=Response,
    responses={
        200: {"content": {m: {} for m in MEDIA_TYPES.values()}},
        307: {"description": "--image-redirect: the photo's presigned URL (Location)"},
        **responses(404, 415, 503),
    },
)
def image(
    service: ServiceDep,
    photos: PhotosDep,
    settings: SettingsDep,
    point_id: str,
    size: Annotated[
        ThumbSize | None, Query(description="Thumbnail: its longest side, in pixels.")
    ] = None,
) -> Response:
    """A stored photo, by point id only (never by path), or a JPEG thumbnail of it. Only a
    regular file below the dataset folder once links are followed (or an object below the
    dataset's prefix in its object store), and only an image. With --image-redirect, a photo
    in an object store is a 307 to a presigned URL valid for SIGNED_SECONDS."""
    photo = service.image_file(point_id)
    if settings.image_redirect and size is None and not photo.storage.local:
        return RedirectResponse(photo.signed_url(SIGNED_SECONDS), status_code=307)
    data, kind = photos.get(photo, int(size) if size else None)
    return Response(data, media_type=kind, headers={"Cache-Control": "private, max-age=86400"})


# the API docs, from the package -------------------------------------------------------------
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fashion-retrieval API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/start.js"></script></body></html>"""
START = b'SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});'


@docs.get("/docs", response_class=HTMLResponse)
def api_docs() -> HTMLResponse:
    """Swagger UI, every file served by this app (works offline; the CSP allows only it)."""
    return HTMLResponse(DOCS_PAGE)


@docs.get("/docs/assets/{name}")
def docs_asset(name: str) -> Response:
    if name == "start.js":
        return Response(START, media_type="text/javascript")
    if name not in ("swagger-ui.css", "swagger-ui-bundle.js"):
        return JSONResponse({"detail": "not found"}, 404)
    data = resources.files("fastapi_offline").joinpath("static", name).read_bytes()
    return Response(
        data,
        media_type=STATIC[os.path.splitext(name)[1]],
        headers={"Cache-Control": "public, max-age=86400"},
    )
