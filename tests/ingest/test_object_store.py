"""Datasets in an object store: the sample in a real SeaweedFS bucket (S3 on loopback) ingests
as its local copy does, and every way a store can fail is one line or a retried read."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedder.storage import Storage, upload
from ingest.cli import app

pytestmark = pytest.mark.filterwarnings("ignore")
INGEST = str(Path(sys.executable).parent / "ingest")  # the console script, as a user runs it


def store_options(seaweed, endpoint: str | None = None, **extra) -> list[str]:
    options = {**seaweed.options, **extra}
    if endpoint:
        options["endpoint_url"] = endpoint
    return [
        arg
        for key, value in options.items()
        for arg in (
            "--storage-option",
            f"{key}={json.dumps(value) if not isinstance(value, str) else value}",
        )
    ]


def contents(db) -> dict:
    from search.store import open_store

    with open_store(store_dir=str(db)) as store:
        return {
            pid: (payload, vector)
            for points in store.scroll(64)
            for pid, payload, vector in zip(
                points.ids, points.payloads, points.vectors, strict=True
            )
        }


def test_the_sample_in_a_bucket_ingests_as_its_local_copy(
    seaweed, sample_bucket, sample_root, tmp_path, ingest_tiny
):
    """Same ids (uuid5 of the dataset-relative path), payloads and vectors from the bucket as
    from the local files; sizes from the listing, change stamps from the store; a second run
    embeds nothing."""
    from_bucket = ingest_tiny(sample_bucket, tmp_path / "bucket", *store_options(seaweed))
    assert from_bucket.exit_code == 0, from_bucket.output
    assert f"ingest {sample_bucket} →" in from_bucket.output
    local = ingest_tiny(sample_root, tmp_path / "local")
    assert local.exit_code == 0, local.output
    bucket_points, local_points = contents(tmp_path / "bucket"), contents(tmp_path / "local")
    assert len(bucket_points) == len(local_points) == len(list(sample_root.rglob("*.jpg")))
    assert bucket_points.keys() == local_points.keys()
    for pid, (payload, vector) in local_points.items():
        theirs, their_vector = bucket_points[pid]
        assert {k: v for k, v in theirs.items() if k != "mtime"} == {
            k: v for k, v in payload.items() if k != "mtime"
        }
        np.testing.assert_allclose(their_vector, vector, atol=1e-6)
    again = ingest_tiny(sample_bucket, tmp_path / "bucket", *store_options(seaweed))
    assert again.exit_code == 0 and "embedded 0 (0 changed)" in again.output, again.output


def test_a_sample_written_to_a_bucket_and_ingested_with_aws_variables(seaweed, tmp_path):
    """The command lines as a user runs them: `ingest sample --out s3://...` and `ingest run
    --root s3://...` in real processes, credentials and endpoint from AWS_* variables alone,
    reader processes reading the bucket themselves."""
    seaweed.fs().mkdir("made")
    made = subprocess.run(
        [INGEST, "sample", "--out", "s3://made/ds", "--items", "4"],
        capture_output=True,
        text=True,
        env=seaweed.env,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert "images to s3://made/ds" in made.stdout
    keys = seaweed.fs().find("made/ds")
    assert "made/ds/Eval/list_eval_partition.txt" in keys
    photos = [k for k in keys if k.endswith(".jpg")]
    args = ["--backbone", "test_resnet", "--img-size", "64", "--pretrained", "none"]
    run = subprocess.run(
        [
            INGEST,
            "run",
            "--root",
            "s3://made/ds",
            "--store",
            str(tmp_path / "db"),
            "--workers",
            "2",
            "--no-progress",
            *args,
        ],
        capture_output=True,
        text=True,
        env=seaweed.env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"seen {len(photos)}, embedded {len(photos)} (0 changed)" in run.stdout
    with_labels = contents(tmp_path / "db")
    assert {p["split"] for p, _ in with_labels.values()} >= {"train", "test"}  # Eval read
    assert all("bbox" in p for p, _ in with_labels.values())  # Anno read


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_missing_bucket_is_one_line(seaweed, tmp_path, ingest_tiny):
    result = ingest_tiny("s3://no-such-bucket/ds", tmp_path / "db", *store_options(seaweed))
    assert "s3://no-such-bucket/ds does not exist" in one_line_error(result)
    assert not (tmp_path / "db").exists()  # nothing made before the catalog


def test_a_missing_prefix_is_one_line(seaweed, sample_bucket, tmp_path, ingest_tiny):
    result = ingest_tiny("s3://samples/nothing-here", tmp_path / "db", *store_options(seaweed))
    assert "s3://samples/nothing-here does not exist" in one_line_error(result)


def test_wrong_credentials_are_one_line(seaweed, sample_bucket, tmp_path, ingest_tiny):
    result = ingest_tiny(sample_bucket, tmp_path / "db", *store_options(seaweed, secret="wrong"))
    line = one_line_error(result)
    assert "access to s3://samples/sample refused" in line and "credentials" in line


def test_an_unreachable_endpoint_is_one_line(seaweed, tmp_path, ingest_tiny):
    from tests.objectstore import free_ports

    (port,) = free_ports(1)
    nowhere = store_options(seaweed, endpoint=f"http://127.0.0.1:{port}")
    result = ingest_tiny("s3://samples/sample", tmp_path / "db", *nowhere)
    line = one_line_error(result)
    assert "cannot read s3://samples/sample" in line and "endpoint" in line


def test_an_unknown_protocol_and_a_bad_option_are_one_line(tmp_path, ingest_tiny):
    assert "no file system is known for nosuch://" in one_line_error(
        ingest_tiny("nosuch://bucket/ds", tmp_path / "db")
    )
    result = CliRunner().invoke(
        app, ["run", "--root", "s3://b/ds", "--storage-option", "no-equals-sign"]
    )
    assert "is not KEY=VALUE" in one_line_error(result)


@pytest.fixture()
def private_bucket(seaweed, sample_root, request):
    """A copy of the sample under its own prefix, which the test may change."""
    prefix = f"samples/{request.node.name[:40]}"
    storage = Storage("s3", json.dumps(seaweed.options))
    upload(str(sample_root), storage, prefix)
    yield prefix, storage
    seaweed.fs().rm(prefix, recursive=True)


def test_a_key_that_vanishes_mid_run_is_a_failure_the_rest_ingested(
    seaweed, private_bucket, encoder, tmp_path
):
    """Listed, then deleted before it was read: that photo is in the failure report, every
    other photo is stored; the next run (the key still gone) lists it no more."""
    from embedder.recipe import Built
    from ingest.control import IngestSettings
    from ingest.plan import read_work
    from ingest.runner import run_ingest
    from search.store import open_store

    prefix, storage = private_bucket
    work = read_work(f"s3://{prefix}", storage_options=seaweed.options)
    gone = work.catalog["path"].iloc[7]
    seaweed.fs().rm(f"{prefix}/{gone}")
    report = tmp_path / "failures.csv"
    with open_store(store_dir=str(tmp_path / "db")) as store:
        from ingest.runner import ensure_collection

        ensure_collection(store, encoder.spec)
        settings = IngestSettings(progress=False, workers=1, report=str(report))
        summary = run_ingest(store, Built(encoder), work, settings)
        assert summary.failed == 1 and summary.embedded == len(work.catalog) - 1
        assert store.count() == len(work.catalog) - 1
    text = report.read_text()
    assert gone in text and "ObjectMissing: not in the store: NoSuchKey" in text


def test_throttled_reads_are_retried_and_every_photo_ingested(
    seaweed, sample_bucket, tmp_path, ingest_tiny
):
    """A store that answers every other object read with 503 SlowDown: the reads are retried
    (botocore's standard retries), the whole sample is ingested, nothing failed."""
    from tests.objectstore import Throttle

    proxy = Throttle(seaweed.endpoint, every=2)
    try:
        result = ingest_tiny(
            sample_bucket, tmp_path / "db", *store_options(seaweed, proxy.endpoint)
        )
    finally:
        proxy.close()
    assert result.exit_code == 0, result.output
    assert proxy.refused > 50  # the store did throttle
    assert "failed 0" in result.output
    assert len(contents(tmp_path / "db")) == len(
        [k for k in seaweed.fs().find("samples/sample/img") if k.endswith(".jpg")]
    )


def test_a_photo_the_store_keeps_refusing_is_reported_the_rest_ingested(
    seaweed, sample_bucket, sample_root, tmp_path, ingest_tiny
):
    """One key throttled on every try: after the retries it is a failure with the store's
    reason, the run goes on and stores every other photo."""
    from tests.objectstore import Throttle

    victim = sorted((sample_root / "img").rglob("shop_01.jpg"))[3].relative_to(sample_root)
    proxy = Throttle(seaweed.endpoint, every=10**9, always=str(victim))
    few_retries = {"max_retries": 1}
    try:
        result = ingest_tiny(
            sample_bucket,
            tmp_path / "db",
            "--report",
            str(tmp_path / "failures.csv"),
            *store_options(seaweed, proxy.endpoint, **few_retries),
        )
    finally:
        proxy.close()
    assert result.exit_code == 0, result.output
    assert "failed 1" in result.output
    report = (tmp_path / "failures.csv").read_text()
    assert str(victim) in report and "reduce your request rate" in report.lower()


def test_training_and_evaluation_read_the_bucket_as_the_local_copy(
    seaweed, sample_bucket, sample_root, tmp_path
):
    """`embedder train` (its loader workers reading the bucket themselves) and `embedder
    evaluate` on the bucket give what they give on the local copy: the same losses, the same
    top-k; `search evaluate` too."""
    from embedder.cli import app as embedder_app
    from search.cli import evaluate_app

    runner = CliRunner()
    options = store_options(seaweed)
    tiny = ["--backbone", "test_resnet", "--img-size", "64", "--pretrained", "none"]
    losses, reports = {}, {}
    for name, root, extra in (("bucket", sample_bucket, options), ("local", str(sample_root), [])):
        run = tmp_path / f"run-{name}"
        train = runner.invoke(
            embedder_app,
            ["train", "--root", root, "--out", str(run), *tiny, "--epochs", "1",
             "--batch-size", "8", "--workers", "1", "--no-progress", "--k", "1,5",
             "--precision", "fp32", *extra],
        )  # fmt: skip
        assert train.exit_code == 0, train.output
        rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
        losses[name] = [{k: v for k, v in r.items() if "loss" in k or "val_" in k} for r in rows]
        report = tmp_path / f"eval-{name}.json"
        evaluated = runner.invoke(
            embedder_app,
            ["evaluate", "--root", root, "--weights", str(run / "best.safetensors"), "--k",
             "1,5", "--json", str(report), "--workers", "0", "--precision", "fp32", *extra],
        )  # fmt: skip
        assert evaluated.exit_code == 0, evaluated.output
        reports[name] = json.loads(report.read_text())
        db = tmp_path / f"db-{name}"
        ingested = CliRunner().invoke(
            app,
            ["run", "--root", root, "--store", str(db), "--weights",
             str(run / "best.safetensors"), "--workers", "0", "--no-progress",
             "--precision", "fp32", *extra],
        )  # fmt: skip
        assert ingested.exit_code == 0, ingested.output
        scored = runner.invoke(
            evaluate_app,
            ["--root", root, "--store", str(db), "--k", "1,5", "--json",
             str(tmp_path / f"store-{name}.json"), "--workers", "0", "--precision", "fp32",
             *extra],
        )  # fmt: skip
        assert scored.exit_code == 0, scored.output
        reports[name + " store"] = json.loads((tmp_path / f"store-{name}.json").read_text())
    assert losses["bucket"] == losses["local"]
    assert list(reports["bucket"].values()) == list(reports["local"].values())
    assert reports["bucket store"] == reports["local store"]


def test_any_fsspec_file_system_is_a_root(sample_root, tmp_path, ingest_tiny):
    """A protocol other than S3 goes through fsspec (here its in-memory file system): the
    sample ingests as from the disk."""
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.put(str(sample_root), "/ds", recursive=True)
    result = ingest_tiny("memory://ds", tmp_path / "db", "--report", str(tmp_path / "f.csv"))
    assert result.exit_code == 0, result.output
    photos = len(list(sample_root.rglob("*.jpg")))
    assert f"seen {photos}, embedded {photos} (0 changed)" in result.output
    assert contents(tmp_path / "db").keys() == contents_of_local(sample_root, tmp_path, ingest_tiny)


def contents_of_local(root, tmp_path, ingest_tiny) -> set:
    assert ingest_tiny(root, tmp_path / "local").exit_code == 0
    return contents(tmp_path / "local").keys()


def test_a_file_url_is_the_local_folder(sample_root, tmp_path, ingest_tiny):
    """file:///path is the folder itself: the same points, read from the disk."""
    result = ingest_tiny(f"file://{sample_root}", tmp_path / "db")
    assert result.exit_code == 0, result.output
    assert f"ingest {sample_root} →" in result.output
    assert contents(tmp_path / "db").keys() == contents_of_local(sample_root, tmp_path, ingest_tiny)
