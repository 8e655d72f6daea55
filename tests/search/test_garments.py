"""Garment by garment: a photo from outside the dataset is searched in each garment the
detector finds (`--bbox auto`), the table and JSON show each garment's box, type, score and
results, `--category` keeps only its type, nothing found means the whole photo with a notice;
`ingest run --detector` boxes the photos that have none and records the detector, which the
collection's searches then use and a rerun with another one is refused.

The detectors here are tests.detection's biased ones: their boxes are arbitrary, which is what
these tests need (how the pipeline carries them)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from embedder.checkpoint import save_checkpoint
from search.cli import app as search_app
from search.store import open_store
from tests.detection import biased_detector

runner = CliRunner()


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detectors")
    return {
        "upper": biased_detector(folder / "upper.safetensors", ("upper",)),
        "lower": biased_detector(folder / "lower.safetensors", ("lower",)),
    }


@pytest.fixture(scope="module")
def outside(sample_root, tmp_path_factory):
    """A consumer photo copied outside the dataset, as a user sends one."""
    photo = next(sample_root.rglob("comsumer_01.jpg"))
    copy = tmp_path_factory.mktemp("outside") / "street.jpg"
    shutil.copyfile(photo, copy)
    return str(copy)


@pytest.fixture(scope="module")
def collection(sample_root, tmp_path_factory, ingest_tiny):
    db = str(tmp_path_factory.mktemp("garments") / "db")
    assert ingest_tiny(sample_root, db).exit_code == 0
    return db


def _search(db, *args):
    return runner.invoke(search_app, [*args, "--store", db, "--top", "3"])


def test_an_outside_photo_is_searched_garment_by_garment(collection, outside, detectors):
    found = _search(collection, outside, "--detector", detectors["upper"], "--json")
    assert found.exit_code == 0, found.output
    (entry,) = json.loads(found.stdout)
    assert entry["query"] == outside and "results" not in entry and "notice" not in entry
    garments = entry["garments"]
    with Image.open(outside) as img:
        width, height = img.size
    assert 1 <= len(garments) <= 10
    for g in garments:
        x1, y1, x2, y2 = g["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert g["type"] == "upper" and 0 < g["score"] <= 1
        assert [r["rank"] for r in g["results"]] == [1, 2, 3]
        # no --category: an upper-body garment is looked for among the tops
        assert {r["category"] for r in g["results"]} == {"TOPS"}
    assert [g["score"] for g in garments] == sorted((g["score"] for g in garments), reverse=True)
    # different boxes, different queries: not every garment gets the same answer
    assert len({tuple(r["id"] for r in g["results"]) for g in garments}) > 1 or len(garments) == 1

    table = _search(collection, outside, "--detector", detectors["upper"])
    assert table.exit_code == 0, table.output
    sections = [line for line in table.output.splitlines() if "upper-body garment at" in line]
    assert len(sections) == len(garments)
    first = garments[0]
    assert f"at {','.join(map(str, first['box']))} (score {first['score']:.2f})" in sections[0]

    whole = _search(collection, outside, "--detector", detectors["upper"], "--bbox", "none")
    given = _search(collection, outside, "--detector", detectors["upper"], "--bbox", "5,5,60,60")
    plain = _search(collection, outside, "--json")  # no detector anywhere: the whole photo
    for result in (whole, given):
        assert result.exit_code == 0 and "garment at" not in result.output, result.output
    assert "garments" not in json.loads(plain.stdout)[0]


def test_a_category_keeps_its_garments_and_nothing_found_is_the_whole_photo(
    collection, outside, detectors
):
    tops = _search(collection, outside, "--detector", detectors["upper"], "--category", "TOPS")
    assert tops.exit_code == 0 and "upper-body garment at" in tops.output, tops.output
    none = _search(
        collection, outside, "--detector", detectors["upper"], "--category", "TROUSERS", "--json"
    )
    assert none.exit_code == 0, none.output
    (entry,) = json.loads(none.stdout)
    assert entry["notice"] == "no lower-body garment found in the photo: searched it whole"
    (g,) = entry["garments"]
    assert g["box"] is None and g["type"] is None and len(g["results"]) == 3
    assert all(r["category"] == "TROUSERS" for r in g["results"])
    shown = _search(collection, outside, "--detector", detectors["upper"], "--category", "TROUSERS")
    assert "no lower-body garment found in the photo: searched it whole" in shown.output


def test_a_dataset_photo_keeps_its_annotated_box(collection, sample_root, detectors):
    import locale

    before = locale.setlocale(locale.LC_ALL)
    photo = str(next(sample_root.rglob("comsumer_01.jpg")))
    for _ in range(4):  # from the second on, both models cached: loaded side by side
        found = _search(collection, photo, "--detector", detectors["upper"], "--json")
        assert found.exit_code == 0, found.output
    (entry,) = json.loads(found.stdout)
    assert "garments" not in entry and entry["item_id"]
    assert locale.setlocale(locale.LC_ALL) == before  # OpenVINO's loads left it as it was


def test_the_contact_sheet_outlines_the_garment(collection, outside, detectors, tmp_path):
    sheet = tmp_path / "sheet.png"
    made = _search(collection, outside, "--detector", detectors["upper"], "--sheet", str(sheet))
    assert made.exit_code == 0, made.output
    first = sheet.with_name("sheet-1.png") if not sheet.exists() else sheet
    with Image.open(first) as img:
        tile = img.convert("RGB").crop((0, 0, 160, 160))
        orange = sum(1 for p in tile.getdata() if p[0] > 230 and 140 < p[1] < 185 and p[2] < 40)
    assert orange > 20  # the garment's outline on the query tile


def test_ingest_with_a_detector_boxes_photos_without_one_and_records_it(
    sample_root, tmp_path, ingest_tiny, detectors, outside, one_line_error
):
    tree = tmp_path / "tree"
    shutil.copytree(sample_root, tree)
    (tree / "Anno" / "list_bbox_consumer2shop.txt").unlink()  # a tree without boxes
    db = str(tmp_path / "db")
    made = ingest_tiny(tree, db, "--detector", detectors["upper"])
    assert made.exit_code == 0, made.output
    assert "boxes by detector sha256:" in made.output and "detect" in made.output
    with open_store(store_dir=db) as store:
        meta = store.metadata()
        payloads = [p for points in store.scroll(vectors=False) for p in points.payloads]
    assert meta["detector"]["weights"].startswith("sha256:")
    assert meta["detector_file"] == os.path.realpath(detectors["upper"])
    by_category = {}
    for p in payloads:
        by_category.setdefault(p["category"], set()).add(p["box_source"])
        if p["box_source"] == "detected":
            assert len(p["bbox"]) == 4 and p["bbox"][0] < p["bbox"][2]
        else:
            assert "bbox" not in p
    assert by_category["TOPS"] == {"detected"}  # its type is found
    assert by_category["TROUSERS"] == {"detected"}  # not its type: the detector's best box

    again = ingest_tiny(tree, db)  # the recorded detector: nothing to do
    assert again.exit_code == 0 and "embedded 0 (0 changed)" in again.output, again.output
    other = ingest_tiny(tree, db, "--detector", detectors["lower"])
    one_line_error(other, "made with detector", "--recreate")
    annotated = ingest_tiny(sample_root, str(tmp_path / "db2"), "--detector", detectors["upper"])
    assert annotated.exit_code == 0, annotated.output
    with open_store(store_dir=str(tmp_path / "db2")) as store:
        sources = {p["box_source"] for pts in store.scroll(vectors=False) for p in pts.payloads}
    assert sources == {"annotated"}  # the Anno file's boxes are kept

    found = _search(db, outside, "--json")  # the collection's own detector
    assert "garments" in json.loads(found.stdout)[0], found.output
    wrong = _search(db, outside, "--detector", detectors["lower"])
    one_line_error(wrong, "not the one that chose the collection's boxes")
    missing = _search(db, outside, "--detector", str(tmp_path / "nowhere.safetensors"))
    one_line_error(missing, "not found")
    embedder = tmp_path / "embedder.safetensors"
    from embedder.model import build_model

    save_checkpoint(build_model("test_resnet", img_size=64, pretrained="none"), embedder)
    mixed = _search(db, outside, "--detector", str(embedder))
    one_line_error(mixed, "holds an embedder, not a garment detector")


# imported at no start of a search
NEVER_AT_SEARCH = ("torch", "torchvision", "openvino.tools.ovc", "pydantic")


def test_search_with_detection_never_imports_torch(collection, outside, detectors):
    """Nor what only export needs (OpenVINO's converter), nor pydantic (typer 0.29's checks of
    each parameter, 0.15-0.2 s of a start)."""
    args = [outside, "--top", "3", "--json", "--store", collection, "--detector"]
    args.append(detectors["upper"])
    first = runner.invoke(search_app, args)  # exports both models to the cache
    assert first.exit_code == 0, first.output
    script = (
        "import sys; from search.cli import app; "
        f"NEVER = {NEVER_AT_SEARCH!r}; app({args!r}, standalone_mode=False); "
        "print('TORCH', *(m in sys.modules for m in NEVER))"
    )
    fast = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert fast.returncode == 0, fast.stderr
    body, marker = fast.stdout.rsplit("TORCH", 1)
    loaded = dict(zip(NEVER_AT_SEARCH, marker.split(), strict=True))
    assert loaded == dict.fromkeys(NEVER_AT_SEARCH, "False")
    assert json.loads(body) == json.loads(first.stdout)
