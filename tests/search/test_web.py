"""The web API on a real collection (ingested from the sample with the tiny model)."""

import io
import json
import re
import threading
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from search.service import NotFound
from search.web import Settings, create_app


@pytest.fixture(scope="module")
def served(sample_root, tmp_path_factory, ingest_tiny):
    db = tmp_path_factory.mktemp("web") / "qdrant_data"
    assert ingest_tiny(sample_root, str(db)).exit_code == 0
    settings = Settings(store=str(db), max_upload=300_000, allowed_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        yield client, client.app.state.service


@pytest.fixture(scope="module")
def client(served):
    return served[0]


def _anno(sample_root) -> dict[str, tuple[int, int, int, int]]:
    lines = (sample_root / "Anno" / "list_bbox_consumer2shop.txt").read_text().splitlines()[2:]
    return {p: tuple(int(v) for v in rest[2:]) for p, *rest in (line.split() for line in lines)}


def _consumer(sample_root, category="TOPS"):
    path = sorted((sample_root / "img" / category).rglob("comsumer_01.jpg"))[0]
    return path, path.relative_to(sample_root).as_posix()


def _post(client, data: bytes, **form):
    return client.post("/api/search", files={"file": ("q.jpg", data, "image/jpeg")}, data={**form})


def test_upload_with_its_box_finds_itself_and_its_garment_first(client, sample_root):
    path, rel = _consumer(sample_root)
    box = ",".join(map(str, _anno(sample_root)[rel]))
    answer = _post(client, path.read_bytes(), category="TOPS", bbox=box, top=5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["group"] == "item" and body["filters"] == {"category": "TOPS"}
    first = body["results"][0]
    assert first["photo"]["path"] == rel and first["score"] > 0.999
    assert first["photo"]["item_id"] == rel.split("/")[3]
    assert all(r["photo"]["category"] == "TOPS" for r in body["results"])
    items = [r["photo"]["item_id"] for r in body["results"]]
    assert len(items) == len(set(items)) == 5  # one result per garment
    for r in body["results"]:
        assert r["matches"] == len(r["photos"]) >= 1
        assert r["photos"][0] == r["photo"]
        assert {p["item_id"] for p in r["photos"]} == {r["photo"]["item_id"]}
        assert r["photo"]["image_url"] == f"/images/{r['photo']['id']}.jpg"
    assert set(body["timings_ms"]) == {"model", "store"}


def test_each_filter_and_every_photo_grouping(client, sample_root):
    path, _ = _consumer(sample_root, "TROUSERS")
    data = path.read_bytes()
    facets = client.get("/api/facets").json()
    category = "TROUSERS"
    sub = sorted(facets["subcategories"][category])[0]
    for form, check in (
        ({"category": category}, lambda p: p["category"] == category),
        ({"subcategory": sub}, lambda p: p["subcategory"] == sub),
        ({"source": "shop"}, lambda p: p["source"] == "shop"),
        ({"source": "consumer", "category": category}, lambda p: p["source"] == "consumer"),
    ):
        body = _post(client, data, group="none", top=50, **form).json()
        photos = [r["photo"] for r in body["results"]]
        assert photos and all(check(p) for p in photos), form
        assert all(r["matches"] == 1 for r in body["results"])
        if form == {"source": "shop"}:
            assert len(photos) == facets["sources"]["shop"]  # every shop photo, none other


def test_similar_leaves_out_the_photo_itself(client, served):
    service = served[1]
    photo_id = service.resolve(_consumer_rel(service))
    for group in ("item", "none"):
        body = client.get(f"/api/points/{photo_id}/similar", params={"top": 100, "group": group})
        assert body.status_code == 200, body.text
        results = body.json()["results"]
        ids = {p["id"] for r in results for p in r["photos"]}
        assert photo_id not in ids and results
    shop = client.get(f"/api/points/{photo_id}/similar", params={"source": "shop", "top": 3})
    assert all(r["photo"]["source"] == "shop" for r in shop.json()["results"])


def _consumer_rel(service) -> str:
    root = service.dataset
    return sorted((root / "img" / "TOPS").rglob("comsumer_01.jpg"))[0].relative_to(root).as_posix()


def test_item_lists_every_photo_of_the_garment(client, sample_root):
    item = sorted((sample_root / "img" / "DRESSES").glob("*/id_*"))[0]
    on_disk = sorted(p.relative_to(sample_root).as_posix() for p in item.glob("*.jpg"))
    body = client.get(f"/api/items/{item.name}").json()
    assert sorted(p["path"] for p in body["photos"]) == on_disk
    sources = [p["source"] for p in body["photos"]]
    assert sources == sorted(sources, key=lambda s: s != "shop")  # shop photos first


def test_facets_match_the_store_counts(client, served):
    store = served[1].store
    facets = client.get("/api/facets").json()
    assert facets["categories"] == store.facet("category")
    assert facets["sources"] == store.facet("source")
    for category, subs in facets["subcategories"].items():
        assert sum(subs.values()) == store.count({"category": category})
    info = client.get("/api/info").json()
    assert info["points"] == store.count() == sum(facets["categories"].values())
    assert info["model"]["backbone"] == "test_resnet" and info["max_upload_bytes"] == 300_000


def test_images_by_point_id_and_thumbnails(client, served, sample_root):
    service = served[1]
    rel = _consumer_rel(service)
    pid = service.resolve(rel)
    full = client.get(f"/images/{pid}.jpg")
    assert full.status_code == 200 and full.content == (sample_root / rel).read_bytes()
    thumb = client.get(f"/images/{pid}.jpg", params={"size": 128})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 128
    assert client.get(f"/images/{pid}.jpg", params={"size": 100}).status_code == 422


@pytest.mark.parametrize(
    "name",
    ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", str(uuid.UUID(int=7)), "img%2FTOPS%2Fx", "nope"],
)
def test_images_are_served_by_point_id_only(client, name):
    response = client.get(f"/images/{name}.jpg")
    assert response.status_code == 404
    assert "root:" not in response.text


def test_a_payload_path_outside_the_dataset_is_never_served(served):
    service = served[1]
    pid = str(uuid.uuid5(uuid.NAMESPACE_URL, "evil"))
    import numpy as np

    from search.store import Points

    vec = np.zeros((1, service.store.metadata()["dim"]), np.float32)
    vec[0, 0] = 1
    service.store.upsert(Points([pid], vec, [{"path": "../../../../etc/passwd.jpg"}]))
    try:
        with pytest.raises(NotFound, match="not an image below the dataset"):
            service.image_file(pid)
    finally:
        service.store.delete([pid])


def _jpeg(size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, "JPEG")
    return out.getvalue()


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")  # 400 M pixels, a few kB
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "form", "status", "reason"),
    [
        (b"", {}, 400, "empty"),
        (b"hello, not an image", {}, 400, "not an image"),
        (_jpeg()[:200], {}, 400, "cannot decode"),
        (_bomb(), {}, 400, "too many pixels"),
        (b"x" * 300_001, {}, 413, "larger than"),
        (_jpeg(), {"category": "HATS"}, 422, "TOPS"),
        (_jpeg(), {"source": "street"}, 422, "source"),
        (_jpeg(), {"top": "0"}, 422, "top"),
        (_jpeg(), {"group": "color"}, 422, "group"),
        (_jpeg(), {"bbox": "1,2,3"}, 422, "bbox"),
        (_jpeg(), {"bbox": "10,10,5,5"}, 422, "bbox"),
    ],
)
def test_bad_uploads_get_a_status_and_a_one_line_reason(client, data, form, status, reason):
    response = _post(client, data, **form)
    assert response.status_code == status, response.text
    assert reason in str(response.json()["detail"])
    assert "Traceback" not in response.text


def test_a_huge_request_is_refused_before_it_is_read(client):
    response = client.post(
        "/api/search",
        content=b"x" * 400_000,
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 413


def test_a_box_outside_the_photo_falls_back_to_the_whole_photo(client):
    whole = _post(client, _jpeg((80, 80)), group="none", top=3).json()
    outside = _post(client, _jpeg((80, 80)), group="none", top=3, bbox="-9e9,-9e9,9e9,9e9").json()
    assert [r["photo"]["id"] for r in outside["results"]] == [
        r["photo"]["id"] for r in whole["results"]
    ]


def test_unknown_ids_are_404(client):
    assert client.get(f"/api/points/{uuid.uuid4()}/similar").status_code == 404
    assert client.get("/api/points/not-a-point/similar").status_code == 404
    assert client.get("/api/items/id_99999999").status_code == 404


def test_docs_health_metrics_and_page_answer(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert "/api/search" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<title>Find this garment</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # works offline: no CDN
    _post(client, _jpeg(), top=2)
    metrics = client.get("/metrics").text
    assert 'http_requests_total{endpoint="/api/search",method="POST",status="200"}' in metrics
    assert "search_model_seconds_count" in metrics and "search_store_seconds_count" in metrics
    assert 'http_request_seconds_bucket{endpoint="/api/search"' in metrics


def _batches(client) -> tuple[float, float]:
    """(forward passes, photos in them) from the model pool's metrics."""
    text = client.get("/metrics").text
    found = dict(re.findall(r"^model_batch_images_(count|sum) ([\d.e+]+)$", text, re.M))
    return float(found.get("count", 0)), float(found.get("sum", 0))


def test_concurrent_queries_are_answered_alike_and_batched(client):
    data = _jpeg((90, 120))
    forwards, photos = _batches(client)
    alone = _post(client, data, group="none", top=5).json()["results"]
    answers, errors = [], []

    def ask():
        try:
            answers.append(_post(client, data, group="none", top=5).json()["results"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(answers) == 8
    for got in answers:
        assert [r["photo"]["id"] for r in got] == [r["photo"]["id"] for r in alone]
        for a, b in zip(got, alone, strict=True):
            assert abs(a["score"] - b["score"]) < 1e-3
    metrics = client.get("/metrics").text
    assert "model_batch_images_count" in metrics
    more_forwards, more_photos = (
        a - b for a, b in zip(_batches(client), (forwards, photos), strict=True)
    )
    assert more_photos == 9 and 1 <= more_forwards <= 9  # every photo through the pool


def test_a_garment_in_two_folders_is_one_garment(client, served, sample_root, split_garment):
    item, consumer_folder, shop_folder = split_garment
    on_disk = {
        p.relative_to(sample_root).as_posix()
        for folder in (consumer_folder, shop_folder)
        for p in folder.glob("*.jpg")
    }
    body = client.get(f"/api/items/{item}").json()
    assert {p["path"] for p in body["photos"]} == on_disk
    assert len({p["subcategory"] for p in body["photos"]}) == 2
    consumer = next(consumer_folder.glob("comsumer_*.jpg")).relative_to(sample_root).as_posix()
    similar = client.get(
        f"/api/points/{served[1].resolve(consumer)}/similar", params={"top": 100, "group": "item"}
    ).json()
    assert similar["query_item"] == item
    items = [r["photo"]["item_id"] for r in similar["results"]]
    assert len(items) == len(set(items))  # one result per garment, this one included once
    mine = next(r for r in similar["results"] if r["photo"]["item_id"] == item)
    assert {p["path"] for p in mine["photos"]} == on_disk - {consumer}
    upload = _post(client, (sample_root / consumer).read_bytes(), top=100, group="item").json()
    mine = next(r for r in upload["results"] if r["photo"]["item_id"] == item)
    assert {p["path"] for p in mine["photos"]} == on_disk and mine["matches"] == len(on_disk)


def _items(body) -> list[str]:
    return [r["photo"]["item_id"] for r in body["results"]]


def test_likes_and_dislikes_change_the_results_and_drop_the_disliked_garment(client, sample_root):
    path, _ = _consumer(sample_root)
    first = _post(client, path.read_bytes(), top=6, source="").json()
    ids = [r["photo"]["id"] for r in first["results"]]
    garments = _items(first)
    body = {
        "positive": ids[1:3],
        "negative": [ids[3]],
        "vectors": [first["query_vector"]],
        "top": 6,
    }
    answer = client.post("/api/recommend", json=body)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["query"] == "recommend" and found["results"]
    shown = {p["id"] for r in found["results"] for p in r["photos"]}
    assert not shown & set(ids[1:4])  # the examples themselves are left out
    assert garments[3] not in _items(found)  # and so is the garment marked as not it
    assert [r["photo"]["id"] for r in found["results"]] != ids
    assert len(first["query_vector"]) == client.get("/api/info").json()["model"]["dim"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"positive": []}, 422),
        ({"positive": [str(uuid.uuid4())]}, 404),
        ({"positive": ["not-an-id"]}, 404),
        ({"vectors": [[0.0, 1.0]]}, 422),
        ('{"vectors": [[' + ", ".join(["NaN"] * 512) + "]]}", 422),
        ({"positive": [str(uuid.uuid4())] * 60}, 422),
    ],
)
def test_bad_recommendations_get_a_status(client, body, status):
    if isinstance(body, str):  # JSON that Python's encoder will not write (NaN)
        response = client.post(
            "/api/recommend", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.post("/api/recommend", json=body)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "input" not in response.json()


@pytest.mark.parametrize("group", ["item", "none"])
def test_show_more_continues_the_ranking_without_repeats(client, sample_root, group):
    data = _consumer(sample_root)[0].read_bytes()
    whole = _post(client, data, top=12, group=group, source="").json()
    first = _post(client, data, top=6, group=group, source="").json()
    more = _post(client, data, top=6, offset=6, group=group, source="").json()
    key = (lambda r: r["photo"]["item_id"]) if group == "item" else (lambda r: r["photo"]["id"])
    assert [key(r) for r in first["results"] + more["results"]] == [
        key(r) for r in whole["results"]
    ]
    assert not {key(r) for r in first["results"]} & {key(r) for r in more["results"]}
    assert [r["rank"] for r in more["results"]] == list(range(7, 7 + len(more["results"])))
    assert more["offset"] == 6
    assert _post(client, data, top=600, offset=600).status_code == 422  # past MAX_TOP


def test_an_unknown_filter_value_lists_the_known_ones(client, sample_root):
    data = _consumer(sample_root)[0].read_bytes()
    body = _post(client, data, category="SHOES").json()
    assert body["known"] == ["DRESSES", "TOPS", "TROUSERS"]


def test_info_names_no_server_paths_without_a_key(client, served):
    info = client.get("/api/info").json()
    text = json.dumps(info)
    assert str(served[1].dataset) not in text and "qdrant_data" not in text
    assert info["store"] == "embedded" and info["dataset_root"] is None
    assert info["formats"] == ["JPEG", "PNG", "WEBP", "BMP"] and info["access_key"] is False


def test_a_bug_is_answered_500_logged_counted_and_the_server_keeps_serving(client, caplog):
    from search.web.deps import get_service

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("a bug")

    client.app.dependency_overrides[get_service] = Broken
    try:
        response = client.get("/api/facets")
    finally:
        client.app.dependency_overrides.clear()
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error (logged)"}
    assert "a bug" in caplog.text and "a bug" not in response.text
    assert client.get("/api/facets").status_code == 200
    metrics = client.get("/metrics").text
    assert 'http_requests_total{endpoint="/api/facets",method="GET",status="500"} 1.0' in metrics
