"""The API's response models (the OpenAPI page at /docs shows them); a photo's fields come from
the one payload schema (search.store.schema)."""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, create_model
from pydantic_core import to_json

from search.service import Answer, Grouping, Query
from search.store import Hit
from search.store.schema import BY_NAME, SHOWN, image_url


class ThumbSize(IntEnum):
    """A thumbnail's longest side, in pixels (the schema lists the values)."""

    small = 128
    medium = 256
    large = 512


THUMB_SIZES = tuple(int(size) for size in ThumbSize)

Photo = create_model(
    "Photo",
    __doc__="A stored photo: its point id, score (in answers) and payload.",
    id=(str, ...),
    score=(float | None, None),
    **{
        name: (BY_NAME[name].type | None, Field(None, description=BY_NAME[name].description))
        for name in SHOWN
    },
    image_url=(str, Field(description="The photo, served by point id.")),
    thumb_url=(str, Field(description="A 256-px thumbnail of the photo.")),
)


class ErrorOut(BaseModel):
    """Every error answer of the app, whatever its status."""

    detail: str = Field(description="What was wrong, in one line; never the request's input.")
    known: list[str] | None = Field(
        None, description="With an unknown filter value: the values the collection has."
    )


# what each status means; every route lists the ones it can answer (see responses())
STATUSES = {
    400: "Not a photo that can be read, several photos, or a Host name this server does not "
    "answer to.",
    401: "The server asks for its access key (Authorization: Bearer KEY, or the page's cookie).",
    403: "A request with the page's cookie that came from another site's page.",
    404: "No such stored photo, garment, or image file.",
    408: "The request body arrived too slowly.",
    413: "The request body is larger than the server takes.",
    414: "The address is too long.",
    415: "The stored file of this photo is not an image.",
    422: "A parameter outside its bounds or rules, or an unknown filter value (`known` lists "
    "the collection's values).",
    431: "The request's headers are too large.",
    503: "The store did not answer, or the model is busy with other queries; try again.",
}
EVERY_ROUTE = (400, 401, 408, 413, 414, 422, 431, 503)  # from the guards in front of the app


def responses(*extra: int) -> dict:
    """The error answers a route documents: those every route can give, and `extra`."""
    return {
        code: {"model": ErrorOut, "description": STATUSES[code]}
        for code in sorted({*EVERY_ROUTE, *extra})
    }


class ResultOut(BaseModel):
    rank: int
    score: float
    matches: int = Field(description="Photos of this garment that matched (1 when ungrouped).")
    photo: Photo = Field(description="The best-scoring photo.")
    photos: list[Photo] = Field(description="The garment's matching photos, best first.")


class GarmentOut(BaseModel):
    box: list[int] = Field(
        min_length=4, max_length=4, description="x1, y1, x2, y2 in the uploaded photo's pixels."
    )
    type: str = Field(description="upper, lower or full (body).")
    score: float = Field(ge=0, le=1, description="The detector's confidence.")


class SearchOut(BaseModel):
    query: str = Field(
        description="'upload', 'recommend', or the point id of a 'more like this' search."
    )
    query_item: str | None = Field(None, description="The query photo's garment, if stored.")
    query_vector: list[float] | None = Field(
        None, description="An uploaded photo's vector: send it to /api/recommend with likes."
    )
    group: Grouping
    filters: dict[str, str]
    offset: int = Field(0, description="Results before these (the rank of the first is +1).")
    results: list[ResultOut]
    garments: list[GarmentOut] = Field(
        [],
        description="An upload searched without a bbox, with a garment detector: every garment "
        "found, best first (search one of them by sending its box as bbox).",
    )
    garment: int | None = Field(
        None,
        description="Which of `garments` these results are for: the one that fits the category "
        "filter, else the best-scoring; null when the photo was searched whole.",
    )
    notice: str | None = Field(None, description="Why the photo was searched whole.")
    timings_ms: dict[str, float]


class ItemOut(BaseModel):
    item_id: str
    photos: list[Photo]


class FacetsOut(BaseModel):
    categories: dict[str, int]
    subcategories: dict[str, dict[str, int]]
    sources: dict[str, int]


class FilterOut(BaseModel):
    name: str = Field(description="The parameter (form field, URL parameter, JSON key).")
    description: str
    choices: list[str] = Field(description="Its only values; empty: any stored value.")


class InfoOut(BaseModel):
    collection: str
    store: str
    points: int
    model: dict
    index: dict
    dataset_root: str | None
    max_upload_bytes: int
    max_top: int = Field(description="The largest `top` + `offset` a search takes.")
    thumb_sizes: list[int]
    formats: list[str] = Field(description="The photo formats a search takes.")
    access_key: bool = Field(description="Whether the server asks for an access key.")
    filters: list[FilterOut] = Field(description="The search filters, from the payload schema.")


def photo(hit: Hit, score: bool = True) -> dict:
    """A stored photo as the API shows it (the Photo model's fields)."""
    return {
        "id": hit.id,
        "score": hit.score if score else None,
        **{k: hit.payload.get(k) for k in SHOWN},
        "image_url": image_url(hit.id),
        "thumb_url": image_url(hit.id, size=256),
    }


class AnswerJSON(JSONResponse):
    """JSON by pydantic-core's encoder: 6× the standard library's on an answer (its 512-float
    query vector, tens of photos), with no new dependency. Scores and vectors are checked
    finite before they get here."""

    def render(self, content) -> bytes:
        return to_json(content)


def answer_out(answer: Answer, query: Query) -> JSONResponse:
    """A SearchOut as JSON, built from plain data: validating hundreds of photo models again on
    every answer cost a noticeable share of a query's time."""
    return AnswerJSON(
        {
            "query": answer.query,
            "query_item": answer.item_id,
            "query_vector": None if answer.vector is None else np.round(answer.vector, 6).tolist(),
            "group": query.group.value,
            "filters": dict(query.filters),
            "offset": query.offset,
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
            "garments": [g.to_dict() for g in answer.found],
            "garment": answer.found.index(answer.garment) if answer.garment else None,
            "notice": answer.notice,
            "timings_ms": {k: round(v * 1000, 2) for k, v in answer.seconds.items()},
        }
    )
