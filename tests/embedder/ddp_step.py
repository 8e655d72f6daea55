"""One optimiser step of embedder.train.train_step on fixed images, for test_distributed.py:
`python ddp_step.py OUT` (one process, the whole batch) or under `torchrun --nproc-per-node 2`
(each process its share). Rank 0 writes the weights after the step, per mode, to OUT."""

from __future__ import annotations

import sys

import torch
from pytorch_metric_learning import losses, miners
from safetensors.torch import save_file

from embedder.distributed import Ranks, start, stop, wrap
from embedder.model import build_model
from embedder.train import freeze, train_mode, train_step

TRIPLETS = 8  # the global batch: 8 triplets (reference) or 24 images of 12 items (mined)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))


def stepped(mode: str, ranks: Ranks, device) -> dict:
    # no BatchNorm (whose statistics are per process on CPU) and no dropout (whose draws are):
    # what is left must be the same arithmetic whichever way the batch is split
    net = build_model("test_vit", img_size=32, pretrained="none", dropout=0.0)
    net.to(device, memory_format=torch.channels_last)
    # plain SGD: the new weights are the gradient, scaled (Adam's first step is about the
    # gradient's sign, which rounding flips for gradients near zero)
    optimizer = torch.optim.SGD(freeze(net, "all"), lr=0.1)
    model = wrap(net, ranks, device)
    model.train()
    train_mode(net)
    loss_fn = losses.TripletMarginLoss(margin=0.5)
    if mode == "reference":
        n = TRIPLETS // ranks.world
        mine = slice(ranks.rank * n, (ranks.rank + 1) * n)
        anchors, positives, negatives = (images(TRIPLETS, s)[mine] for s in (1, 2, 3))
        x = torch.cat([anchors, positives, negatives])
        idx = torch.arange(n)
        tuples, labels, miner = (idx, idx + n, idx + 2 * n), torch.arange(3 * n), None
    else:
        everything, items = images(3 * TRIPLETS, 4), torch.arange(3 * TRIPLETS) // 2
        n = 3 * TRIPLETS // ranks.world
        mine = slice(ranks.rank * n, (ranks.rank + 1) * n)
        x, labels, tuples, miner = everything[mine], items[mine], None, miners.BatchHardMiner()
    train_step(model, x, labels, tuples, loss_fn, miner, optimizer, device, None, ranks)
    return {f"{mode}.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def main() -> None:
    ranks, device = start(torch.device("cpu"))
    try:
        weights = {**stepped("reference", ranks, device), **stepped("batch-hard", ranks, device)}
        if ranks.main:
            save_file(weights, sys.argv[1])
    finally:
        stop(ranks)


if __name__ == "__main__":
    main()
