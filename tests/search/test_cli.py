"""`search` through its command: tables, sheets, JSON, grouping, one-line errors."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ingest.cli import app as ingest_app
from search.cli import app as search_app
from search.store import point_id

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bbox", "1,2,3"], "--bbox takes auto, none or x1,y1,x2,y2"),
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


def test_query_files_are_checked_before_the_model_loads(
    db, sample_root, tmp_path, one_line_error, search_cli, query_photo
):
    one_line_error(search_cli(db, str(sample_root)), "is a folder")
    gif = tmp_path / "q.gif"
    gif.write_bytes(b"GIF89a")
    one_line_error(search_cli(db, str(gif)), "not an image ingest reads")
    top = runner.invoke(search_app, [query_photo, "--store", str(db), "--top", "0"])
    assert top.exit_code == 2 and "--top" in top.output


def test_a_file_name_with_a_newline_keeps_the_table(dataset, tmp_path, ingest_tiny):
    src = sorted((dataset / "img" / "TOPS").rglob("shop_01.jpg"))[0]
    odd = src.with_name("shop_\nodd.jpg")
    shutil.copy(src, odd)
    (src.parent / "._shop_01.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    result = ingest_tiny(dataset, str(tmp_path / "db"))
    assert result.exit_code == 0 and "failed 0" in result.output  # ._ files are skipped
    search = runner.invoke(search_app, [str(odd), "--store", str(tmp_path / "db"), "--top", "40"])
    assert search.exit_code == 0, search.output
    rows = [line for line in search.output.splitlines() if line[:1].isdigit()]
    assert len(rows) == 40 and any("shop_\\nodd.jpg" in row for row in rows)


ONE_LINE_ERRORS = [
    ("{tmp}/notes.jpg --store {db}", "cannot read image"),
    (
        "{tmp}/notes.jpg --qdrant-url http://127.0.0.1:9",
        "cannot reach Qdrant at http://127.0.0.1:9",
    ),
    ("{tmp}/notes.jpg --qdrant-url ftp://x", "must start with http:// or https://"),
]


@pytest.mark.parametrize(("args", "message"), ONE_LINE_ERRORS)
def test_cli_errors_are_one_line(bad_inputs, args, message):
    argv = args.format(**bad_inputs).split()
    result = CliRunner().invoke(search_app, argv)
    assert result.exit_code == 2, (argv, result.output)
    assert message in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_search_like_several_and_unlike_one(ingested, sample_root):
    db, _ = ingested
    photos = sorted((sample_root / "img" / "DRESSES").rglob("shop_01.jpg"))[:3]
    rels = [p.relative_to(sample_root).as_posix() for p in photos]
    args = ["--like", rels[0], "--like", rels[1], "--unlike", rels[2], "--top", "5"]
    result = runner.invoke(search_app, [*args, "--json", "--store", str(db)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)[0]
    paths = [r["path"] for r in answer["results"]]
    assert len(paths) == 5 and not set(paths) & set(rels)
    unliked_item = photos[2].parent.name
    assert unliked_item not in {r["item_id"] for r in answer["results"]}
    table = runner.invoke(search_app, [*args, "--store", str(db)])
    assert table.exit_code == 0 and "like the liked photos" in table.output
    alone = runner.invoke(search_app, ["--unlike", rels[2], "--store", str(db)])
    assert alone.exit_code == 2 and "--unlike needs" in alone.output


def test_serve_that_cannot_start_says_why_in_one_line(tmp_path, ingested, live_server):
    """A missing store, or one that another server holds, is the CLI's one-line error with
    exit 2, before the web server starts."""
    import subprocess

    serve = [Path(sys.executable).parent / "search", "serve", "--port", "0"]

    def started(*args):
        return subprocess.run([*serve, *args], capture_output=True, text=True, timeout=180)

    def one_line(run, words):
        lines = (run.stdout + run.stderr).strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stdout + run.stderr
        assert lines[0].startswith("error: ") and words in lines[0], lines[0]

    one_line(started("--store", str(tmp_path / "missing")), "does not exist")
    db, _ = ingested
    with live_server("--store", str(db)) as (_url, proc):
        one_line(started("--store", str(db)), f"in use by another process (pid {proc.pid})")


def test_usage_errors_are_one_plain_line(ingested, query_photo, tmp_path):
    """Through the console scripts: a bad value or a missing option is one `error:` line
    in the user's words, exit 2 (not click's box, not pydantic's wording)."""
    import subprocess

    db, _ = ingested
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    for argv, words in (
        (["search", query_photo, "--top", "0", "--store", db], "--top: must be at least 1"),
        (["search", query_photo, "--top", "x", "--store", db], "--top: must be a whole number"),
        (["search", query_photo, "--source", "foo", "--store", db], "'foo' is not one of"),
        (["ingest", "run"], "Missing option '--root'"),
        (["search", "serve", "--port", "-1"], "--port: must be at least 0"),
        (["search", "/dev/null", "--store", db], "is not a regular file"),
        (["search", str(tmp_path / "fifo.jpg"), "--store", db], "is not a regular file"),
        (["search", str(tmp_path / "zero.jpg"), "--store", db], "is not a regular file"),
    ):
        run = subprocess.run(
            [Path(sys.executable).parent / argv[0], *map(str, argv[1:])],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = (run.stdout + run.stderr).strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, (argv, run.stdout + run.stderr)
        assert lines[0].startswith("error: ") and words in lines[0], (argv, lines[0])
        assert "Input should" not in lines[0] and "Value error" not in lines[0]


def test_a_filter_value_in_another_case_is_the_collections_own(ingested, query_photo):
    db, _ = ingested
    lower = runner.invoke(search_app, [query_photo, "--category", "tops", "--json", "--store", db])
    assert lower.exit_code == 0, lower.output
    results = json.loads(lower.stdout)[0]["results"]
    assert results and {r["category"] for r in results} == {"TOPS"}


def test_like_takes_a_photo_path_relative_to_the_working_folder(
    ingested, sample_root, tmp_path, monkeypatch
):
    db, _ = ingested
    photo = next((sample_root / "img" / "DRESSES").rglob("shop_01.jpg"))
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    relative = os.path.relpath(photo, elsewhere)  # ../../…/img/DRESSES/…/shop_01.jpg
    assert relative.startswith("..")
    by_relative = runner.invoke(search_app, ["--like", relative, "--json", "--store", str(db)])
    by_id = runner.invoke(
        search_app,
        ["--like", point_id(photo.relative_to(sample_root).as_posix()), "--json", "--store", db],
    )
    assert by_relative.exit_code == 0, by_relative.output
    assert json.loads(by_relative.stdout) == json.loads(by_id.stdout)
