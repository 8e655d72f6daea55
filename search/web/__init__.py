"""The web app (`search serve`): the page at /, a JSON API over the search service at /api,
photos by point id at /images, health and Prometheus metrics. No query logic of its own.

FastAPI's "bigger applications" shape: routers in `routes`, dependencies in `deps`, response
models in `models`, the app and its lifespan in `app`."""

from search.web.app import Settings, create_app, run

__all__ = ["Settings", "create_app", "run"]
