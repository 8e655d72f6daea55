"""Conversions to qdrant-client's request models: pure functions, one per kind of value."""

from __future__ import annotations

from qdrant_client import models

from search.store.base import Group, Points, QueryVector, Recommend, Tuning, Where, hit_of


def _condition(key: str, values: tuple[str, ...]) -> models.FieldCondition:
    match = (
        models.MatchValue(value=values[0]) if len(values) == 1 else models.MatchAny(any=[*values])
    )
    return models.FieldCondition(key=key, match=match)


def server_filter(where: Where | None) -> models.Filter | None:
    if where is None:
        return None
    excluded = [models.HasIdCondition(has_id=list(where.not_ids))] if where.not_ids else []
    excluded += [_condition(k, v) for k, v in where.unlike]
    return models.Filter(
        must=[_condition(k, v) for k, v in where.match] or None, must_not=excluded or None
    )


def server_query(query: QueryVector):
    if isinstance(query, Recommend):
        examples = models.RecommendInput(
            positive=query.positive.tolist(),
            negative=query.negative.tolist(),
            strategy=models.RecommendStrategy.BEST_SCORE,
        )
        return models.RecommendQuery(recommend=examples)
    return query.tolist()


def server_params(tuning: Tuning | None) -> models.SearchParams | None:
    if tuning is not None and tuning.exact:
        return models.SearchParams(exact=True)
    if tuning is not None:
        quantized = None
        if tuning.rescore:
            quantized = models.QuantizationSearchParams(rescore=True, oversampling=tuning.rescore)
        return models.SearchParams(hnsw_ef=tuning.hnsw_ef, quantization=quantized)
    return None


def server_requests(
    queries: list[QueryVector], top: int, where: Where | None, tuning: Tuning | None
) -> list[models.QueryRequest]:
    """One request per query, with the same conditions and parameters."""
    condition, params = server_filter(where), server_params(tuning)
    return [
        models.QueryRequest(
            query=server_query(q), limit=top, filter=condition, params=params, with_payload=True
        )
        for q in queries
    ]


def server_batch(points: Points) -> models.Batch:
    return models.Batch(
        ids=list(points.ids), vectors=points.vectors.tolist(), payloads=list(points.payloads)
    )


def server_groups(result) -> list[Group]:
    """A group query's answer as Groups of Hits."""
    return [Group(str(g.id), [hit_of(p) for p in g.hits]) for g in result.groups]
