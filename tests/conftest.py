"""Shared fixtures: a generated DeepFashion-layout tree and a tiny untrained timm model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY = {"backbone": "test_resnet", "img_size": 64, "pretrained": "none"}
TINY_ARGS = ["--backbone", "test_resnet", "--img-size", "64", "--pretrained", "none"]


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory):
    """Traced-model copies go to a temporary folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASHION_RETRIEVAL_CACHE", str(tmp_path_factory.mktemp("traced")))
        yield


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """CLI flags for the tiny untrained model."""
    return list(TINY_ARGS)


@pytest.fixture(scope="session")
def ingest_tiny(tiny_args):
    """`ingest run ROOT --store DB` with the tiny model through the CLI; returns the result."""
    from typer.testing import CliRunner

    from ingest.cli import app

    def run(root, db, *extra: str):
        args = [
            "run",
            "--root",
            str(root),
            "--store",
            str(db),
            "--workers",
            "0",
            "--no-progress",
            *tiny_args,
            *extra,
        ]
        return CliRunner().invoke(app, args)

    return run


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    from ingest.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("data") / "sample", items=24, seed=3)


@pytest.fixture()
def dataset(sample_root, tmp_path) -> Path:
    """A private copy of the sample that a test may change."""
    return Path(shutil.copytree(sample_root, tmp_path / "sample"))


@pytest.fixture(scope="session")
def tiny_model():
    from embedder import build_model

    return build_model(TINY["backbone"], img_size=TINY["img_size"], pretrained="none")


@pytest.fixture(scope="session")
def encoder(tiny_model):
    from embedder import Encoder

    return Encoder(tiny_model, "cpu", "auto")


@pytest.fixture(scope="session")
def store_contents():
    """A function: store → {point id: (payload, vector)} of every point it holds."""

    def read(store) -> dict:
        return {
            pid: (payload, vec)
            for points in store.scroll(64)
            for pid, payload, vec in zip(points.ids, points.payloads, points.vectors, strict=True)
        }

    return read
