"""`python -m embedder …` (the way torchrun starts `embedder train` in each process)."""

from embedder.cli import app
from embedder.commands import run_app

run_app(app, prog_name="embedder")
