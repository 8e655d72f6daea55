"""What the routes depend on, read from app.state (the lifespan puts it there), as annotated
types; tests may swap them with app.dependency_overrides. And the one table of errors to
HTTP statuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from embedder.errors import UserError, first_line
from embedder.recipe import RunOptions
from search.batcher import Busy
from search.service import BadImage, NotFound, SearchService, UnknownValue
from search.store import StoreError
from search.web.metrics import Metrics

DEFAULT_MAX_UPLOAD = 20_000_000


@dataclass(frozen=True)
class Settings:
    """What `search serve` was told: where the collection is, the model, the limits."""

    store: str | None = None
    url: str | None = None
    collection: str | None = None  # None: search.store.schema.DEFAULT_COLLECTION
    images: str | None = None  # a folder or an object-store URL [default: the ingest root]
    storage_options: dict = field(default_factory=dict, repr=False)  # its fsspec keywords
    image_redirect: bool = False  # photos in an object store: 307 to a presigned URL
    weights: str | None = None  # the collection's weights file, if it moved since ingest
    detector: str | None = None  # a garment detector [default: the collection's, if any]
    run: RunOptions = RunOptions(traced=True)  # device, precision, runtime, int8
    workers: int = 1  # model worker threads
    max_batch: int = 16
    max_upload: int = DEFAULT_MAX_UPLOAD  # bytes
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)  # never printed or logged
    allowed_hosts: tuple[str, ...] = ()  # Host headers answered, besides localhost and `host`
    body_timeout: float = 30.0  # seconds for a whole request body to arrive
    header_timeout: float = 10.0  # seconds for a request's headers to arrive
    client_connections: int = 32  # connections one client address may hold open at once

    def hosts(self) -> list[str]:
        """The Host names answered (any other is 400: a DNS-rebinding page cannot read a
        server that only listens on localhost); "*" answers any."""
        return sorted({"localhost", "127.0.0.1", "::1", "[::1]", self.host, *self.allowed_hosts})


class Unsupported(UserError, ValueError):
    """A stored file that is not an image the app serves (HTTP 415)."""


class TooLarge(UserError, ValueError):
    """An upload above the size cap (HTTP 413)."""


def too_large(limit: int) -> TooLarge:
    return TooLarge(f"The upload is larger than {limit / 1e6:g} MB.")


# exception → status; the most specific class listed first wins (see status_of)
ERRORS: dict[type[Exception], int] = {
    BadImage: 400,
    NotFound: 404,
    TooLarge: 413,
    Unsupported: 415,
    UnknownValue: 422,
    RequestValidationError: 422,
    Busy: 503,
    StoreError: 503,
    ValueError: 422,
}


def status_of(exc: Exception) -> int:
    return next(ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS)


def _invalid(exc: RequestValidationError) -> str:
    """What was wrong with a request's parameters, in one line, without echoing them."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg"))
    return "; ".join(parts) or "invalid request"


async def answer_error(_request: Request, exc: Exception) -> JSONResponse:
    """One line of detail and the status from ERRORS; never a traceback, never the input."""
    if isinstance(exc, RequestValidationError):
        text = _invalid(exc)
    else:
        text = first_line(exc)
    body = {"detail": text[:500]}
    if isinstance(exc, UnknownValue):
        body["known"] = exc.known
    return JSONResponse(body, status_code=status_of(exc))


async def get_service(request: Request) -> SearchService:
    return request.app.state.service


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_photos(request: Request):
    return request.app.state.photos


ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
PhotosDep = Annotated[object, Depends(get_photos)]  # search.web.photos.PhotoCache
