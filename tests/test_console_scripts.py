"""The console scripts are installed and explain themselves."""

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

runner = CliRunner()
BIN = Path(sys.executable).parent
ROOT = os.geteuid() == 0


def test_console_scripts_are_installed_and_explain_themselves():
    for name in ("ingest", "search", "embedder"):
        out = subprocess.run([BIN / name, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "Usage" in out.stdout, name
    out = subprocess.run([BIN / "ingest", "run", "--help"], capture_output=True, text=True)
    assert "--root" in out.stdout and "--qdrant-url" in out.stdout


def test_search_serve_explains_itself():
    out = subprocess.run([BIN / "search", "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--images" in out.stdout and "127.0.0.1" in out.stdout
    assert (
        "search serve --help"
        in subprocess.run([BIN / "search", "--help"], capture_output=True, text=True).stdout
    )
