"""What the routes depend on, read from app.state (the lifespan puts it there), as annotated
types; tests may swap them with app.dependency_overrides. And the one table of errors to
HTTP statuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from embedder.errors import UserError
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
    collection: str | None = None  # None: search.schema.DEFAULT_COLLECTION
    images: str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    traced: bool = True
    workers: int = 1  # model worker threads
    max_batch: int = 16
    max_upload: int = DEFAULT_MAX_UPLOAD  # bytes
    host: str = "127.0.0.1"
    port: int = 8000


class TooLarge(UserError, ValueError):
    """An upload above the size cap (HTTP 413)."""


def too_large(limit: int) -> TooLarge:
    return TooLarge(f"the upload is larger than {limit / 1e6:g} MB")


# exception → status; the most specific class listed first wins (see status_of)
ERRORS: dict[type[Exception], int] = {
    BadImage: 400,
    NotFound: 404,
    TooLarge: 413,
    UnknownValue: 422,
    Busy: 503,
    StoreError: 503,
    ValueError: 422,
}


def status_of(exc: Exception) -> int:
    return next(ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS)


async def answer_error(_request: Request, exc: Exception) -> JSONResponse:
    """One line of detail and the status from ERRORS; never a traceback."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    body = {"detail": text}
    if isinstance(exc, UnknownValue):
        body["known"] = exc.known
    return JSONResponse(body, status_code=status_of(exc))


async def get_service(request: Request) -> SearchService:
    return request.app.state.service


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
