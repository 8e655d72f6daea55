"""Triplet training: consumer anchor, shop positive, same-subcategory negative, or online mining."""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_metric_learning import losses, miners, samplers
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from embedder.catalog import bbox_of, locate, read_catalog, read_pairs
from embedder.checkpoint import save_checkpoint
from embedder.choices import Mode, Precision
from embedder.device import autocast, autocast_dtype, resolve_device
from embedder.distributed import Ranks, barrier, gather, start, stop, wrap
from embedder.evaluate import DEFAULT_KS, evaluate, split_sets
from embedder.inference import Encoder
from embedder.model import EmbeddingNet, build_model, load_checkpoint
from embedder.plots import training_curves
from embedder.storage import reader_context
from embedder.transforms import load_image, normalize, train_transform

log = logging.getLogger(__name__)
STATE_FILE = "train_state.json"
LOSS_NAMES = {"TrainConfig": "triplet loss", "DetectorConfig": "FCOS loss"}


@dataclass
class TrainConfig:
    root: str
    out: str
    backbone: str = "resnet50"
    img_size: int | None = None
    dim: int = 512
    pretrained: str = "default"
    weights: str | None = None  # start from a checkpoint instead
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    margin: float = 0.5
    mode: Mode = Mode.reference
    train_stages: str = "layer4"  # backbone children to train, comma-separated, or "all"
    per_item: int = 2  # images per item in a batch (online mining)
    device: str = "auto"
    precision: Precision = Precision.auto
    workers: int = 2
    seed: int = 0
    ks: tuple[int, ...] = DEFAULT_KS
    select_k: int = 20  # best checkpoint by validation top-k
    resume: bool = False  # continue the run in `out` after its last finished epoch
    # fsspec keywords of an object-store root (--storage-option): never written to the run
    storage_options: dict = field(default_factory=dict, repr=False)

    @staticmethod
    def default_stages(pretrained: str, weights: str | None) -> tuple[str, str]:
        """The stages to train when none are named, and why: all from random weights (frozen
        random layers would never learn anything), else layer4 (the reference recipe)."""
        if pretrained == "none" and weights is None:
            return "all", "random weights: every stage learns"
        return "layer4", "the reference recipe"

    def check(self, processes: int = 1) -> None:
        """Settings that cannot work fail here, before any training; `processes`: how many
        share each (global) batch under torchrun."""
        self.mode, self.precision = Mode(self.mode), Precision(self.precision)
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.margin < 0:
            raise ValueError("epochs ≥ 1, batch size ≥ 2, lr > 0 and margin ≥ 0 are required")
        share = self.per_item * processes if self.mode is not Mode.reference else processes
        if self.batch_size % share:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a multiple of "
                + (f"--per-item {self.per_item} × " if self.mode is not Mode.reference else "")
                + f"{processes} process(es)"
                + (" for online mining" if self.mode is not Mode.reference else "")
            )


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)
    best: float = -1.0

    def lines(self, out: str | Path) -> list[str]:
        """What `embedder train` prints at the end: a line per epoch, then where things are."""
        out = Path(out)
        epochs = ["  ".join(f"{key} {value}" for key, value in row.items()) for row in self.rows]
        files = f"{out / 'best.safetensors'}; metrics: {out / 'metrics.csv'}, {out / 'metrics.png'}"
        return [*epochs, f"best: {files}"]


UNCROPPED = 0.5  # share of consumer photos shown whole: user queries come without a box


def box_for_training(row, consumer: bool):
    """The annotated box, except that consumer photos are sometimes shown whole, so that the
    model also finds the garment in an uncropped phone photo."""
    if consumer and random.random() < UNCROPPED:
        return None
    return bbox_of(row)


class TripletSet(Dataset):
    """Reference triplets: each train pair (consumer, shop) plus a negative of the same
    subcategory with another item, drawn afresh each epoch from a seeded stream."""

    def __init__(self, root, pairs: pd.DataFrame, catalog: pd.DataFrame, spec, seed: int):
        self.where = locate(root)
        self.pairs = pairs.reset_index(drop=True)
        self.rows = catalog.set_index("path")
        self.by_sub = {s: g["path"].tolist() for s, g in catalog.groupby("subcategory")}
        self.strong, self.mild = train_transform(spec, True), train_transform(spec, False)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, path: str, strong: bool) -> torch.Tensor:
        row = self.rows.loc[path]
        img = load_image(self.where.source(path), box_for_training(row, strong))
        return (self.strong if strong else self.mild)(img)

    def negative(self, i: int) -> str:
        """Pair i's negative this epoch: another garment (by item id, whatever its folders)
        from the subcategory of the anchor's (consumer photo's) folder."""
        consumer, item = self.pairs.loc[i, ["consumer", "item_id"]]
        pool = self.by_sub[self.rows.loc[consumer, "subcategory"]]
        rng = random.Random(hash((self.seed, self.epoch, i)))
        negative = pool[rng.randrange(len(pool))]
        for _ in range(20):  # a different item of the same subcategory
            if self.rows.loc[negative, "item_id"] != item:
                break
            negative = pool[rng.randrange(len(pool))]
        return negative

    def __getitem__(self, i: int):
        consumer, shop = self.pairs.loc[i, ["consumer", "shop"]]
        negative = self.negative(i)
        return (
            self._image(consumer, True),
            self._image(shop, False),
            self._image(negative, self.rows.loc[negative, "source"] == "consumer"),
        )


class ItemImages(Dataset):
    """Every train image with its item label, for item-balanced batches and online mining."""

    def __init__(self, root, table: pd.DataFrame, spec):
        self.where = locate(root)
        self.table = table.reset_index(drop=True)
        self.labels = pd.factorize(self.table["item_id"])[0]
        self.strong, self.mild = train_transform(spec, True), train_transform(spec, False)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        row = self.table.iloc[i]
        consumer = row["source"] == "consumer"
        tf = self.strong if consumer else self.mild
        image = load_image(self.where.source(row["path"]), box_for_training(row, consumer))
        return tf(image), int(self.labels[i])


def freeze(model: EmbeddingNet, stages: str) -> list[torch.nn.Parameter]:
    """Train only the named backbone children (and the head); returns the trainable params."""
    children = dict(model.backbone.named_children())
    names = list(children) if stages == "all" else [s for s in stages.split(",") if s]
    unknown = [n for n in names if n not in children]
    if unknown:
        raise ValueError(
            f"--train-stages {','.join(unknown)} not in {model.spec.backbone}: "
            f"choose from {', '.join(children)} or 'all'"
        )
    for name, child in children.items():
        child.requires_grad_(name in names)
    model.head.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: EmbeddingNet) -> None:
    """model.train(), except that frozen backbone stages stay in eval mode: their BatchNorm
    layers use and keep their running statistics, as Keras' `trainable=False` in the
    reference recipe (requires_grad alone would let every forward move them)."""
    model.train()
    for child in model.backbone.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _train_pairs(root, catalog: pd.DataFrame) -> pd.DataFrame:
    """The train split's consumer/shop pairs whose two images are both in the catalog."""
    pairs = read_pairs(root)
    pairs = pairs[pairs["split"] == "train"]
    pairs = pairs[pairs["consumer"].isin(catalog["path"]) & pairs["shop"].isin(catalog["path"])]
    if pairs.empty:
        raise ValueError("no train pairs: training needs Eval/list_eval_partition.txt")
    return pairs


class RankShare(Sampler):
    """This process's share of each global batch of `batch` indices drawn anew by `make()`
    for every pass (MPerClassSampler shuffles its own label list in place, which would carry
    one epoch's draws into the next and break resuming): the batches the processes gather
    are the ones a single process would see."""

    def __init__(self, make, batch: int, ranks: Ranks):
        self.make, self.batch, self.ranks = make, batch, ranks
        self.length = len(make())

    def __iter__(self):
        order = list(self.make())
        part = self.batch // self.ranks.world
        for first in range(0, len(order) - self.batch + 1, self.batch):
            mine = first + self.ranks.rank * part
            yield from order[mine : mine + part]

    def __len__(self) -> int:
        return self.length // self.batch * (self.batch // self.ranks.world)


@dataclass
class EpochLoader:
    """The training batches, built once; start(epoch) makes the epoch's order and draws
    depend on (seed, epoch) only, so a resumed run sees what an uninterrupted one would."""

    loader: DataLoader
    per_step: int  # images per training example: 3 (triplets) or 1 (mined batches)
    data: Dataset
    seed: int = 0

    def start(self, epoch: int) -> DataLoader:
        _seed_all(self.seed * 1000 + epoch)  # draws, augmentation and dropout
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)  # the order: (seed, epoch), every process
        if hasattr(self.data, "epoch"):
            self.data.epoch = epoch  # the reference triplets' negatives
        return self.loader


def build_loader(
    cfg: TrainConfig,
    root,
    catalog: pd.DataFrame,
    pairs: pd.DataFrame | None,
    spec,
    ranks: Ranks = Ranks(),
) -> EpochLoader:
    """Reference triplets (shuffled) or item-balanced batches for online mining; each process
    loads its share (cfg.batch_size / processes) of every global batch."""
    part = cfg.batch_size // ranks.world
    if cfg.mode is Mode.reference:
        data = TripletSet(root, pairs, catalog, spec, cfg.seed)
        order = DistributedSampler(
            data, num_replicas=ranks.world, rank=ranks.rank, shuffle=True, seed=cfg.seed,
            drop_last=ranks.distributed,
        )  # fmt: skip
        loader = DataLoader(
            data,
            batch_size=part,
            sampler=order,
            num_workers=cfg.workers,
            drop_last=len(data) > cfg.batch_size,
            pin_memory=torch.cuda.is_available(),
            multiprocessing_context=_workers_context(root, cfg.workers),
        )
        return EpochLoader(loader, 3, data, cfg.seed)
    train = catalog[catalog["split"] == "train"]
    if train.empty:
        raise ValueError("no train images: training needs Eval/list_eval_partition.txt")
    data = ItemImages(root, train, spec)
    sampler = RankShare(
        lambda: samplers.MPerClassSampler(
            data.labels, m=cfg.per_item, batch_size=cfg.batch_size, length_before_new_iter=len(data)
        ),
        cfg.batch_size,
        ranks,
    )
    loader = DataLoader(
        data,
        batch_size=part,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context=_workers_context(root, cfg.workers),
    )
    return EpochLoader(loader, 1, data, cfg.seed)


def _workers_context(root, workers: int):
    """Loader workers' start method: torch's default (fork) unless the dataset's storage
    client cannot survive a fork (embedder.storage.reader_context)."""
    storage = locate(root).storage
    return reader_context(storage) if workers and not storage.fork_safe else None


def saved_run(out: Path, resume: bool) -> dict | None:
    """The state of the training run in `out` to continue (None: a new run starts), as
    save_epoch left it; a run there without `resume` is refused, not overwritten."""
    state = out / STATE_FILE
    if state.is_file() and not resume:
        raise ValueError(
            f"{out} already holds a training run; pass --resume to continue it, "
            f"or choose another --out"
        )
    if state.is_file():
        saved = json.loads(state.read_text())
        log.info("resuming after epoch %d from %s", saved["epoch"], saved["last"])
        return saved
    if resume:
        log.warning("nothing to resume in %s: starting a new run", out)
    return None


def resumed_or_new(out: Path, resume: bool, load, build) -> tuple[object, int, History]:
    """(model, epochs done, history): the last epoch's checkpoint `load`ed and the run's
    history when resuming the run in `out`, else `build()`, 0 and a new history."""
    if saved := saved_run(out, resume):
        history = History(saved["history"], saved["best"])
        return load(out / saved["last"]), saved["epoch"], history
    return build(), 0, History()


def _model(cfg: TrainConfig, out: Path) -> tuple[EmbeddingNet, int, History]:
    """Fresh model, or the last epoch's checkpoint and history when resuming."""
    return resumed_or_new(
        out,
        cfg.resume,
        load_checkpoint,
        lambda: build_model(
            cfg.backbone,
            dim=cfg.dim,
            img_size=cfg.img_size,
            pretrained=cfg.pretrained,
            weights=cfg.weights,
        ),
    )


def fit(cfg: TrainConfig, progress: bool = True) -> History:
    """Train for cfg.epochs, writing per-epoch checkpoints, metrics.csv and metrics.png:
    set up once, then per epoch train_one_epoch → validate → save_epoch. Under torchrun each
    process trains on its share of every batch (embedder.distributed); rank 0 alone validates
    and writes."""
    ranks, device = start(resolve_device(cfg.device))
    try:
        cfg.check(ranks.world)
        return _fit(cfg, ranks, device, progress and ranks.main)
    finally:
        stop(ranks)


def _fit(cfg: TrainConfig, ranks: Ranks, device: torch.device, progress: bool) -> History:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = autocast_dtype(device, cfg.precision)
    net, done, history = _model(cfg, out)
    net.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(freeze(net, cfg.train_stages), lr=cfg.lr)
    if done and (out / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(out / "optimizer.pt", map_location=device))
    model = wrap(net, ranks, device)
    loss_fn = losses.TripletMarginLoss(margin=cfg.margin)
    miner = {
        Mode.batch_hard: miners.BatchHardMiner(),
        Mode.semihard: miners.TripletMarginMiner(margin=cfg.margin, type_of_triplets="semihard"),
        Mode.reference: None,
    }[cfg.mode]
    where = locate(cfg.root, cfg.storage_options)  # the local disk or an object store
    catalog = read_catalog(where)  # read once: every epoch draws from the same tables
    pairs = _train_pairs(where, catalog) if cfg.mode is Mode.reference else None
    batches = build_loader(cfg, where, catalog, pairs, net.spec, ranks)
    val_sets = _val_sets(where) if ranks.main else None
    for epoch in range(done + 1, cfg.epochs + 1):
        row = {"epoch": epoch}
        row.update(
            train_one_epoch(
                model,
                batches.start(epoch),
                loss_fn,
                miner,
                optimizer,
                device,
                dtype,
                per_step=batches.per_step,
                desc=f"epoch {epoch}/{cfg.epochs}" if progress else None,
                ranks=ranks,
            )
        )
        if ranks.main:
            row.update(validate(net, cfg, device, val_sets, where))
            history.rows.append(row)
            save_epoch(net, optimizer, cfg, out, epoch, row, history)
            log.info("epoch %d: %s", epoch, row)
        barrier(ranks)  # the others wait for rank 0's validation and files
    return history


def train_step(model, x, labels, tuples, loss_fn, miner, optimizer, device, dtype, ranks) -> float:
    """One optimiser step on this process's part of a batch: `x` uint8 images, `labels`,
    and for fixed triplets the (anchor, positive, negative) positions in `x`. Under torchrun
    the embeddings (and labels) of every process are gathered first, so that the loss and the
    miner see the global batch, and DDP's averaged gradient is one process's."""
    net = getattr(model, "module", model)
    with autocast(device, dtype):
        emb = model(normalize(x, net.spec, device))
    emb = gather(emb.float(), ranks)  # process r's images at r·len(x) …
    if ranks.distributed and tuples is None:
        labels = gather(labels, ranks)
    elif ranks.distributed:
        labels = torch.arange(len(emb), device=device)
        tuples = tuple(torch.cat([t + r * len(x) for r in range(ranks.world)]) for t in tuples)
    if miner is not None:  # pytorch-metric-learning's miners run without gradients
        tuples = miner(emb, labels)
    loss = loss_fn(emb, labels, tuples)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_one_epoch(
    model,
    loader: DataLoader,
    loss_fn,
    miner,
    optimizer,
    device,
    dtype,
    *,
    per_step: int,
    desc: str | None = None,
    ranks: Ranks = Ranks(),
) -> dict:
    """One pass over `loader`: triplets (3 images an example, fixed tuples) or mined batches.
    Returns the mean loss and the throughput (all processes together)."""
    model.train()
    train_mode(getattr(model, "module", model))
    total, steps, images, started = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=desc is None, leave=False)
    for batch in bar:
        if per_step == 3:
            x = torch.cat(batch)
            n = len(batch[0])
            idx = torch.arange(n, device=device)
            tuples, labels = (idx, idx + n, idx + 2 * n), torch.arange(3 * n, device=device)
        else:
            x, labels, tuples = batch[0], batch[1].to(device), None
        loss = train_step(model, x, labels, tuples, loss_fn, miner, optimizer, device, dtype, ranks)
        total, steps, images = total + loss, steps + 1, images + len(x) * ranks.world
        bar.set_postfix(loss=f"{total / steps:.4f}")
    seconds = time.perf_counter() - started
    return {
        "loss": total / max(steps, 1),
        "seconds": round(seconds, 2),
        "img_per_s": round(images / seconds, 1),
        "triplets_per_s": round(images / per_step / seconds, 1) if per_step == 3 else "",
    }


def _val_sets(root):
    try:
        return split_sets(root, "val")
    except ValueError:
        log.warning("no val split: epochs are not validated, best = last")
        return None


def validate(model: EmbeddingNet, cfg: TrainConfig, device, sets, where=None) -> dict:
    """Validation top-k of the model as it is now ({} without a val split); `where`: the
    located dataset (default cfg.root)."""
    if sets is None:
        return {}
    report, _ = evaluate(
        Encoder(model, device, cfg.precision),
        where or cfg.root,
        split="val",
        ks=cfg.ks,
        workers=cfg.workers,
        sets=sets,
    )
    return {f"val_top{k}": round(v, 4) for k, v in report.overall.items()}


def save_epoch(
    model,
    optimizer,
    cfg,
    out: Path,
    epoch: int,
    row: dict,
    history: History,
    score: str | None = None,
) -> None:
    """The epoch's checkpoint, the optimizer, best.safetensors, metrics.csv/png, then the run
    state (last, so that a crash never points at files that are not there). The best epoch:
    the one with the highest `score` figure (default: validation top-k, cfg.select_k), the
    latest without validation. `cfg`: the run's config (a dataclass), kept in the state."""
    name = f"epoch_{epoch:03d}.safetensors"
    save_checkpoint(model, out / name, epoch=epoch, metrics=row)
    torch.save(optimizer.state_dict(), out / "optimizer.pt")
    score = row.get(score or f"val_top{cfg.select_k}", epoch)  # no validation: the latest
    if score == "" or score >= history.best:
        history.best = score
        shutil.copyfile(out / name, out / "best.safetensors")
    with (out / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history.rows[-1]))
        writer.writeheader()
        writer.writerows(history.rows)
    training_curves(history.rows, out / "metrics.png", loss=LOSS_NAMES.get(type(cfg).__name__))
    state = {
        "epoch": epoch,
        "last": name,
        "best": history.best,
        "history": history.rows,
        "config": {k: v for k, v in asdict(cfg).items() if k != "storage_options"},
    }
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(out / STATE_FILE)  # the state moves on only once the epoch's files are written
