"""The exported model (OpenVINO) answers as torch does, loads without torch, is rebuilt when
damaged, and its int8 model is refused when it does not find what fp32 finds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedder import Encoder, embed_files, read_catalog
from embedder.runtime import ExportError, exported_encoder, exported_path, load, quantize
from ingest.cli import app as ingest_app
from search.cli import app as search_app

BIN = Path(sys.executable).parent


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_RETRIEVAL_CACHE", str(tmp_path / "models"))
    return tmp_path / "models"


def _photos(sample_root, n=12):
    table = read_catalog(sample_root).head(n)
    paths = [str(sample_root / p) for p in table["path"]]
    boxes = [(int(r.x1), int(r.y1), int(r.x2), int(r.y2)) for r in table.itertuples()]
    return paths, boxes


def test_the_exported_model_gives_torchs_vectors(tiny_model, sample_root, cache):
    exported = exported_encoder(tiny_model.spec, lambda: tiny_model, precision="fp32")
    paths, boxes = _photos(sample_root)
    ours = embed_files(exported, paths, boxes)
    theirs = embed_files(Encoder(tiny_model, "cpu", "fp32"), paths, boxes)
    assert (np.sum(ours * theirs, axis=1) >= 0.9999).all()  # cosine, photos with their boxes
    batch = np.stack([np.zeros((3, 64, 64), np.uint8)] * 5)  # a batch over several requests
    np.testing.assert_allclose(exported(batch), exported(batch[:1]).repeat(5, 0), atol=1e-5)
    assert exported.path.parent == cache


def test_a_damaged_exported_model_is_rebuilt(tiny_model, cache):
    first = exported_encoder(tiny_model.spec, lambda: tiny_model, precision="fp32")
    probe = np.full((1, 3, 64, 64), 90, np.uint8)
    expected = first(probe)
    path = exported_path(tiny_model.spec, int8=False)
    path.with_suffix(".bin").write_bytes(b"\x00" * 64)  # truncated weights
    assert load(tiny_model.spec) is None and not path.exists()  # discarded
    again = exported_encoder(tiny_model.spec, lambda: tiny_model, precision="fp32")
    np.testing.assert_allclose(again(probe), expected, atol=1e-6)
    path.write_text("<not a model")
    assert load(tiny_model.spec) is None


def test_an_export_read_once_is_still_checked_after_any_write(tiny_model, cache):
    """A start reads the export's files once per version of them (their digests remembered),
    yet a write that keeps the size and puts the mtime back is still caught."""
    exported_encoder(tiny_model.spec, lambda: tiny_model, precision="fp32")
    assert load(tiny_model.spec) is not None and load(tiny_model.spec) is not None
    remembered = sorted(p.name for p in (cache / "digests").iterdir())
    assert len(remembered) == 2  # the .xml's and the .bin's, for this version of each
    assert load(tiny_model.spec) is not None
    assert sorted(p.name for p in (cache / "digests").iterdir()) == remembered  # read again: no
    weights = exported_path(tiny_model.spec, int8=False).with_suffix(".bin")
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # the same size, other weights
    weights.write_bytes(data)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_mtime_ns == before.st_mtime_ns
    assert load(tiny_model.spec) is None and not weights.exists()  # discarded, to be rebuilt


def _refused_overlap(spec, photos) -> float:
    """The overlap figure of an int8 model that is refused (it must be, here)."""
    import re

    with pytest.raises(ExportError, match=r"refused: its top-20 neighbours overlap fp32's") as e:
        quantize(spec, photos, held_out=0.4)
    return float(re.search(r"by ([\d.]+)", str(e.value)).group(1))


def test_int8_is_refused_when_it_does_not_find_what_fp32_finds(tiny_model, sample_root, cache):
    """A calibration set that is no photo at all gives an int8 model whose neighbours are not
    fp32's: refused with its figure, nothing kept. The sample's own photos give one that is
    kept, with its figures recorded."""
    from embedder.runtime import calibration_photos

    exported_encoder(tiny_model.spec, lambda: tiny_model)
    paths, boxes = _photos(sample_root, 80)
    photos = calibration_photos(paths, boxes, tiny_model.spec)
    held = photos[-32:]
    grey = [np.full((3, 64, 64), 128, np.uint8)] * (len(photos) - 32)
    bad = _refused_overlap(tiny_model.spec, grey + held)
    assert bad < 0.9
    assert not exported_path(tiny_model.spec, int8=True).exists()  # nothing kept
    good = quantize(tiny_model.spec, photos, held_out=0.4)
    assert good["overlap@20"] >= 0.9 > bad and good["held_out"] == len(held)
    kept = exported_path(tiny_model.spec, int8=True)
    assert json.loads(kept.with_suffix(".json").read_text())["overlap@20"] == good["overlap@20"]
    assert load(tiny_model.spec, int8=True) is not None


def test_a_search_never_imports_torch_once_the_model_is_exported(
    sample_root, tmp_path, ingest_tiny, cache
):
    db = str(tmp_path / "db")
    assert ingest_tiny(sample_root, db).exit_code == 0  # OpenVINO by default on a CPU
    query = str(next(sample_root.rglob("comsumer_01.jpg")))
    args = [query, "--top", "5", "--json", "--store", db, "--category", "TOPS"]
    script = (
        "import sys; from search.cli import app\n"
        "try:\n"
        f"    app({args!r}, standalone_mode=False)\n"
        "finally:\n"
        "    print('TORCH', 'torch' in sys.modules, 'timm' in sys.modules)"
    )
    env = {**os.environ, "FASHION_RETRIEVAL_CACHE": str(cache)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    body, marker = run.stdout.rsplit("TORCH", 1)
    assert marker.split() == ["False", "False"]  # neither torch nor timm in the process
    found = json.loads(body)[0]["results"]
    torch_run = CliRunner().invoke(search_app, [*args, "--runtime", "torch", "--precision", "fp32"])
    assert torch_run.exit_code == 0, torch_run.output
    assert [r["id"] for r in found][:3] == [
        r["id"] for r in json.loads(torch_run.stdout)[0]["results"]
    ][:3]


NETWORK_AUDIT = r"""
import json, socket, sys

reached = []


def audit(event, args):  # every name looked up and every internet address connected to
    if event == "socket.getaddrinfo":
        reached.append(f"lookup {args[0]}")
    elif event == "socket.connect" and isinstance(args[1], tuple):
        reached.append(f"connect {args[1][0]}")


sys.addaudithook(audit)
command, argv = sys.argv[1], sys.argv[2:]
try:
    if command == "ingest":
        from ingest.cli import app

        app(argv, standalone_mode=False)
    else:
        from search.cli import app

        app(argv, standalone_mode=False)
finally:
    print("REACHED " + json.dumps(reached))
"""


def test_no_default_command_phones_home(sample_root, tmp_path, tiny_args):
    """OpenVINO's telemetry is kept out: a first `ingest run` (which exports the model) and a
    `search` on the default runtime look up no name and connect to no address, and write
    nothing under $HOME (the embedded store; no Qdrant server to reach)."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "FASHION_RETRIEVAL_CACHE": str(cache)}
    db = str(tmp_path / "db")
    query = str(next(sample_root.rglob("comsumer_01.jpg")))
    for command, args in (
        ("ingest", ["run", "--root", str(sample_root), "--store", db, "--workers", "0",
                    "--no-progress", *tiny_args]),
        ("search", [query, "--top", "3", "--store", db]),
    ):  # fmt: skip
        run = subprocess.run(
            [sys.executable, "-c", NETWORK_AUDIT, command, *args],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        reached = json.loads(run.stdout.rsplit("REACHED ", 1)[1])
        assert reached == [], (command, reached)
    assert list(home.iterdir()) == []  # no $HOME/intel/openvino_ga_cid


def test_the_audit_sees_a_connection(tmp_path):
    """The check above can fail: a lookup made by the command is seen."""
    script = NETWORK_AUDIT.replace(
        "command, argv = sys.argv[1], sys.argv[2:]",
        "socket.getaddrinfo('localhost', 80)\ncommand, argv = sys.argv[1], sys.argv[2:]",
    )
    run = subprocess.run(
        [sys.executable, "-c", script, "search", "--help"], capture_output=True, text=True
    )
    assert "lookup localhost" in run.stdout.rsplit("REACHED ", 1)[1]


def test_a_read_only_model_cache_costs_time_never_the_answer(
    sample_root, tmp_path, tmpfs, tiny_model, one_line_error
):
    """Searching works with either runtime when the cache cannot be written (the model is
    exported or traced for the run); `embedder export`, whose whole job is the cache, says
    it cannot instead of printing a path that is gone when it exits."""
    from embedder.checkpoint import save_checkpoint
    from embedder.cli import app as embedder_app

    weights = tmp_path / "w.safetensors"
    save_checkpoint(tiny_model, weights)
    db = str(tmp_path / "db")
    ingest = CliRunner().invoke(
        ingest_app,
        ["run", "--root", str(sample_root), "--store", db, "--weights", str(weights),
         "--workers", "0", "--no-progress"],
    )  # fmt: skip
    assert ingest.exit_code == 0, ingest.output
    query = str(next(sample_root.rglob("comsumer_01.jpg")))
    with tmpfs(tmp_path / "ro", "8m") as where:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        env = {**os.environ, "FASHION_RETRIEVAL_CACHE": str(where / "cache")}
        for runtime in ("torch", "openvino"):
            run = subprocess.run(
                [BIN / "search", query, "--store", db, "--top", "3", "--json", "--runtime",
                 runtime], capture_output=True, text=True, env=env, timeout=300,
            )  # fmt: skip
            assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
            assert len(json.loads(run.stdout)[0]["results"]) == 3
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FASHION_RETRIEVAL_CACHE", str(where / "cache"))
            export = CliRunner().invoke(embedder_app, ["export", "--weights", str(weights)])
        one_line_error(export, "cannot write the model cache", "FASHION_RETRIEVAL_CACHE")
