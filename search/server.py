"""The server store: a Qdrant server through qdrant-client (or its local mode for tests)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection, Iterator, Sequence

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from search.schema import GROUP, INDEXED
from search.store import (
    APPROXIMATE,
    NOTHING,
    Exclude,
    Filters,
    Group,
    Hit,
    IndexSettings,
    Points,
    QueryVector,
    Recommend,
    SearchParams,
    Store,
    StoreError,
    StoreUnavailable,
    as_queries,
    records_to_points,
)

log = logging.getLogger(__name__)
BULK_INDEXING_THRESHOLD = 0  # no HNSW while bulk loading; built once in finish()
INDEXING_THRESHOLD = 10_000  # KB, Qdrant's default


def server_filter(
    filters: Filters | None, exclude: Exclude | Collection[str] = ()
) -> models.Filter | None:
    exclude = Exclude.of(exclude)
    if not filters and not exclude:
        return None
    must_not: list = [models.HasIdCondition(has_id=list(exclude.ids))] if exclude.ids else []
    if exclude.items:
        must_not.append(
            models.FieldCondition(key=GROUP, match=models.MatchAny(any=list(exclude.items)))
        )
    return models.Filter(
        must=[
            models.FieldCondition(
                key=k,
                match=models.MatchValue(value=v)
                if isinstance(v, str)
                else models.MatchAny(any=list(v)),
            )
            for k, v in (filters or {}).items()
        ]
        or None,
        must_not=must_not or None,
    )


def server_query(query: QueryVector):
    if isinstance(query, Recommend):
        return models.RecommendQuery(
            recommend=models.RecommendInput(
                positive=query.positive.tolist(),
                negative=query.negative.tolist(),
                strategy=models.RecommendStrategy.BEST_SCORE,
            )
        )
    return query.tolist()


def _client(url: str, api_key: str | None) -> QdrantClient:
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith("file:"):
        return QdrantClient(path=url.removeprefix("file://").removeprefix("file:"))
    if not url.startswith(("http://", "https://")):
        raise ValueError(
            f"--qdrant-url {url!r} must start with http:// or https:// "
            f"(or be :memory: / file:DIR for qdrant-client's local mode)"
        )
    return QdrantClient(url=url, api_key=api_key, timeout=60, check_compatibility=False)


class ServerStore(Store):
    kind = "server"

    def __init__(self, url: str, api_key: str | None, collection: str):
        self.url = url
        self.collection = collection
        self.client = _client(url, api_key)
        self.local = url == ":memory:" or url.startswith("file:")
        self._api_key = api_key

    def opened_elsewhere(self) -> dict | None:
        if self.local:  # in-process (:memory:) or locked to one process (file:)
            return None
        return {"url": self.url, "api_key": self._api_key, "collection": self.collection}

    def describe(self) -> str:
        return f"Qdrant at {self.url}"

    def _call(self, what: str, fn, *args, **kwargs):
        """Run a client call, turning connection and auth failures into one-line StoreErrors."""
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except UnexpectedResponse as exc:
            if exc.status_code in (401, 403):
                raise StoreError(
                    f"{self.describe()} refused the API key while trying to {what} "
                    f"(set QDRANT_API_KEY)"
                ) from None
            busy = exc.status_code == 429 or exc.status_code >= 500
            raise (StoreUnavailable if busy else StoreError)(
                f"{self.describe()} answered HTTP {exc.status_code} to {what}: "
                f"{(exc.reason_phrase or '')[:200]}"
            ) from None
        except (httpx.TransportError, ResponseHandlingException, ConnectionError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreUnavailable(
                f"cannot reach {self.describe()} to {what}: {text[:200]}"
            ) from None

    def exists(self) -> bool:
        return self._call("check the collection", self.client.collection_exists, self.collection)

    def create(self, dim: int, metadata: dict, settings: IndexSettings = IndexSettings()) -> None:
        quant = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                )
            )
            if settings.quantization
            else None
        )
        index = settings.recorded()
        self._call(
            "create the collection",
            self.client.create_collection,
            self.collection,
            vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
            hnsw_config=models.HnswConfigDiff(m=settings.m, ef_construct=settings.ef_construct),
            optimizers_config=models.OptimizersConfigDiff(
                indexing_threshold=BULK_INDEXING_THRESHOLD
            ),
            quantization_config=quant,
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
            write_consistency_factor=settings.write_consistency,
            metadata=(meta := {**metadata, "dim": dim, "distance": "cosine", "index": index}),
        )
        self._metadata = meta
        with warnings.catch_warnings():  # local mode warns that it ignores keyword indexes
            warnings.simplefilter("ignore", UserWarning)
            for name in INDEXED:
                self.client.create_payload_index(
                    self.collection, name, field_schema=models.PayloadSchemaType.KEYWORD
                )

    def drop(self) -> None:
        self._call("delete the collection", self.client.delete_collection, self.collection)
        self._metadata = None

    def _read_metadata(self) -> dict:
        info = self._call("read the collection", self.client.get_collection, self.collection)
        return dict(info.config.metadata or {})

    def _engine_params(self, params: SearchParams) -> models.SearchParams | None:
        # local mode is exact: it takes no HNSW parameters
        return None if self.local else self.library_params(params, models)

    def finish(self) -> None:
        self._call(
            "build the index",
            self.client.update_collection,
            self.collection,
            optimizers_config=models.OptimizersConfigDiff(indexing_threshold=INDEXING_THRESHOLD),
        )

    def flush(self) -> None:
        """Server writes are acknowledged with wait=True: nothing to flush."""

    def close(self) -> None:
        self.client.close()

    def count(self, filters: Filters | None = None) -> int:
        return self._call(
            "count points",
            self.client.count,
            self.collection,
            count_filter=server_filter(filters),
            exact=True,
        ).count

    def indexes(self) -> list[str]:
        info = self._call("read the collection", self.client.get_collection, self.collection)
        return sorted(info.payload_schema or {})

    def retrieve(self, ids: list[str], fields: list[str]) -> dict[str, dict]:
        out = {}
        for start in range(0, len(ids), 1000):
            records = self._call(
                "read points",
                self.client.retrieve,
                self.collection,
                ids[start : start + 1000],
                with_payload=fields or False,
                with_vectors=False,
            )
            out.update({str(r.id): r.payload or {} for r in records})
        return out

    def upsert(self, points: Points) -> None:
        if not len(points):
            return
        self._call(
            "write points",
            self.client.upsert,
            self.collection,
            wait=True,
            points=models.Batch(
                ids=list(points.ids),
                vectors=points.vectors.tolist(),
                payloads=list(points.payloads),
            ),
        )

    def set_payloads(self, updates) -> None:
        operations = [
            models.SetPayloadOperation(set_payload=models.SetPayload(payload=fields, points=[pid]))
            for pid, fields in updates.items()
        ]
        for start in range(0, len(operations), 1000):
            self._call(
                "write payloads",
                self.client.batch_update_points,
                self.collection,
                operations[start : start + 1000],
                wait=True,
            )

    def delete(self, ids: list[str]) -> None:
        if ids:
            self._call(
                "delete points",
                self.client.delete,
                self.collection,
                points_selector=models.PointIdsList(points=list(ids)),
                wait=True,
            )

    def _search(
        self,
        queries: list[QueryVector],
        top: int,
        filters: Filters | None,
        params: SearchParams,
        exclude: Exclude = NOTHING,
    ) -> list[list[Hit]]:
        engine_params, where = self._engine_params(params), server_filter(filters, exclude)
        requests = [
            models.QueryRequest(
                query=server_query(query),
                limit=top,
                filter=where,
                params=engine_params,
                with_payload=True,
            )
            for query in queries
        ]
        responses = self._call(
            "search", self.client.query_batch_points, self.collection, requests=requests
        )
        return [
            [Hit(str(p.id), float(p.score), p.payload or {}) for p in r.points] for r in responses
        ]

    def search_groups(
        self,
        queries,
        top: int,
        filters: Filters | None = None,
        params: SearchParams = APPROXIMATE,
        exclude: Exclude | Collection[str] = (),
        group_size: int = 10,
    ) -> list[list[Group]]:
        """Qdrant's own group query (group_by item_id), one request per query."""
        engine_params = self._engine_params(params)
        out = []
        for query in as_queries(queries):
            result = self._call(
                "search",
                self.client.query_points_groups,
                self.collection,
                group_by=GROUP,
                query=server_query(query),
                query_filter=server_filter(filters, exclude),
                search_params=engine_params,
                limit=top,
                group_size=group_size,
                with_payload=True,
            )
            groups = [
                Group(str(g.id), [Hit(str(p.id), float(p.score), p.payload or {}) for p in g.hits])
                for g in result.groups
            ]
            self._checked([g.hits for g in groups])
            out.append(groups)
        return out

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        records = self._call(
            "read points",
            self.client.retrieve,
            self.collection,
            list(ids),
            with_payload=False,
            with_vectors=True,
        )
        return {str(r.id): np.asarray(r.vector, np.float32) for r in records}

    def scroll(
        self,
        batch: int = 256,
        vectors: bool = True,
        filters: Filters | None = None,
        exclude: Sequence[str] = (),
        fields: Sequence[str] | None = None,
    ) -> Iterator[Points]:
        offset = None
        payload = True if fields is None else list(fields)
        while True:
            records, offset = self._call(
                "read points",
                self.client.scroll,
                self.collection,
                scroll_filter=server_filter(filters, exclude),
                limit=batch,
                offset=offset,
                with_payload=payload,
                with_vectors=vectors,
            )
            if records:
                yield records_to_points(records, vectors)
            if offset is None:
                return

    def facet(self, key: str, limit: int = 1000, filters: Filters | None = None) -> dict[str, int]:
        response = self._call(
            "read payload values",
            self.client.facet,
            self.collection,
            key=key,
            facet_filter=server_filter(filters),
            limit=limit,
            exact=True,
        )
        return {str(h.value): int(h.count) for h in response.hits}
