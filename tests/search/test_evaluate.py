"""`search evaluate`: a trained model's collection scored through Qdrant, beside exact search."""

import json

from typer.testing import CliRunner

from embedder.cli import app as embedder_app
from ingest.cli import app as ingest_app
from search.cli import app as search_app
from search.cli import evaluate_app

runner = CliRunner()


def test_train_then_evaluate_exact_and_via_the_collection(sample_root, tmp_path):
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
    exact_json = tmp_path / "eval.json"
    exact = runner.invoke(
        embedder_app,
        [
            "evaluate",
            "--root",
            str(sample_root),
            "--weights",
            str(weights),
            "--k",
            "1,5",
            "--json",
            str(exact_json),
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
    assert exact.exit_code == 0, exact.output
    assert (tmp_path / "k.png").is_file() and (tmp_path / "map.png").is_file()
    out = tmp_path / "store.json"
    result = runner.invoke(
        evaluate_app,
        [
            "--root",
            str(sample_root),
            "--k",
            "1,5",
            "--store",
            str(db),
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "k2.png"),
            "--workers",
            "0",
            "--precision",
            "fp32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "agreement with exact search: overlap@5 1.000, same_top1 1.000" in result.output
    report = json.loads(out.read_text())
    embedder_report = json.loads(exact_json.read_text())[str(weights)]
    exact, store = report["exact"], report["store"]
    assert exact["overall"] == store["overall"] == embedder_report["overall"]
    assert exact["queries"] > 0
    assert set(exact["per_category"]) == {"DRESSES", "TOPS", "TROUSERS"}
    assert (tmp_path / "k2.png").is_file()
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


def test_evaluate_needs_the_split_in_the_collection(sample_root, tmp_path, ingest_tiny):
    db = tmp_path / "db"
    assert ingest_tiny(sample_root, str(db), "--limit", "5").exit_code == 0
    result = runner.invoke(evaluate_app, ["--root", str(sample_root), "--store", str(db)])
    assert result.exit_code == 2 and "lacks" in result.output and "ingest run" in result.output
