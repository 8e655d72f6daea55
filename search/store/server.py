"""The server store: a Qdrant server through qdrant-client (or its local mode for tests)."""

from __future__ import annotations

import logging
import warnings

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedder.errors import first_line
from search.store.base import (
    Filters,
    Group,
    Hit,
    IndexSettings,
    Points,
    QueryVector,
    SearchParams,
    Store,
    StoreError,
    StoreUnavailable,
    Tuning,
    Where,
    hit_of,
    records_to_points,
)
from search.store.schema import GROUP, INDEXED
from search.store.to_server import (
    server_batch,
    server_filter,
    server_groups,
    server_params,
    server_query,
    server_requests,
)

log = logging.getLogger(__name__)
BULK_INDEXING_THRESHOLD = 0  # no HNSW while bulk loading; built once in finish()
INDEXING_THRESHOLD = 10_000  # KB, Qdrant's default


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
    """A collection on a Qdrant server (or in qdrant-client's local mode): every call goes
    through _call, so that every failure is one line."""

    kind = "server"
    groups_natively = True  # Qdrant's group query (group_by item_id)

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

    def _failure(self, what: str, exc: BaseException) -> BaseException:
        """Connection and auth failures and the server's error answers as one line; a busy or
        unreachable server is StoreUnavailable (worth another try)."""
        if isinstance(exc, UnexpectedResponse):
            if exc.status_code in (401, 403):
                return StoreError(
                    f"{self.describe()} refused the API key while trying to {what} "
                    f"(set QDRANT_API_KEY)"
                )
            busy = exc.status_code == 429 or exc.status_code >= 500
            return (StoreUnavailable if busy else StoreError)(
                f"{self.describe()} answered HTTP {exc.status_code} to {what}: "
                f"{(exc.reason_phrase or '')[:200]}"
            )
        if isinstance(exc, httpx.TransportError | ResponseHandlingException | ConnectionError):
            return StoreUnavailable(
                f"cannot reach {self.describe()} to {what}: {first_line(exc)[:200]}"
            )
        return exc

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
                self._call(
                    "index a payload field",
                    self.client.create_payload_index,
                    self.collection,
                    name,
                    field_schema=models.PayloadSchemaType.KEYWORD,
                )

    def drop(self) -> None:
        self._call("delete the collection", self.client.delete_collection, self.collection)
        self._metadata = None

    def _read_metadata(self) -> dict:
        info = self._call("read the collection", self.client.get_collection, self.collection)
        return dict(info.config.metadata or {})

    def tuning(self, params: SearchParams) -> Tuning | None:
        # local mode is exact: it takes no HNSW parameters
        return None if self.local else super().tuning(params)

    def index_complete(self) -> bool:
        return True  # the server builds its index itself once indexing is on again

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
        condition = server_filter(Where.of(filters))
        counted = self._call(
            "count points", self.client.count, self.collection, count_filter=condition, exact=True
        )
        return counted.count

    def indexes(self) -> list[str]:
        info = self._call("read the collection", self.client.get_collection, self.collection)
        return sorted(info.payload_schema or {})

    def _retrieve(self, ids: list[str], fields: list[str]) -> dict[str, dict]:
        read = self.client.retrieve
        records = self._call("read points", read, self.collection, ids, fields or False, False)
        return {str(r.id): r.payload or {} for r in records}

    def _upsert(self, points: Points) -> None:
        batch = server_batch(points)
        self._call("write points", self.client.upsert, self.collection, batch, wait=True)

    def set_payloads(self, updates) -> None:
        operations = [
            models.SetPayloadOperation(set_payload=models.SetPayload(payload=fields, points=[pid]))
            for pid, fields in updates.items()
        ]
        for start in range(0, len(operations), 1000):
            chunk = operations[start : start + 1000]
            self._call(
                "write payloads", self.client.batch_update_points, self.collection, chunk, wait=True
            )

    def _delete(self, ids: list[str]) -> None:
        selector = models.PointIdsList(points=ids)
        self._call("delete points", self.client.delete, self.collection, selector, wait=True)

    def query(
        self, queries: list[QueryVector], top: int, where: Where | None, tuning: Tuning | None
    ) -> list[list[Hit]]:
        search = self.client.query_batch_points
        requests = server_requests(queries, top, where, tuning)
        answers = self._call("search", search, self.collection, requests=requests)
        return [[hit_of(p) for p in answer.points] for answer in answers]

    def query_groups(
        self,
        query: QueryVector,
        top: int,
        group_size: int,
        where: Where | None,
        tuning: Tuning | None,
    ) -> list[Group]:
        result = self._call(
            "search",
            self.client.query_points_groups,
            self.collection,
            group_by=GROUP,
            query=server_query(query),
            query_filter=server_filter(where),
            search_params=server_params(tuning),
            limit=top,
            group_size=group_size,
            with_payload=True,
        )
        return server_groups(result)

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        records = self._call(
            "read vectors",
            self.client.retrieve,
            self.collection,
            list(ids),
            with_payload=False,
            with_vectors=True,
        )
        return {str(r.id): np.asarray(r.vector, np.float32) for r in records}

    def _page(self, offset, limit, where, vectors, fields) -> tuple[Points, object]:
        records, offset = self._call(
            "read points",
            self.client.scroll,
            self.collection,
            scroll_filter=server_filter(where),
            limit=limit,
            offset=offset,
            with_payload=True if fields is None else list(fields),
            with_vectors=vectors,
        )
        return records_to_points(records, vectors), offset

    def facet(self, key: str, limit: int = 1000, filters: Filters | None = None) -> dict[str, int]:
        condition = server_filter(Where.of(filters))
        response = self._call(
            "read payload values",
            self.client.facet,
            self.collection,
            key=key,
            facet_filter=condition,
            limit=limit,
            exact=True,
        )
        return {str(h.value): int(h.count) for h in response.hits}
