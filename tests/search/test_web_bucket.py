"""The web app with its photos in an object store (a real SeaweedFS bucket): `search serve`, as
its own process, reads /images/ID.jpg and thumbnails from the dataset's bucket by point id
only, never a key outside the dataset's prefix, never a key that is not an image; with
--image-redirect it answers with a presigned URL instead of the bytes."""

from __future__ import annotations

import io
import json
import os
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from embedder.storage import Storage, upload

EVIL = {  # stored paths that try to leave the dataset's prefix, or to serve what is no image
    "parent": "../secret.jpg",
    "sibling": "../ds-evil/x.jpg",
    "absolute": "/web/secret.jpg",
    "climb": "img/../../secret.jpg",
    "not-an-image": "img/notes.txt",
    "backslash": "img\\..\\..\\secret.jpg",
}


def _jpeg(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def bucket_collection(seaweed, sample_root, tmp_path_factory, ingest_tiny):
    """The sample in web/ds, objects beside it that must never be served, the collection
    ingested from the bucket with points whose paths try to reach them."""
    from search.store import Points, open_store

    fs = seaweed.fs()
    fs.mkdir("web")
    upload(str(sample_root), Storage("s3", json.dumps(seaweed.options)), "web/ds")
    fs.pipe("web/secret.jpg", _jpeg("red"))
    fs.pipe("web/ds-evil/x.jpg", _jpeg("green"))
    fs.pipe("web/ds/img/notes.txt", b"not a photo")
    db = tmp_path_factory.mktemp("web-bucket") / "db"
    options = [f"endpoint_url={seaweed.endpoint}", "key=testkey", "secret=testsecret"]
    result = ingest_tiny("s3://web/ds", db, *(a for o in options for a in ("--storage-option", o)))
    assert result.exit_code == 0, result.output
    evil = {name: str(uuid.uuid5(uuid.NAMESPACE_URL, name)) for name in EVIL}
    with open_store(store_dir=str(db)) as store:
        vectors = np.eye(len(EVIL), store.metadata()["dim"], dtype=np.float32)
        store.upsert(Points(list(evil.values()), vectors, [{"path": p} for p in EVIL.values()]))
        some = next(iter(store.scroll(8, vectors=False)))
        photo = next(
            (pid, p["path"])
            for pid, p in zip(some.ids, some.payloads, strict=True)
            if p.get("path", "").endswith(".jpg") and pid not in evil.values()
        )
    return db, evil, photo


@pytest.fixture(scope="module")
def served(bucket_collection, seaweed, live_server):
    """`search serve` on the collection, the bucket's credentials from AWS_* variables."""
    db, _, _ = bucket_collection
    with live_server("--store", str(db), env=seaweed.env) as (url, _proc):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


def test_without_the_redirect_the_page_loads_images_from_itself_alone(served):
    csp = served.get("/").headers["content-security-policy"]
    assert "img-src 'self' blob: data:;" in csp


def test_a_photo_and_its_thumbnail_come_from_the_bucket(served, bucket_collection, seaweed):
    _, _, (pid, path) = bucket_collection
    full = served.get(f"/images/{pid}.jpg")
    assert full.status_code == 200, full.text
    assert full.content == seaweed.fs().cat_file(f"web/ds/{path}")
    thumb = served.get(f"/images/{pid}.jpg", params={"size": 128})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128


@pytest.mark.parametrize("name", sorted(EVIL))
def test_a_stored_path_outside_the_prefix_or_not_an_image_is_never_served(
    served, bucket_collection, name
):
    _, evil, _ = bucket_collection
    for size in (None, 128):
        response = served.get(f"/images/{evil[name]}.jpg", params={"size": size} if size else {})
        assert response.status_code in (404, 415), response.text
        assert "secret" not in response.text and "web/" not in response.text
        assert response.headers["content-type"].startswith("application/json")


def test_a_photo_deleted_from_the_bucket_is_a_404(served, bucket_collection, seaweed):
    db, _, _ = bucket_collection
    from search.store import point_ids

    fs = seaweed.fs()
    victim = sorted(k for k in fs.find("web/ds/img") if k.endswith("shop_01.jpg"))[-1]
    (pid,) = point_ids([victim.removeprefix("web/ds/")])
    assert served.get(f"/images/{pid}.jpg").status_code == 200
    fs.rm(victim)
    gone = served.get(f"/images/{pid}.jpg")
    assert gone.status_code == 404 and "missing" in gone.json()["detail"]


def test_the_image_redirect_answers_with_a_presigned_url(
    bucket_collection, seaweed, live_server, tmp_path
):
    import shutil

    db, evil, (pid, path) = bucket_collection
    copy = shutil.copytree(db, tmp_path / "db")  # the module's server holds the store
    with live_server("--store", str(copy), "--image-redirect", env=seaweed.env) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            moved = client.get(f"/images/{pid}.jpg")
            assert moved.status_code == 307
            location = moved.headers["location"]
            assert location.startswith(seaweed.endpoint) and "Signature" in location
            assert httpx.get(location).content == seaweed.fs().cat_file(f"web/ds/{path}")
            page = client.get("/")  # the page may show the redirected photo (and nothing else)
            csp = page.headers["content-security-policy"]
            assert f"img-src 'self' blob: data: {seaweed.endpoint};" in csp
            assert "connect-src 'self';" in csp
            assert client.get(f"/images/{pid}.jpg", params={"size": 128}).status_code == 200
            assert client.get(f"/images/{evil['parent']}.jpg").status_code == 404  # no URL


def test_chromium_shows_a_redirected_photo_under_the_pages_csp(
    bucket_collection, seaweed, live_server, tmp_path
):
    """The page's "more like this" photo is a full-size /images/ID.jpg: with --image-redirect
    Chromium follows the 307 to the bucket, the policy in force (no bypass) lets it load, and
    nothing is blocked."""
    import shutil

    from tests.search.test_browser import CHROMIUM

    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("needs Chromium: apt-get install chromium (Debian's package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    db, _, (pid, _path) = bucket_collection
    copy = shutil.copytree(db, tmp_path / "db")
    with live_server("--store", str(copy), "--image-redirect", env=seaweed.env) as (url, _):
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            page = browser.new_page()  # no bypass: the server's Content-Security-Policy holds
            blocked, from_bucket = [], []
            page.on(
                "console",
                lambda m: blocked.append(m.text) if "Content Security" in m.text else None,
            )
            page.on(
                "response",
                lambda r: (
                    from_bucket.append(r.status) if r.url.startswith(seaweed.endpoint) else None
                ),
            )
            with page.expect_response(lambda r: r.url.startswith(seaweed.endpoint)):
                page.goto(f"{url}/?like={pid}")
            page.wait_for_selector("#stage.shown #preview")
            assert from_bucket == [200] and not blocked
            browser.close()
