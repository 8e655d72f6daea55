"""`python -m embedder …` (the way torchrun starts `embedder train` in each process)."""

from embedder.cli import app

app(prog_name="embedder")
