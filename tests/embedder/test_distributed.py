"""Training under torchrun: two CPU processes (gloo) take the step one process takes with the
whole batch, rank 0 alone writes, and --resume continues under torchrun."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
STEP = Path(__file__).with_name("ddp_step.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _run(command: list, **kw) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "PATH": str(BIN)}  # two processes share the two cores
    import os

    run = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **env}, timeout=600, **kw
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_two_processes_take_the_step_one_process_takes(tmp_path):
    _run([sys.executable, STEP, tmp_path / "one.safetensors"])
    _run([*TORCHRUN, "--nproc-per-node=2", STEP, tmp_path / "two.safetensors"])
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    start = {}
    for mode in ("reference", "batch-hard"):
        from embedder.model import build_model

        start = build_model("test_vit", img_size=32, pretrained="none", dropout=0.0).state_dict()
        moved = [k for k in start if not torch.equal(one[f"{mode}.{k}"], start[k])]
        assert len(moved) > len(start) // 2  # the step changed the weights ...
        for name in start:  # ... and both ways alike
            torch.testing.assert_close(
                two[f"{mode}.{name}"], one[f"{mode}.{name}"], atol=1e-5, rtol=0, msg=name
            )


@pytest.fixture(scope="module")
def train_sample(tmp_path_factory):
    from ingest.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("ddp") / "s", items=40, seed=5)


def test_torchrun_trains_and_resumes_with_rank_0_writing(train_sample, tmp_path):
    out = tmp_path / "run"
    args = [
        "train", "--root", str(train_sample), "--out", str(out), "--backbone", "test_resnet",
        "--img-size", "64", "--pretrained", "none", "--batch-size", "8", "--workers", "0",
        "--mode", "batch-hard", "--per-item", "2", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    first = _run([BIN / "embedder", *args, "--epochs", "1", "--nproc-per-node", "2"])
    assert sorted(p.name for p in out.glob("epoch_*")) == ["epoch_001.safetensors"]
    assert first.stdout.count("best: ") == 1  # one process reports
    with (out / "metrics.csv").open() as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1"]
    again = _run([*TORCHRUN, "--nproc-per-node=2", "-m", "embedder", *args, "--epochs", "2",
                  "--resume"])  # fmt: skip
    assert again.stdout.count("best: ") == 1
    state = json.loads((out / "train_state.json").read_text())
    assert state["epoch"] == 2 and [r["epoch"] for r in state["history"]] == [1, 2]
    assert sorted(p.name for p in out.glob("epoch_*")) == [
        "epoch_001.safetensors",
        "epoch_002.safetensors",
    ]


def test_the_batch_must_split_over_the_processes(train_sample, tmp_path):
    from embedder.train import TrainConfig

    cfg = TrainConfig(root=str(train_sample), out=str(tmp_path), batch_size=10, mode="batch-hard")
    with pytest.raises(ValueError, match="multiple of --per-item 2 × 4 process"):
        cfg.check(4)
    TrainConfig(root=str(train_sample), out=str(tmp_path), batch_size=16).check(4)


def test_a_batch_that_cannot_split_fails_once_before_torchrun_starts(train_sample, tmp_path):
    run = subprocess.run(
        [BIN / "embedder", "train", "--root", train_sample, "--out", tmp_path / "run",
         "--backbone", "test_resnet", "--pretrained", "none", "--batch-size", "9",
         "--nproc-per-node", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        "error: --batch-size 9 must be a multiple of 2 process(es)"
    ]
    assert not (tmp_path / "run").exists()


def test_the_detector_trains_under_torchrun_with_rank_0_writing(tmp_path):
    from ingest.sample import write_sample

    root = write_sample(tmp_path / "street", items=12, seed=2, style="street")
    out = tmp_path / "det"
    args = [
        "train-detector", "--root", str(root), "--out", str(out), "--backbone", "resnet18",
        "--img-size", "128", "--head", "light", "--pretrained", "none", "--batch-size", "4",
        "--workers", "0", "--no-progress", "--device", "cpu", "--epochs", "1",
    ]  # fmt: skip
    done = _run([BIN / "embedder", *args, "--nproc-per-node", "2"])
    assert done.stdout.count("best: ") == 1  # one process reports
    assert sorted(p.name for p in out.glob("epoch_*")) == ["epoch_001.safetensors"]
    with (out / "metrics.csv").open() as fh:
        (row,) = csv.DictReader(fh)
    assert float(row["loss"]) > 0 and 0 <= float(row["val_ap"]) <= float(row["val_ap50"]) <= 1
