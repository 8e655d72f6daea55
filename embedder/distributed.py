"""Training on several processes: torch.distributed under torchrun, DDP with nccl on GPUs and
gloo on CPUs.

    torchrun --standalone --nproc-per-node 4 -m embedder train --root DATA --out RUN
    embedder train --nproc-per-node 4 ...              # the same, torchrun started for you
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint HOST:29400 --nproc-per-node 8 \\
        -m embedder train ...                          # several machines: torchrun's own flags

`--batch-size` stays the global batch: each process embeds its share, the embeddings are
gathered (with their gradients) so that the loss and the miners see the whole batch, and DDP
averages the gradients, so one step is the step one process would take with the whole batch.
Without torchrun there is one process and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(hours=1)  # ranks wait at most this long for each other (validation on rank 0)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local: int = 0  # rank on this machine: the GPU it uses

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics and the log."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def main_process() -> bool:
    """Whether this process reports (rank 0, or the only process)."""
    return os.environ.get("RANK", "0") == "0"


def launch(processes: int, option: str) -> int:
    """Run this command again under torchrun in `processes` processes on this machine, without
    `--OPTION N`; its exit status."""
    import subprocess
    import sys

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == f"--{option}":
            skip = True
        elif not arg.startswith(f"--{option}="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", "-m", "embedder", *args]
    return subprocess.run(command).returncode


def start(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group when torchrun started several processes (nccl on CUDA, each
    process on its own GPU; gloo on CPU); this process's ranks and device."""
    if not under_torchrun():
        return Ranks(), device
    ranks = Ranks(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    )
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return ranks, device


def stop(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The model as each process trains it: DDP, with BatchNorm statistics over the global
    batch on GPUs (SyncBatchNorm; on CPUs each process keeps its own, as torch allows)."""
    if not ranks.distributed:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def gather(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Every process's `tensor`, concatenated in rank order; gradients flow back to each
    process's own part."""
    if not ranks.distributed:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor))


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()
