"""Conversions to qdrant-edge's own types: pure functions, one per kind of value."""

from __future__ import annotations

import qdrant_edge as qe

from search.store.base import Points, QueryVector, Recommend, Tuning, Where


def _condition(key: str, values: tuple[str, ...]) -> qe.FieldCondition:
    one = len(values) == 1
    return qe.FieldCondition(
        key, match=qe.MatchValue(values[0]) if one else qe.MatchAny(list(values))
    )


def edge_filter(where: Where | None) -> qe.Filter | None:
    if where is None:
        return None
    must_not = [qe.HasIdCondition(set(where.not_ids))] if where.not_ids else []
    must_not += [_condition(k, v) for k, v in where.unlike]
    must = [_condition(k, v) for k, v in where.match]
    return qe.Filter(must=must or None, must_not=must_not or None)


def edge_query(query: QueryVector) -> qe.Query:
    if not isinstance(query, Recommend):
        return qe.Query.Nearest(query.tolist())
    positives, negatives = query.positive.tolist(), query.negative.tolist()
    return qe.Query.RecommendBestScore(qe.RecommendQuery(positives=positives, negatives=negatives))


def edge_params(tuning: Tuning | None) -> qe.SearchParams | None:
    if tuning is None or tuning.exact:
        return tuning and qe.SearchParams(exact=True)
    rescore = tuning.rescore
    quantized = rescore and qe.QuantizationSearchParams(rescore=True, oversampling=rescore)
    return qe.SearchParams(hnsw_ef=tuning.hnsw_ef, quantization=quantized or None)


def edge_batch(
    queries: list[QueryVector], top: int, where: Where | None, tuning: Tuning | None
) -> qe.QueryBatchRequest:
    """One request per query, with the same conditions and parameters."""
    condition, params = edge_filter(where), edge_params(tuning)
    return qe.QueryBatchRequest(
        [
            qe.QueryRequest(
                limit=top, query=edge_query(q), with_payload=True, filter=condition, params=params
            )
            for q in queries
        ]
    )


def edge_points(points: Points) -> list[qe.Point]:
    """Row by row: faster than one tolist() of the whole batch."""
    rows = zip(points.ids, points.vectors, points.payloads, strict=True)
    return [qe.Point(pid, vector.tolist(), payload) for pid, vector, payload in rows]


def edge_vector(record) -> list[float]:
    """A record's vector: the engine returns the unnamed vector as {"": [...]}."""
    vector = record.vector
    return vector[""] if isinstance(vector, dict) else vector
