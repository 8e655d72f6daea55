"""`ingest` through its commands: output, exit codes, one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.cli import app as ingest_app
from search.cli import app as search_app
from search.store import open_store
from search.store.schema import DEFAULT_COLLECTION

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


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


def test_image_url_payload_for_the_dashboard(sample_root, tmp_path, ingest_tiny):

    db = str(tmp_path / "db")

    def urls(**where):
        with open_store(**where, collection=DEFAULT_COLLECTION) as store:
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


def test_an_unwritable_report_is_found_before_the_ingest(
    sample_root, tmp_path, ingest_tiny, one_line_error
):
    result = ingest_tiny(sample_root, str(tmp_path / "db"), "--report", "/nonexistent/r.csv")
    one_line_error(result, "--report")
    assert not (tmp_path / "db").exists()


ONE_LINE_ERRORS = [
    ("run --root {tmp}/empty --store {db} TINY", "no images"),
    (
        "run --root {root} --store {db} --weights {tmp}/bad.safetensors",
        "not a valid safetensors file",
    ),
    ("run --root {root} --store {db} --weights {tmp}/none.safetensors", "not found"),
    ("info --store {db} --collection missing", "does not exist"),
    (
        "run --root {root} --qdrant-url :memory: --write-consistency 2 TINY",
        "--write-consistency 2 is more than the 1 copies of --replication-factor",
    ),
    ("run --root {root} --store {db} --engine ray --decode device TINY", "Ray decodes on CPUs"),
]


@pytest.mark.parametrize(("args", "message"), ONE_LINE_ERRORS)
def test_cli_errors_are_one_line(bad_inputs, tiny_args, args, message):
    argv = [
        a
        for part in args.format(**bad_inputs).split()
        for a in (tiny_args if part == "TINY" else [part])
    ]
    result = CliRunner().invoke(ingest_app, argv)
    assert result.exit_code == 2, (argv, result.output)
    assert message in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_both_runtimes_make_the_same_collection(sample_root, tmp_path, ingest_tiny, store_contents):
    """`--runtime torch` still works everywhere, and gives OpenVINO's vectors (fp32)."""
    stores = {}
    for runtime in ("torch", "openvino"):
        db = tmp_path / runtime
        ran = ingest_tiny(sample_root, str(db), "--runtime", runtime, "--precision", "fp32")
        assert ran.exit_code == 0, ran.output
        assert ("OpenVINO fp32" if runtime == "openvino" else "torch fp32") in ran.output
        with open_store(store_dir=str(db)) as store:
            assert store.metadata()["encoded_by"] == {"runtime": runtime, "precision": "fp32"}
            stores[runtime] = store_contents(store)
    assert stores["torch"].keys() == stores["openvino"].keys()
    for pid, (payload, vector) in stores["torch"].items():
        assert stores["openvino"][pid][0] == payload
        assert float(vector @ stores["openvino"][pid][1]) >= 0.9999
    query = str(next(sample_root.rglob("comsumer_01.jpg")))
    answers = [
        runner.invoke(
            search_app,
            [query, "--json", "--store", str(tmp_path / "torch"), "--runtime", runtime]
            + ["--precision", "fp32"],
        )
        for runtime in ("torch", "openvino")
    ]
    assert all(a.exit_code == 0 for a in answers), [a.output for a in answers]
    ids = [[r["id"] for r in json.loads(a.stdout)[0]["results"]][:5] for a in answers]
    assert ids[0] == ids[1]
    refused = ingest_tiny(sample_root, str(tmp_path / "x"), "--runtime", "torch", "--int8")
    assert refused.exit_code == 2 and "--int8 runs on OpenVINO" in refused.output


def test_a_rerun_with_nothing_to_embed_never_imports_torch(sample_root, tmp_path, ingest_tiny):
    """A collection made from a timm name (no weights file): its record gives the model's
    spec, so the rerun plans, finds nothing to do and ends without torch or timm."""
    import subprocess
    import sys

    db = str(tmp_path / "db")
    assert ingest_tiny(sample_root, db).exit_code == 0
    args = ["run", "--root", str(sample_root), "--store", db, "--workers", "0",
            "--no-progress", "--backbone", "test_resnet", "--img-size", "64",
            "--pretrained", "none"]  # fmt: skip
    script = (
        "import sys; from ingest.cli import app\n"
        "try:\n"
        f"    app({args!r}, standalone_mode=False)\n"
        "finally:\n"
        "    print('TORCH', 'torch' in sys.modules, 'timm' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "embedded 0 (0 changed)" in run.stdout
    assert run.stdout.rsplit("TORCH", 1)[1].split() == ["False", "False"]
    other = ingest_tiny(sample_root, db, "--img-size", "96")  # another model: still refused
    assert other.exit_code == 2 and "another model" in other.output


def test_a_rerun_with_nothing_to_embed_never_loads_the_store_engine(
    sample_root, tmp_path, ingest_tiny, caplog, store_count
):
    """The plan's state and the point count come from what the last run left beside the
    store (its finish record, its files whole by name and size): at 226,980 points loading
    the engine's segments took 2 s of a 4 s rerun. Anything to write loads it."""
    db = tmp_path / "db"
    assert ingest_tiny(sample_root, str(db)).exit_code == 0
    points = store_count(db)
    with caplog.at_level("DEBUG", logger="search.store.edge"):
        again = ingest_tiny(sample_root, str(db))
    assert again.exit_code == 0, again.output
    assert "embedded 0 (0 changed)" in again.output
    assert f"collection now holds {points}" in again.output
    assert not [r for r in caplog.records if "loading the shard" in r.getMessage()]
    root = tmp_path / "more"
    shutil.copytree(sample_root, root)
    photo = next((root / "img").rglob("shop_01.jpg"))
    shutil.copy(photo, photo.with_name("shop_77.jpg"))
    caplog.clear()
    with caplog.at_level("DEBUG", logger="search.store.edge"):
        more = ingest_tiny(root, str(db))
    assert more.exit_code == 0 and "embedded 1 " in more.output, more.output
    assert [r for r in caplog.records if "loading the shard" in r.getMessage()]
    assert store_count(db) == points + 1
