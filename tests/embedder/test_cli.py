"""`embedder` through its commands."""

import os
import sys
from pathlib import Path

from typer.testing import CliRunner

from embedder.cli import app as embedder_app

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


def test_embedder_info_reads_a_checkpoint(tmp_path, tiny_model):
    from embedder import save_checkpoint

    save_checkpoint(tiny_model, tmp_path / "w.safetensors", epoch=1)
    result = runner.invoke(embedder_app, ["info", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0 and "backbone: test_resnet" in result.output
    bad = runner.invoke(embedder_app, ["info", str(tmp_path / "none.safetensors")])
    assert bad.exit_code == 2 and "not found" in bad.output
