"""Query-side model: the traced fast-start copy answers like the eager model, without timm."""

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from search.cli import app as search_app


def test_traced_copy_answers_like_the_eager_model(sample_root, tmp_path, ingest_tiny, monkeypatch):
    env_cache = tmp_path / "traced"
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", str(env_cache))
    db = str(tmp_path / "db")
    runner = CliRunner()
    assert ingest_tiny(sample_root, db).exit_code == 0
    query = str(next(sample_root.rglob("comsumer_01.jpg")))
    args = [query, "--top", "5", "--json", "--store", db]
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
