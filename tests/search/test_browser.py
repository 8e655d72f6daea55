"""End to end in a real headless Chromium: `search serve` as a process, the page driven by a user.

Needs Debian's `chromium` package (/usr/bin/chromium) and Playwright from PyPI; without them
the tests skip with a message naming the package.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BIN = Path(sys.executable).parent
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", "")) if os.environ.get("SCREENSHOT_DIR") else None

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not shutil.which("chromium"),
    reason="browser tests need Chromium: apt-get install chromium (Debian's package)",
)


@pytest.fixture(scope="module")
def server(sample_root, tmp_path_factory, ingest_tiny, live_server):
    db = tmp_path_factory.mktemp("browser") / "qdrant_data"
    assert ingest_tiny(sample_root, str(db)).exit_code == 0
    with live_server("--store", str(db)) as running:
        yield running


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


def _page(browser, **options):
    """A page whose test code may evaluate JavaScript strings (Playwright's evaluate and
    wait_for_function use eval, which the app's CSP forbids); test_the_page_works_under_its_csp
    drives the page with the policy in force."""
    return browser.new_page(bypass_csp=True, **options)


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
    page = _page(browser, viewport={"width": 1280, "height": 900})
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

    assert page.locator("[data-source=shop]").get_attribute("aria-pressed") == "true"
    page.click("[data-source='']")  # shop photos by default; here every photo, the query's too
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
    similarity = page.inner_text("#results .card >> nth=0 >> b")  # "100% similar"
    assert similarity.endswith("% similar") and int(similarity.split("%")[0]) >= 99
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
    shared = _page(browser)
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
    page = _page(browser, viewport={"width": 390, "height": 844})
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
    assert "not an image we can read" in page.inner_text("#error")  # plain words, no codes
    assert "HTTP" not in page.inner_text("#error")

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    page.set_input_files("#file", str(text))
    page.wait_for_function(
        "document.querySelector('#error').textContent.includes('not a photo we can read')"
    )
    _shot(page, tmp_path, "phone-error.png")
    page.close()


def _wait_results(page, before=None) -> list[dict]:
    """The result cards once a search has finished (and, given `before`, changed)."""
    page.wait_for_function("!document.getElementById('status').classList.contains('busy')")
    page.wait_for_selector("#results .card")
    if before is not None:
        ids = [r["id"] for r in before]
        page.wait_for_function(
            f"JSON.stringify([...document.querySelectorAll('#results .card')]"
            f".map(c => c.dataset.id)) !== {json.dumps(json.dumps(ids))}"
        )
    return _results(page)


def test_back_after_more_like_this_restores_the_uploads_results(server, browser, sample_root):
    url, _ = server
    page = _page(browser, viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("#categories button[data-category=TOPS]")
    query = sorted((sample_root / "img" / "DRESSES").rglob("comsumer_01.jpg"))[0]
    page.set_input_files("#file", str(query))
    uploaded = _wait_results(page)
    page.click("#results .card >> nth=1")
    page.wait_for_selector("#detail.shown #item-photos .card")
    page.click("#more")
    page.wait_for_function("location.search.includes('like=')")
    similar = _wait_results(page, uploaded)
    assert similar != uploaded
    page.go_back()  # the garment panel
    page.go_back()  # the upload's results
    page.wait_for_function("!location.search.includes('like=')")
    assert _wait_results(page, similar) == uploaded
    assert page.locator("#stage").is_visible()  # the uploaded photo is shown again
    page.go_forward()
    page.go_forward()
    page.wait_for_function("location.search.includes('like=')")
    assert _wait_results(page, uploaded) == similar
    page.close()


def test_likes_change_the_results_and_drop_the_disliked_garment(
    server, browser, sample_root, tmp_path
):
    url, _ = server
    query = sorted((sample_root / "img" / "TOPS").rglob("comsumer_01.jpg"))[0]
    for width, height, name in ((1280, 900, "likes-desktop.png"), (390, 844, "likes-phone.png")):
        page = _page(browser, viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_selector("#categories button[data-category=TOPS]")
        page.set_input_files("#file", str(query))
        before = _wait_results(page)
        assert len(before) >= 4
        if width == 390:  # on a phone the results (or their status) come into view
            assert page.evaluate("document.activeElement.id") == "r-title"
            top = page.evaluate("document.getElementById('r-title').getBoundingClientRect().top")
            assert 0 <= top < height
        page.click("#results li >> nth=0 >> [data-vote=like]")
        after_one = _wait_results(page, before)
        page.click("#results li >> nth=0 >> [data-vote=like]")
        after_two = _wait_results(page, after_one)
        disliked = after_two[0]["item"]
        page.click("#results li >> nth=0 >> [data-vote=dislike]")
        after = _wait_results(page, after_two)
        assert disliked not in {r["item"] for r in after}
        assert [r["id"] for r in after] != [r["id"] for r in before]
        assert "2 liked and 1 not-it photos" in page.inner_text("#feedback")
        assert "likes=" in page.url and "dislikes=" in page.url
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways
        _shot(page, tmp_path, name)
        page.close()


def test_show_more_adds_a_page_of_new_garments(server, browser, sample_root):
    url, _ = server
    page = _page(browser, viewport={"width": 1280, "height": 900})
    page.goto(url + "?top=5&source=all")
    page.wait_for_selector("#categories button[data-category=TOPS]")
    query = sorted((sample_root / "img" / "TROUSERS").rglob("comsumer_01.jpg"))[0]
    page.set_input_files("#file", str(query))
    first = _wait_results(page)
    assert len(first) == 5
    page.click("#more-results")
    page.wait_for_function("document.querySelectorAll('#results .card').length > 5")
    more = _results(page)
    items = [r["item"] for r in more]
    assert more[:5] == first and len(items) == len(set(items)) == 10  # no garment twice
    page.close()


def test_the_page_works_under_its_csp(server, browser, sample_root):
    url, _ = server
    page = browser.new_page()  # no bypass: the server's Content-Security-Policy holds
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None)
    page.goto(url)
    page.wait_for_selector("#categories button[data-category=TOPS]")
    page.set_input_files("#file", str(next(sample_root.rglob("comsumer_01.jpg"))))
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").count() > 0 and not blocked
    page.close()


def test_the_api_docs_load_with_no_network(server, browser):
    url, _ = server
    page = browser.new_page()
    outside = []

    def only_local(route):
        if route.request.url.startswith(url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", only_local)
    page.goto(url + "/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    assert "/api/search" in page.inner_text("body") and not outside
    page.close()


def test_the_page_asks_for_the_key(sample_root, tmp_path, ingest_tiny, live_server, browser):
    db = tmp_path / "db"
    assert ingest_tiny(sample_root, str(db)).exit_code == 0
    with live_server("--store", str(db), env={"SEARCH_API_KEY": "page-key-42"}) as (url, _):
        page = _page(browser)
        page.goto(url)
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#key", "wrong")
        page.click("#key-form button")
        page.wait_for_function("document.getElementById('key-error').textContent.length > 0")
        page.fill("#key", "page-key-42")
        page.click("#key-form button")
        page.wait_for_selector("#categories button[data-category=TOPS]")
        page.set_input_files("#file", str(next(sample_root.rglob("comsumer_01.jpg"))))
        assert _wait_results(page)
        page.close()


def test_an_unreachable_server_is_reported(server, browser, sample_root, tmp_path):
    url, proc = server
    page = _page(browser)
    page.goto(url)
    page.wait_for_selector("#categories button[data-category=TOPS]")
    proc.terminate()
    proc.wait(timeout=30)
    query = sorted((sample_root / "img" / "TOPS").rglob("shop_01.jpg"))[0]
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#error.shown")
    assert "cannot be reached" in page.inner_text("#error")
    page.close()


@pytest.fixture(scope="module")
def detecting_server(sample_root, tmp_path_factory, ingest_tiny, live_server):
    """`search serve --detector`: a detector (tests.detection) that finds upper- and
    lower-body garments all over any photo."""
    from tests.detection import biased_detector

    folder = tmp_path_factory.mktemp("detecting")
    detector = biased_detector(folder / "detector.safetensors", ("upper", "lower"))
    db = folder / "qdrant_data"
    assert ingest_tiny(sample_root, str(db)).exit_code == 0
    with live_server("--store", str(db), "--detector", detector) as running:
        yield running


def _garments(page) -> list[dict]:
    """The outlines, in the order of the answer's garments."""
    found = page.eval_on_selector_all(
        "#garments button",
        "bs => bs.map(b => ({index: +b.dataset.index, type: b.dataset.type,"
        " picked: b.classList.contains('picked'), box: b.getBoundingClientRect().toJSON()}))",
    )
    return sorted(found, key=lambda g: g["index"])


@pytest.mark.parametrize("width", [1280, 390])
def test_the_garments_found_are_outlined_and_each_can_be_searched(
    detecting_server, browser, sample_root, tmp_path, width
):
    url, _ = detecting_server
    query = sorted((sample_root / "img" / "TOPS").rglob("comsumer_01.jpg"))[0]
    outside = tmp_path / "street.jpg"
    shutil.copyfile(query, outside)  # a user's photo: not the dataset's
    page = _page(browser, viewport={"width": width, "height": 900})
    answers = []
    page.on(
        "response",
        lambda r: answers.append(r) if r.url.endswith("/api/search") else None,
    )
    page.goto(url)
    page.wait_for_selector("#categories button[data-category=TOPS]")
    page.set_input_files("#file", str(outside))
    page.wait_for_selector("#garments button.picked")
    _wait_results(page)
    found = _garments(page)
    assert len(found) >= 2 and {g["type"] for g in found} == {"upper", "lower"}
    answer = answers[-1].json()
    assert len(answer["garments"]) == len(found) and answer["garment"] == 0  # the best one
    assert [g["picked"] for g in found] == [i == 0 for i in range(len(found))]
    stage = page.locator("#stage").bounding_box()
    for g in found:  # every outline on the photo, at the phone's width too
        box = g["box"]
        assert (
            stage["x"] - 1 <= box["x"]
            and box["x"] + box["width"] <= stage["x"] + stage["width"] + 1
        )
    assert "garments found" in page.inner_text("#garment-note")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    _shot(page, tmp_path, f"garments-{width}.png")

    # the category chosen: the garment of its type is the one searched
    page.click("#categories button[data-category=TROUSERS]")
    page.wait_for_function("document.querySelector('#status').textContent.includes('TROUSERS')")
    _wait_results(page)
    assert page.get_attribute("#garments button.picked", "data-type") == "lower"
    answer = answers[-1].json()
    assert answer["filters"] == {"category": "TROUSERS", "source": "shop"}
    assert answer["garments"][answer["garment"]]["type"] == "lower"

    # clicking another outline searches that garment: its box goes to the server
    sent = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/api/search") else None)
    other = next(g["index"] for g in _garments(page) if not g["picked"])
    page.focus(f"#garments button[data-index='{other}']")  # by keyboard: outlines may overlap
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"document.querySelector(\"#garments button[data-index='{other}']\")"
        ".classList.contains('picked')"
    )
    _wait_results(page)
    # (Playwright does not show a multipart body holding a Blob): the server was sent a box,
    # so it searched that and detected nothing
    assert sent and answers[-1].url == sent[-1].url
    last = answers[-1].json()
    assert last["garments"] == [] and last["garment"] is None
    assert "detector" not in last["timings_ms"] and "detector" in answer["timings_ms"]

    # drawing a box still works, over the outlines
    img = page.locator("#preview").bounding_box()
    page.mouse.move(img["x"] + 5, img["y"] + 5)
    page.mouse.down()
    page.mouse.move(img["x"] + img["width"] / 2, img["y"] + img["height"] / 2, steps=4)
    page.mouse.up()
    assert page.locator("#box").is_visible()
    page.wait_for_function("document.getElementById('garments').classList.contains('dim')")
    page.close()
