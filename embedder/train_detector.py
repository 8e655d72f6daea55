"""Training the garment detector on the dataset's own boxes: the train split's photos of both
sources, one box each with its clothes_type; validated on val by box AP (COCO's, through
pycocotools) and by how well the box of the annotated type fits."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from embedder.boxes import box_iou, garments, intersection, letterbox
from embedder.catalog import locate, read_catalog
from embedder.choices import Precision
from embedder.detector import GarmentDetector, build_detector, load_detector
from embedder.device import autocast, autocast_dtype, resolve_device
from embedder.distributed import Ranks, barrier, start, stop, wrap
from embedder.spec import CATEGORY_TYPES, DETECTOR_BACKBONE, DetectorSpec
from embedder.train import History, _seed_all, _workers_context, resumed_or_new, save_epoch
from embedder.transforms import load_image

log = logging.getLogger(__name__)
WHOLE = 0.98  # a box this close to the whole photo on both sides says nothing of where
SCALES = (0.55, 1.0)  # training: the photo letterboxed at this share of the square, anywhere
PASTE_HEIGHT = (0.25, 0.6)  # a pasted garment's height, as a share of the square's side
PASTE_COVER = 0.35  # a pasted garment hides at most this share of the photo's own box
AP_SCORE = 0.05  # validation counts detections from this score up, as COCO's evaluation does
AP_KEYS = ("val_ap50", "val_ap")


@dataclass
class DetectorConfig:
    root: str
    out: str
    backbone: str = DETECTOR_BACKBONE
    img_size: int = 512
    head: str = "full"
    pretrained: str = "default"
    weights: str | None = None  # start from a detector checkpoint instead
    epochs: int = 12
    batch_size: int = 16
    lr: float | None = None  # AdamW; None: 1e-3 from random weights, 2e-4 from pretrained ones
    device: str = "auto"
    precision: Precision = Precision.auto
    workers: int = 2
    seed: int = 0
    resume: bool = False
    paste: float = 0.5  # training: the share of photos given a garment of another type (copy-paste)
    select: str = "val_ap"  # the best checkpoint by this validation figure
    storage_options: dict = field(default_factory=dict, repr=False)

    def check(self, processes: int = 1) -> None:
        self.precision = Precision(self.precision)
        if self.epochs < 1 or self.batch_size < 1 or (self.lr is not None and self.lr <= 0):
            raise ValueError("epochs ≥ 1, batch size ≥ 1 and lr > 0 are required")
        if not 0 <= self.paste <= 1:
            raise ValueError(f"--paste is a share of the photos, 0 to 1 (got {self.paste})")
        if self.batch_size % processes:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a multiple of {processes} process(es)"
            )

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.pretrained == "none" and self.weights is None else 2e-4


def boxed_photos(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """The split's photos with a box that says where the garment is (not the whole photo)
    and a garment type (clothes_type, else the one the category implies); columns path, box
    (0-based x1, y1, x2, y2), label (1-3), source."""
    part = table[(table["split"] == split) & table["x1"].notna()].copy()
    kinds = part["clothes_type"].astype("float").fillna(part["category"].map(CATEGORY_TYPES))
    part = part[kinds.notna()]
    boxes = part[["x1", "y1", "x2", "y2"]].to_numpy(np.float64) - [1, 1, 0, 0]
    return pd.DataFrame(
        {
            "path": part["path"].to_numpy(),
            "box": list(boxes),
            "label": kinds[kinds.notna()].to_numpy(np.int64),
            "source": part["source"].to_numpy(),
        }
    )


def _useful(photos: pd.DataFrame, where) -> pd.DataFrame:
    """Photos whose box is not (about) the whole photo; the sizes read from the headers."""
    keep, sizes = [], []
    for row in photos.itertuples(index=False):
        with Image.open(where.source(row.path)) as img:
            w, h = img.size
        x1, y1, x2, y2 = row.box
        keep.append((x2 - x1) < WHOLE * w or (y2 - y1) < WHOLE * h)
        sizes.append((w, h))
    photos = photos.assign(size=sizes)
    if dropped := len(photos) - sum(keep):
        log.info("left out %d photo(s) whose box is the whole photo", dropped)
    return photos[keep].reset_index(drop=True)


class BoxedSet(Dataset):
    """Photos letterboxed into the detector's square with their box; training draws a scale,
    a place in the square, a mirror and a light change per photo, and (`paste`: the share of
    photos) pastes the boxed garment of a photo of another type somewhere it hides at most
    PASTE_COVER of the photo's own box, with its box and type: the dataset has one box a
    photo, a street photo often shows two garments (copy-paste augmentation, as Dwibedi et al.
    2017 and Ghiasi et al. 2021, with boxes for masks)."""

    def __init__(
        self, where, photos: pd.DataFrame, spec: DetectorSpec, augment: bool, paste: float = 0.0
    ):
        self.where, self.photos, self.spec, self.augment = where, photos, spec, augment
        self.labels = photos["label"].to_numpy() if len(photos) else np.zeros(0, np.int64)
        self.paste = paste if augment else 0.0
        self.others = {k: np.flatnonzero(self.labels != k) for k in np.unique(self.labels)}

    def __len__(self) -> int:
        return len(self.photos)

    def _photo(self, i: int, augment: bool) -> tuple[Image.Image, np.ndarray]:
        row = self.photos.iloc[i]
        img = load_image(self.where.source(row["path"]))
        box = np.array(row["box"], np.float64).clip(0, [img.width, img.height] * 2)
        if not augment:
            return img, box
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            box = np.array([img.width - box[2], box[1], img.width - box[0], box[3]])
        img = ImageEnhance.Brightness(img).enhance(random.uniform(0.7, 1.3))
        img = ImageEnhance.Contrast(img).enhance(random.uniform(0.7, 1.3))
        return img, box

    def __getitem__(self, i: int):
        label = int(self.labels[i])
        img, box = self._photo(i, self.augment)
        size = self.spec.img_size
        if not self.augment:
            pixels, scale = letterbox(img, size, self.spec.mean)
            return torch.from_numpy(pixels), _target([box * scale], [label])
        inner = int(size * random.uniform(*SCALES))
        pixels, scale = letterbox(img, inner, self.spec.mean)
        square = np.empty((3, size, size), np.uint8)
        square[:] = np.array([round(m * 255) for m in self.spec.mean], np.uint8)[:, None, None]
        w, h = round(img.width * scale), round(img.height * scale)
        dx, dy = random.randint(0, size - w), random.randint(0, size - h)
        square[:, dy : dy + h, dx : dx + w] = pixels[:, :h, :w]
        boxes, labels = [box * scale + [dx, dy, dx, dy]], [label]
        others = self.others.get(label, ())
        if self.paste and len(others) and random.random() < self.paste:
            j = int(others[random.randrange(len(others))])
            if (pasted := self._pasted(square, boxes[0], j)) is not None:
                boxes.append(pasted)
                labels.append(int(self.labels[j]))
        return torch.from_numpy(square), _target(boxes, labels)

    def _pasted(self, square: np.ndarray, box: np.ndarray, j: int) -> np.ndarray | None:
        """Photo j's boxed garment pasted into `square` (CHW, changed in place) where it hides
        at most PASTE_COVER of `box`; its box in the square, or None when no place was found."""
        img, other = self._photo(j, augment=True)
        crop = img.crop(tuple(int(round(v)) for v in other))
        if min(crop.size) < 2:  # a box of (about) no width or height: nothing to paste
            return None
        size = self.spec.img_size
        h = size * random.uniform(*PASTE_HEIGHT)
        w = h * crop.width / max(crop.height, 1)
        if w > size * 0.9:  # a wide garment: as wide as fits
            w, h = size * 0.9, size * 0.9 * crop.height / max(crop.width, 1)
        w, h = max(int(w), MIN_PASTE), max(int(h), MIN_PASTE)
        area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
        for _ in range(10):
            x, y = random.randint(0, size - w), random.randint(0, size - h)
            if intersection(box, [x, y, x + w, y + h])[0] <= PASTE_COVER * area:
                patch = np.asarray(crop.convert("RGB").resize((w, h), Image.BILINEAR))
                under = square[:, y : y + h, x : x + w].astype(np.float32)
                alpha = _feather(w, h)
                blended = alpha * patch.transpose(2, 0, 1) + (1 - alpha) * under
                square[:, y : y + h, x : x + w] = blended.round().astype(np.uint8)
                return np.array([x, y, x + w, y + h], np.float64)
        return None


MIN_PASTE = 8  # pixels: a pasted garment is at least this wide and tall in the square
FEATHER = 0.08  # a pasted garment's edges fade in over this share of its shorter side


def _feather(w: int, h: int) -> np.ndarray:
    """A pasted patch's opacity [1, h, w]: 1 inside, fading to 0 at its edges (pasted with hard
    edges, a patch teaches a detector to look for rectangles: Dwibedi et al. 2017 blend)."""
    ramp = max(2.0, FEATHER * min(w, h))
    dx = np.minimum(np.arange(w) + 0.5, w - np.arange(w) - 0.5) / ramp
    dy = np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / ramp
    return np.clip(np.minimum(dy[:, None], dx[None, :]), 0, 1)[None].astype(np.float32)


def _target(boxes: list[np.ndarray], labels: list[int]) -> dict:
    return {
        "boxes": torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _collate(batch):
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]


def _model(cfg: DetectorConfig, out: Path) -> tuple[GarmentDetector, int, History]:
    """Fresh detector, or the last epoch's checkpoint and history when resuming."""
    return resumed_or_new(
        out,
        cfg.resume,
        load_detector,
        lambda: build_detector(
            cfg.backbone,
            img_size=cfg.img_size,
            head=cfg.head,
            pretrained=cfg.pretrained,
            weights=cfg.weights,
        ),
    )


def fit_detector(cfg: DetectorConfig, progress: bool = True) -> History:
    """Train the detector for cfg.epochs (under torchrun each process on its share of every
    batch), writing per-epoch checkpoints, best.safetensors, metrics.csv and metrics.png."""
    ranks, device = start(resolve_device(cfg.device))
    try:
        cfg.check(ranks.world)
        return _fit(cfg, ranks, device, progress and ranks.main)
    finally:
        stop(ranks)


def _fit(cfg: DetectorConfig, ranks: Ranks, device, progress: bool) -> History:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = autocast_dtype(device, cfg.precision)
    where = locate(cfg.root, cfg.storage_options)
    table = read_catalog(where)
    train = _useful(boxed_photos(table, "train"), where)
    if train.empty:
        raise ValueError(
            "no train photos with boxes: the detector learns from Anno/list_bbox_consumer2shop.txt "
            "and the train split of Eval/list_eval_partition.txt"
        )
    val = _useful(boxed_photos(table, "val"), where) if ranks.main else None
    net, done, history = _model(cfg, out)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-4)
    if done and (out / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(out / "optimizer.pt", map_location=device))
    model = wrap(net, ranks, device)
    data = BoxedSet(where, train, net.spec, augment=True, paste=cfg.paste)
    order = DistributedSampler(
        data, num_replicas=ranks.world, rank=ranks.rank, shuffle=True, seed=cfg.seed,
        drop_last=ranks.distributed,
    )  # fmt: skip
    loader = DataLoader(
        data,
        batch_size=cfg.batch_size // ranks.world,
        sampler=order,
        num_workers=cfg.workers,
        collate_fn=_collate,
        drop_last=len(data) > cfg.batch_size,
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context=_workers_context(where, cfg.workers),
    )
    for epoch in range(done + 1, cfg.epochs + 1):
        _seed_all(cfg.seed * 1000 + epoch)
        order.set_epoch(epoch)
        for group in optimizer.param_groups:  # cosine decay by epoch: a resumed run's too
            group["lr"] = cosine(cfg.learning_rate, epoch, cfg.epochs)
        row = {"epoch": epoch}
        desc = f"epoch {epoch}/{cfg.epochs}" if progress else None
        row.update(_train_epoch(model, loader, optimizer, device, dtype, desc, ranks))
        if ranks.main:
            if val is not None and len(val):
                row.update(validate_detector(net, where, val, device, dtype, cfg.workers))
            history.rows.append(row)
            save_epoch(net, optimizer, cfg, out, epoch, row, history, score=cfg.select)
            log.info("epoch %d: %s", epoch, row)
        barrier(ranks)
    return history


def cosine(lr: float, epoch: int, epochs: int) -> float:
    """Epoch `epoch`'s (1-based) learning rate: `lr` decayed along a half cosine to lr / 20."""
    floor = lr / 20
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(1, epochs)))


def _train_epoch(model, loader, optimizer, device, dtype, desc, ranks) -> dict:
    model.train()
    total, steps, images, started = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=desc is None, leave=False)
    for x, targets in bar:
        x = x.to(device, non_blocking=True)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with autocast(device, dtype):
            losses = model(x, targets)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        total, steps, images = total + loss.item(), steps + 1, images + len(x) * ranks.world
        bar.set_postfix(loss=f"{total / steps:.4f}")
    seconds = time.perf_counter() - started
    return {
        "loss": round(total / max(steps, 1), 4),
        "seconds": round(seconds, 2),
        "img_per_s": round(images / seconds, 1),
    }


@torch.inference_mode()
def detect_photos(net, where, photos: pd.DataFrame, device, dtype=None, workers: int = 0):
    """Each photo's garments at every score from AP_SCORE up, each type's own best kept
    (per-type suppression), in photo pixels; the model's eval mode."""
    net.eval()
    data = BoxedSet(where, photos, net.spec, augment=False)
    loader = DataLoader(data, batch_size=16, num_workers=workers, collate_fn=_collate)
    found, n = [], 0
    for x, _ in loader:
        with autocast(torch.device(device), dtype):
            scores, boxes = net(x.to(device))
        scores, boxes = scores.float().cpu().numpy(), boxes.float().cpu().numpy()
        for s, b in zip(scores, boxes, strict=True):
            w, h = photos.iloc[n]["size"]
            scale = net.spec.img_size / max(w, h)
            found.append(
                garments(s, b, net.spec, scale, (w, h), threshold=AP_SCORE, per_type=True, most=100)
            )
            n += 1
    return found


def validate_detector(net, where, photos: pd.DataFrame, device, dtype=None, workers=0) -> dict:
    """Box AP at IoU 0.5 and over 0.5:0.95 (COCO's), and the mean IoU with the annotated box of
    the best box of the annotated type on the consumer photos (0 where none is found)."""
    found = detect_photos(net, where, photos, device, dtype, workers)
    figures = box_ap(photos, found, net.spec)
    types = net.spec.classes
    fits = [
        max((box_iou(g.box, row.box) for g in got if g.type == types[row.label - 1]), default=0)
        for row, got in zip(photos.itertuples(index=False), found, strict=True)
        if row.source == "consumer"
    ]
    figures["val_iou"] = round(float(np.mean(fits)), 4) if fits else ""
    return figures


def box_ap(photos: pd.DataFrame, found: list, spec: DetectorSpec) -> dict:
    """COCO box AP of `found` (garments per photo) against the photos' boxes, by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i, "width": int(r.size[0]), "height": int(r.size[1])}
              for i, r in enumerate(photos.itertuples(index=False))]  # fmt: skip
    annotations = []
    for i, row in enumerate(photos.itertuples(index=False)):
        x1, y1, x2, y2 = (float(v) for v in row.box)
        annotations.append(
            {"id": i + 1, "image_id": i, "category_id": int(row.label), "iscrowd": 0,
             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
        )  # fmt: skip
    names = {n: k for k, n in enumerate(spec.classes, 1)}
    results = [
        {"image_id": i, "category_id": names[g.type], "score": g.score,
         "bbox": [g.box[0], g.box[1], g.box[2] - g.box[0], g.box[3] - g.box[1]]}
        for i, got in enumerate(found) for g in got
    ]  # fmt: skip
    if not results:
        return dict.fromkeys(AP_KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k, "name": n} for n, k in names.items()],
        }
        truth.createIndex()
        run = COCOeval(truth, truth.loadRes(results), "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
    ap, ap50 = (max(0.0, float(v)) for v in run.stats[:2])  # -1: no such boxes
    return {"val_ap50": round(ap50, 4), "val_ap": round(ap, 4)}
