"""Commands stay thin (typer's shape: parse → one library call → render): no command body over
40 lines, counted from its first statement after the docstring to its end."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIS = ("embedder/cli.py", "ingest/cli.py", "search/cli.py")
MOST = 40


def command_bodies(path: Path) -> dict[str, int]:
    """Each function decorated with `<app>.command(...)` → its body's length in lines."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        decorated = any(
            isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command"
            for d in node.decorator_list
        )
        if decorated:
            body = node.body[1:] if ast.get_docstring(node) else node.body
            found[node.name] = body[-1].end_lineno - body[0].lineno + 1
    return found


@pytest.mark.parametrize("cli", CLIS)
def test_no_command_body_is_long(cli):
    bodies = command_bodies(ROOT / cli)
    assert bodies, f"no commands found in {cli}"
    assert {name: n for name, n in bodies.items() if n > MOST} == {}


def test_the_count_sees_a_long_command(tmp_path):
    source = tmp_path / "cli.py"
    lines = "\n".join(f"    x{i} = {i}" for i in range(MOST + 1))
    source.write_text(f'@app.command()\ndef long():\n    """Doc."""\n{lines}\n')
    assert command_bodies(source) == {"long": MOST + 1}
