"""The app: its lifespan opens the collection and the model pool and closes them; create_app
assembles the routers, the error table and the request metrics; run serves it."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from search.batcher import Batcher
from search.service import SearchService
from search.web.deps import ERRORS, Settings, answer_error
from search.web.guard import (
    BodyLimit,
    HeadAsGet,
    HostCheck,
    KeyRequired,
    RequestLimits,
    SecurityHeaders,
    protocol,
)
from search.web.metrics import Metrics
from search.web.photos import PhotoCache
from search.web.routes import api, docs, images, pages

__all__ = ["Settings", "create_app", "open_service", "run"]
log = logging.getLogger(__name__)
UPLOADS = ("/api/search",)  # the routes that take a photo; every other body is small JSON
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@contextlib.contextmanager
def open_service(settings: Settings, metrics: Metrics) -> Iterator[SearchService]:
    """The collection, and its model (checked; on a CPU OpenVINO's, or torch's traced copy)
    behind a batching pool; its garment detector (or settings.detector), if any."""
    from embedder.recipe import DetectorRecipe, ModelRecipe
    from search.store import open_store
    from search.store.schema import DEFAULT_COLLECTION

    with open_store(
        store_dir=settings.store,
        url=settings.url,
        collection=settings.collection or DEFAULT_COLLECTION,
        read_only=True,
    ) as store:
        metadata = store.require_metadata()
        recipe = ModelRecipe.for_collection(metadata, settings.weights, settings.run)
        model = recipe.build(throughput=True)  # OpenVINO's, or torch's traced copy (no GIL)
        pool = Batcher(
            model,
            workers=settings.workers,
            max_batch=settings.max_batch,
            on_batch=metrics.on_batch,
        )
        finder = DetectorRecipe.for_collection(metadata, settings.detector, settings.run)
        yield SearchService(
            store,
            pool,
            dataset=settings.images,
            storage_options=settings.storage_options,
            detector=finder.build() if finder else None,
        )


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """The service run() opened before the server started, or (an app served by a test
    client) one opened here; the model warmed; where it serves said; closed at shutdown."""
    settings: Settings = app.state.settings
    with contextlib.ExitStack() as stack:
        service = getattr(app.state, "service", None)
        if service is None:
            service = stack.enter_context(open_service(settings, app.state.metrics))
            app.state.service = service
        service.warm()
        app.state.image_origin = service.image_origin() if settings.image_redirect else None
        if (ready := getattr(app.state, "ready", None)) is not None:
            info = service.info()
            shown = "localhost" if settings.host in ("127.0.0.1", "::1") else settings.host
            ready(
                f"serving collection {info['collection']!r} ({info['store']}, {info['points']} "
                f"points) at http://{shown}:{settings.port}/  (API docs: /docs)"
            )
        yield


class Measure:
    """Requests and latency per endpoint; a bug is logged and answered 500, and the server
    keeps serving. Pure ASGI: Starlette's @app.middleware("http") form costs a task and a
    stream per request, a noticeable share of a small model's query."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {}

        async def sent(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        except Exception:
            log.exception("error serving %s", scope.get("path", "?"))
            if not status:  # nothing sent yet: answer it (else the connection just ends)
                failed = JSONResponse({"detail": "internal server error (logged)"}, 500)
                await failed(scope, receive, sent)
        # labels from closed sets: route templates, known methods, the app's own statuses
        endpoint = getattr(scope.get("route"), "path", "other")
        method = scope["method"] if scope["method"] in METHODS else "other"
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        code = str(status.get("code", 500))
        self.metrics.requests.labels(endpoint, method, code).inc()


def create_app(settings: Settings = Settings()) -> FastAPI:
    """The app for `settings`; the collection and model open when it starts (its lifespan).
    Outermost first: security headers, the Host check, the body budget, the key."""
    app = FastAPI(
        title="fashion-retrieval",
        summary="Find a garment from a photo: consumer-to-shop search over a Qdrant collection.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by routes.docs from the package: works offline, same origin
        redoc_url=None,
    )
    app.state.settings, app.state.metrics = settings, Metrics()
    app.state.photos = PhotoCache()
    for router in (pages, api, images, docs):
        app.include_router(router)
    for error in ERRORS:
        app.add_exception_handler(error, answer_error)
    app.add_middleware(Measure, metrics=app.state.metrics)
    if settings.api_key:
        app.add_middleware(KeyRequired, key=settings.api_key)
    body_bytes = app.state.metrics.body_bytes.inc
    app.add_middleware(
        BodyLimit,
        cap=settings.max_upload,
        timeout=settings.body_timeout,
        counted=body_bytes,
        uploads=UPLOADS,
    )
    app.add_middleware(HostCheck, hosts=settings.hosts())
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestLimits)
    app.add_middleware(SecurityHeaders)
    return app


def run(settings: Settings, ready: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C. The collection and its model are opened (and the embedded store
    locked) before the server starts, so that a missing, locked or damaged store, or a model
    that cannot be built, is the caller's one-line error. `ready` is told where it serves."""
    import uvicorn

    app = create_app(settings)
    app.state.ready = ready
    with open_service(settings, app.state.metrics) as service:
        service.info()  # the first store call: opens (and locks) an embedded store
        app.state.service = service
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            http=protocol(settings.header_timeout, settings.client_connections),
            h11_max_incomplete_event_size=RequestLimits.HEADERS,  # headers sent in pieces
            limit_concurrency=None,  # idle connections are the protocol's; requests the pool's
            timeout_keep_alive=5,
        )
