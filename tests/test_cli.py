"""The three console scripts through their real entry points: output and exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from embedder.cli import app as embedder_app
from ingest.cli import app as ingest_app
from search.cli import app as search_app

runner = CliRunner()
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ingested(sample_root, tmp_path_factory, ingest_tiny):
    db = tmp_path_factory.mktemp("cli") / "qdrant_data"
    result = ingest_tiny(sample_root, str(db))
    assert result.exit_code == 0, result.output
    return db, result.output


def test_console_scripts_are_installed_and_explain_themselves():
    for name in ("ingest", "search", "embedder"):
        out = subprocess.run([BIN / name, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "Usage" in out.stdout, name
    out = subprocess.run([BIN / "ingest", "run", "--help"], capture_output=True, text=True)
    assert "--root" in out.stdout and "--qdrant-url" in out.stdout


def test_sample_command_writes_a_tree(tmp_path):
    result = runner.invoke(ingest_app, ["sample", "--out", str(tmp_path / "s"), "--items", "3"])
    assert result.exit_code == 0 and "wrote 3 items" in result.output
    assert (tmp_path / "s" / "Eval" / "list_eval_partition.txt").is_file()


def test_ingest_prints_a_summary_and_a_rerun_skips_everything(ingested, sample_root, ingest_tiny):
    db, output = ingested
    images = len(list(sample_root.rglob("*.jpg")))
    assert f"seen {images}, embedded {images}" in output and "failed 0" in output
    again = ingest_tiny(sample_root, str(db))
    assert (
        again.exit_code == 0 and f"embedded 0 (0 changed), already present {images}" in again.output
    )


def _tops_query(sample_root):
    return next((sample_root / "img" / "TOPS").rglob("shop_01.jpg"))


def test_search_prints_a_table_of_the_filtered_results(ingested, sample_root):
    db, _ = ingested
    args = [str(_tops_query(sample_root)), "--top", "5", "--category", "TOPS", "--store", str(db)]
    result = runner.invoke(search_app, args)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line[:1].isdigit()]
    assert len(rows) == 5 and all(" TOPS " in r for r in rows)
    assert "UNTRAINED" in result.output


def test_search_writes_a_contact_sheet_outlining_the_query_item(ingested, sample_root, tmp_path):
    db, _ = ingested
    sheet = tmp_path / "sheet.png"
    args = [str(_tops_query(sample_root)), "--top", "5", "--category", "TOPS", "--store", str(db)]
    result = runner.invoke(search_app, [*args, "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    with Image.open(sheet) as img:
        assert img.width >= 5 * 160
        first = img.crop((160, 0, 320, 194))  # the first result: the query's own item
        assert (50, 205, 50) in {c for _, c in first.getcolors(1 << 16)}  # outlined in green


def test_search_json_for_programs(ingested, sample_root):
    db, _ = ingested
    query = _tops_query(sample_root)
    out = runner.invoke(search_app, [str(query), "--top", "3", "--json", "--store", str(db)])
    answer = json.loads(out.stdout)
    assert out.exit_code == 0 and len(answer[0]["results"]) == 3
    assert answer[0]["results"][0]["path"] == query.relative_to(sample_root).as_posix()


def test_search_group_item_prints_one_line_per_garment(ingested, sample_root):
    db, _ = ingested
    query = next((sample_root / "img" / "TOPS").rglob("comsumer_01.jpg"))
    args = [str(query), "--top", "6", "--group", "item", "--store", str(db)]
    result = runner.invoke(search_app, args)
    assert result.exit_code == 0, result.output
    assert "6 garments" in result.output and "photos" in result.output.splitlines()[1]
    rows = [line.split() for line in result.output.splitlines() if line[:1].isdigit()]
    items = [row[5] for row in rows]
    assert len(rows) == 6 and len(set(items)) == 6 and items[0] == query.parent.name
    answer = json.loads(runner.invoke(search_app, [*args, "--json"]).stdout)[0]
    assert answer["item_id"] == query.parent.name
    for row, res in zip(rows, answer["results"], strict=True):
        assert int(row[2]) == res["matches"] == len(res["photos"])
        assert {p["item_id"] for p in res["photos"]} == {res["item_id"]}


def test_search_like_a_stored_photo_leaves_it_out(ingested, sample_root):
    db, _ = ingested
    photo = next((sample_root / "img" / "DRESSES").rglob("shop_01.jpg"))
    rel = photo.relative_to(sample_root).as_posix()
    by_path = runner.invoke(search_app, ["--like", rel, "--top", "5", "--json", "--store", str(db)])
    assert by_path.exit_code == 0, by_path.output
    results = json.loads(by_path.stdout)[0]["results"]
    assert len(results) == 5 and rel not in {r["path"] for r in results}
    from search.store import point_id

    by_id = runner.invoke(
        search_app, ["--like", point_id(rel), "--top", "5", "--json", "--store", str(db)]
    )
    assert [r["id"] for r in json.loads(by_id.stdout)[0]["results"]] == [r["id"] for r in results]
    absolute = runner.invoke(search_app, ["--like", str(photo), "--top", "5", "--store", str(db)])
    assert absolute.exit_code == 0 and "like " in absolute.output
    both = runner.invoke(search_app, [str(photo), "--like", rel, "--store", str(db)])
    assert both.exit_code == 2 and "one of the two" in both.output
    missing = runner.invoke(search_app, ["--like", "img/none.jpg", "--store", str(db)])
    assert missing.exit_code == 2 and "no stored photo" in missing.output


def test_search_serve_explains_itself():
    out = subprocess.run([BIN / "search", "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--images" in out.stdout and "127.0.0.1" in out.stdout
    assert (
        "search serve --help"
        in subprocess.run([BIN / "search", "--help"], capture_output=True, text=True).stdout
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bbox", "1,2,3"], "--bbox takes x1,y1,x2,y2"),
        (["--bbox", "10,10,5,20"], "x2 > x1"),
        (["--category", "SHOES"], "unknown --category 'SHOES'; the collection has: DRESSES, TOPS"),
        (["--collection", "nope"], "collection 'nope' does not exist"),
    ],
)
def test_search_errors_are_one_line(ingested, sample_root, args, message):
    db, _ = ingested
    query = next(sample_root.rglob("*.jpg"))
    result = runner.invoke(search_app, [str(query), "--store", str(db), *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_missing_query_and_missing_root_fail_cleanly(ingested, tmp_path, tiny_args):
    db, _ = ingested
    result = runner.invoke(search_app, [str(tmp_path / "no.jpg"), "--store", str(db)])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(
        ingest_app, ["run", "--root", str(tmp_path / "nothing"), "--store", str(db), *tiny_args]
    )
    assert result.exit_code == 2 and "does not exist" in result.output


def test_publish_copies_to_a_server_collection(ingested, tmp_path):
    db, _ = ingested
    target = f"file:{tmp_path / 'server'}"
    result = runner.invoke(ingest_app, ["publish", "--to", target, "--store", str(db)])
    assert result.exit_code == 0, result.output
    from search.stores import open_store

    with (
        open_store(store_dir=str(db), collection="deepfashion") as a,
        open_store(url=target, collection="deepfashion") as b,
    ):
        assert a.count() == b.count() > 0 and a.metadata() == b.metadata()
        query = next(a.scroll(1)).vectors
        assert [h.id for h in a.search(query, 5)[0]] == [h.id for h in b.search(query, 5)[0]]


def test_embedder_info_reads_a_checkpoint(tmp_path, tiny_model):
    from embedder import save_checkpoint

    save_checkpoint(tiny_model, tmp_path / "w.safetensors", epoch=1)
    result = runner.invoke(embedder_app, ["info", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0 and "backbone: test_resnet" in result.output
    bad = runner.invoke(embedder_app, ["info", str(tmp_path / "none.safetensors")])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_offline_default_weights_exit_with_a_hint(sample_root, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            BIN / "ingest",
            "run",
            "--root",
            str(sample_root),
            "--store",
            str(tmp_path / "db"),
            "--backbone",
            "test_resnet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and "--weights" in out.stderr and "Traceback" not in out.stderr


def test_train_then_evaluate_exact_and_via_store(sample_root, tmp_path, tiny_args):
    run = tmp_path / "run"
    train = runner.invoke(
        embedder_app,
        [
            "train",
            "--root",
            str(sample_root),
            "--out",
            str(run),
            "--backbone",
            "test_resnet",
            "--img-size",
            "64",
            "--pretrained",
            "none",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--no-progress",
            "--k",
            "1,5",
        ],
    )
    assert train.exit_code == 0, train.output
    assert "val_top1" in train.output and (run / "best.safetensors").is_file()
    again = runner.invoke(embedder_app, ["train", "--root", str(sample_root), "--out", str(run)])
    assert again.exit_code == 2 and "--resume" in again.output
    weights = run / "best.safetensors"
    db = tmp_path / "db"  # fp32 on both sides: bf16 results vary with batch shape
    ingest = runner.invoke(
        ingest_app,
        [
            "run",
            "--root",
            str(sample_root),
            "--store",
            str(db),
            "--weights",
            str(weights),
            "--workers",
            "0",
            "--no-progress",
            "--precision",
            "fp32",
        ],
    )
    assert ingest.exit_code == 0, ingest.output
    out = tmp_path / "eval.json"
    result = runner.invoke(
        embedder_app,
        [
            "evaluate",
            "--root",
            str(sample_root),
            "--weights",
            str(weights),
            "--k",
            "1,5",
            "--via-store",
            "--store",
            str(db),
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "k.png"),
            "--embedding-map",
            str(tmp_path / "map.png"),
            "--workers",
            "0",
            "--precision",
            "fp32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "agreement with exact search: overlap@5 1.000, same_top1 1.000" in result.output
    report = json.loads(out.read_text())
    exact, store = report[str(weights)], report["store"]
    assert exact["overall"] == store["overall"] and exact["queries"] > 0
    assert set(exact["per_category"]) == {"DRESSES", "TOPS", "TROUSERS"}
    assert (tmp_path / "k.png").is_file() and (tmp_path / "map.png").is_file()
    other = runner.invoke(
        search_app,
        [
            str(next(sample_root.rglob("shop_01.jpg"))),
            "--store",
            str(db),
            "--weights",
            str(tmp_path / "missing.st"),
        ],
    )
    assert other.exit_code == 2 and "not found" in other.output


def test_image_url_payload_for_the_dashboard(sample_root, tmp_path, ingest_tiny):
    from search.stores import open_store

    db = str(tmp_path / "db")

    def urls(**where):
        with open_store(**where, collection="deepfashion") as store:
            return {
                i: p.get("image_url")
                for pts in store.scroll(64)
                for i, p in zip(pts.ids, pts.payloads, strict=True)
            }

    first = ingest_tiny(sample_root, db, "--image-url", "http://shop.example:8000/images")
    assert first.exit_code == 0, first.output
    assert all(
        u == f"http://shop.example:8000/images/{i}.jpg" for i, u in urls(store_dir=db).items()
    )
    # a new base reaches every stored point without embedding anything again
    again = ingest_tiny(sample_root, db, "--image-url", "https://app.example/images/")
    assert again.exit_code == 0 and "embedded 0 (0 changed)" in again.output
    assert all(u == f"https://app.example/images/{i}.jpg" for i, u in urls(store_dir=db).items())
    target = f"file:{tmp_path / 'server'}"
    result = runner.invoke(
        ingest_app,
        ["publish", "--to", target, "--store", db, "--image-url", "http://h:8000/images/"],
    )
    assert result.exit_code == 0, result.output
    published = urls(url=target)
    assert published and all(u == f"http://h:8000/images/{i}.jpg" for i, u in published.items())
    bad = ingest_tiny(sample_root, db, "--image-url", "images/")
    assert bad.exit_code == 2 and "absolute http(s) URL" in bad.output
