"""End to end in a real headless Chromium: `search serve` as a process, the page driven by a user.

Needs Debian's `chromium` package (/usr/bin/chromium) and Playwright from PyPI; without them
the tests skip with a message naming the package.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BIN = Path(sys.executable).parent
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", "")) if os.environ.get("SCREENSHOT_DIR") else None

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not shutil.which("chromium"),
    reason="browser tests need Chromium: apt-get install chromium (Debian's package)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(sample_root, tmp_path_factory, ingest_tiny):
    db = tmp_path_factory.mktemp("browser") / "qdrant_data"
    assert ingest_tiny(sample_root, str(db)).exit_code == 0
    port = _free_port()
    proc = subprocess.Popen(
        [BIN / "search", "serve", "--store", str(db), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"search serve did not start: {proc.stdout.read()}")
            time.sleep(0.3)
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


def _shot(page, tmp_path, name) -> Path:
    out = (SHOTS or tmp_path) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    print(f"screenshot: {out}")
    return out


def _anno(sample_root) -> dict[str, list[int]]:
    lines = (sample_root / "Anno" / "list_bbox_consumer2shop.txt").read_text().splitlines()[2:]
    return {p: [int(v) for v in rest[2:]] for p, *rest in (line.split() for line in lines)}


def _results(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results .card",
        "cards => cards.map(c => ({id: c.dataset.id, item: c.dataset.item, "
        "category: c.dataset.category, own: c.classList.contains('own')}))",
    )


def test_upload_box_category_results_item_and_more_like_this(
    server, browser, sample_root, tmp_path
):
    url, _ = server
    query = sorted((sample_root / "img" / "TOPS").rglob("comsumer_01.jpg"))[0]
    rel = query.relative_to(sample_root).as_posix()
    own_item = query.parent.name
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("#categories button[data-category=TOPS]")

    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results .card")
    # drag a box around the garment (its annotated box, in the displayed photo's pixels)
    img = page.locator("#preview")
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    natural = page.evaluate("document.getElementById('preview').naturalWidth")
    rect = img.bounding_box()
    s = rect["width"] / natural
    x1, y1, x2, y2 = _anno(sample_root)[rel]
    page.mouse.move(rect["x"] + x1 * s, rect["y"] + y1 * s)
    page.mouse.down()
    page.mouse.move(rect["x"] + (x1 + x2) / 2 * s, rect["y"] + (y1 + y2) / 2 * s, steps=4)
    page.mouse.move(rect["x"] + x2 * s, rect["y"] + y2 * s, steps=4)
    page.mouse.up()
    assert page.locator("#box").is_visible()

    page.click("#categories button[data-category=TOPS]")
    page.wait_for_function(
        "() => { const c = [...document.querySelectorAll('#results .card')];"
        " return c.length && c.every(x => x.dataset.category === 'TOPS') }"
    )
    page.wait_for_function("document.querySelector('#status').textContent.includes('TOPS')")
    results = _results(page)
    assert results and all(r["category"] == "TOPS" for r in results)
    assert results[0]["item"] == own_item
    # the box reached the server in the photo's pixels: the stored crop of this very photo
    first_score = float(page.inner_text("#results .card >> nth=0 >> b").split()[-1])
    assert first_score > 0.99
    items = [r["item"] for r in results]
    assert len(items) == len(set(items))  # grouped by garment by default
    assert "category=TOPS" in page.url
    _shot(page, tmp_path, "search-results.png")

    # a result: the garment's photos, then "more like this"
    page.click("#results .card >> nth=0")
    page.wait_for_selector("#detail.shown #item-photos .card")
    photos = page.locator("#item-photos .card").count()
    # every photo of the garment, in whatever subcategory folder (this one sits in two)
    assert photos == len(list(sample_root.glob(f"img/*/*/{own_item}/*.jpg")))
    page.click("#more")
    page.wait_for_function("location.search.includes('like=')")
    page.wait_for_function("document.querySelector('#status').textContent.includes('garments')")
    liked = page.evaluate("new URLSearchParams(location.search).get('like')")
    similar = _results(page)
    assert similar and liked not in {r["id"] for r in similar}
    own = [r for r in similar if r["item"] == own_item]
    assert own and all(r["own"] for r in own)  # the query's garment is outlined
    assert all(r["category"] == "TOPS" for r in similar)
    _shot(page, tmp_path, "more-like-this.png")

    # the URL holds the state: a shared link shows the same "more like this"
    shared = browser.new_page()
    shared.goto(page.url)
    shared.wait_for_function("document.querySelectorAll('#results .card').length > 0")
    assert [r["id"] for r in _results(shared)] == [r["id"] for r in similar]
    assert (
        shared.locator("#categories button[data-category=TOPS]").get_attribute("aria-pressed")
        == "true"
    )
    shared.close()
    page.close()


def test_errors_are_shown_and_the_page_is_usable_by_keyboard_and_on_a_phone(
    server, browser, tmp_path
):
    url, _ = server
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(url)
    page.wait_for_selector("#categories button[data-category=TOPS]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling

    # keyboard: the drop zone takes focus and Enter opens the file picker
    page.focus("#drop")
    assert page.evaluate("document.activeElement.id") == "drop"
    page.evaluate(
        "window.picked = 0; document.getElementById('file')"
        ".addEventListener('click', e => { window.picked++; e.preventDefault(); })"
    )
    page.keyboard.press("Enter")
    assert page.evaluate("window.picked") == 1
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"this is not a photo")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#error.shown")
    assert "not an image" in page.inner_text("#error")
    assert "HTTP 400" in page.inner_text("#error")

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    page.set_input_files("#file", str(text))
    page.wait_for_function("document.querySelector('#error').textContent.includes('text/plain')")
    _shot(page, tmp_path, "phone-error.png")
    page.close()


def test_an_unreachable_server_is_reported(server, browser, sample_root, tmp_path):
    url, proc = server
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#categories button[data-category=TOPS]")
    proc.terminate()
    proc.wait(timeout=30)
    query = sorted((sample_root / "img" / "TOPS").rglob("shop_01.jpg"))[0]
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#error.shown")
    assert "unreachable" in page.inner_text("#error")
    page.close()
