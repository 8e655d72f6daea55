"""Query-side model: the traced fast-start copy (torch on a CPU) answers like the eager model,
without timm; the exported model (OpenVINO, a CPU's default) like torch, without torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from typer.testing import CliRunner

from ingest.cli import app as ingest_app
from search.cli import app as search_app
from search.store import open_store


def test_traced_copy_answers_like_the_eager_model(sample_root, tmp_path, ingest_tiny, monkeypatch):
    env_cache = tmp_path / "traced"
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", str(env_cache))
    db = str(tmp_path / "db")
    runner = CliRunner()
    assert ingest_tiny(sample_root, db).exit_code == 0
    query = str(next(sample_root.rglob("comsumer_01.jpg")))
    args = [query, "--top", "5", "--json", "--store", db, "--runtime", "torch"]
    eager = runner.invoke(search_app, args)  # builds the model with timm, then caches a trace
    assert eager.exit_code == 0, eager.output
    assert len(list(env_cache.glob("test_resnet-*.pt"))) == 1
    script = (
        "import sys; from search.cli import app; "
        f"app({args!r}, standalone_mode=False); "
        "print('TIMM', 'timm' in sys.modules, 'torchvision' in sys.modules)"
    )
    fast = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )
    assert fast.returncode == 0, fast.stderr
    body, marker = fast.stdout.rsplit("TIMM", 1)
    assert marker.split() == ["False", "False"]  # the fast path never imports timm/torchvision
    a, b = json.loads(eager.stdout)[0]["results"], json.loads(body)[0]["results"]
    assert [r["id"] for r in a[:3]] == [r["id"] for r in b[:3]]
    for x, y in zip(a, b, strict=True):
        assert abs(x["score"] - y["score"]) < 2e-2


runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


class _Broken(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 512), float("nan"))


def test_a_broken_traced_model_is_rebuilt(
    db, sample_root, tmp_path, monkeypatch, search_cli, query_photo
):
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    first = search_cli(db, query_photo, "--json", "--runtime", "torch")
    assert first.exit_code == 0, first.output
    (cached,) = (tmp_path / "cache").glob("*.pt")
    torch.jit.save(torch.jit.trace(_Broken(), torch.zeros(1, 3, 64, 64)), str(cached))
    again = search_cli(db, query_photo, "--json", "--runtime", "torch")
    assert again.exit_code == 0, again.output
    assert [r["id"] for r in json.loads(again.stdout)[0]["results"]] == [
        r["id"] for r in json.loads(first.stdout)[0]["results"]
    ]
    from embedder.compiled import load_traced
    from embedder.device import autocast_dtype
    from embedder.spec import ModelSpec

    with open_store(store_dir=str(db)) as store:
        spec = ModelSpec.from_json(store.metadata()["model_spec"])
    dtype = autocast_dtype(torch.device("cpu"), "auto")  # bf16 where the CPU has it, else fp32
    assert load_traced(spec, dtype) is not None  # the rebuilt copy is sound


def test_an_unwritable_model_cache_only_warns(
    db, sample_root, monkeypatch, search_cli, query_photo
):
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", "/dev/null/cache")
    result = search_cli(db, query_photo)
    assert result.exit_code == 0, result.output
    assert "rank" in result.output


def test_search_refuses_weights_other_than_the_collections(sample_root, tmp_path, tiny_model):
    from embedder import build_model, save_checkpoint
    from search.cli import app as search_app

    save_checkpoint(tiny_model, tmp_path / "a.safetensors")
    other = build_model("test_resnet", img_size=64, pretrained="none", dropout=0.0)
    with __import__("torch").no_grad():
        other.head.bias.add_(1.0)
    save_checkpoint(other, tmp_path / "b.safetensors")
    runner = CliRunner()
    db = str(tmp_path / "db")
    base = ["run", "--root", str(sample_root), "--store", db, "--workers", "0", "--no-progress"]
    assert (
        runner.invoke(ingest_app, [*base, "--weights", str(tmp_path / "a.safetensors")]).exit_code
        == 0
    )
    refused = runner.invoke(ingest_app, [*base, "--weights", str(tmp_path / "b.safetensors")])
    assert refused.exit_code == 2 and "embedded with another model" in refused.output
    assert "--recreate" in refused.output
    query = str(next(sample_root.rglob("shop_01.jpg")))
    assert runner.invoke(search_app, [query, "--store", db]).exit_code == 0  # caches a trace
    wrong = runner.invoke(
        search_app, [query, "--store", db, "--weights", str(tmp_path / "b.safetensors")]
    )
    assert wrong.exit_code == 2 and "do not match the collection" in wrong.output
    rebuilt = runner.invoke(
        ingest_app, [*base, "--weights", str(tmp_path / "b.safetensors"), "--recreate"]
    )
    assert rebuilt.exit_code == 0 and "already present 0" in rebuilt.output
