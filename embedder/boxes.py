"""Detection on the CPU side, in NumPy (the query path of an exported detector never imports
torch): photos letterboxed to the detector's square, and its raw output (every location's
scores and box) turned into garments: a score threshold, non-maximum suppression, boxes back
in the photo's pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from embedder.geometry import MIN_BOX
from embedder.spec import DetectorSpec, category_type

SCORE = 0.3  # a garment is reported from this score up (`search --min-score` changes it)
CANDIDATES = 1000  # the best-scoring locations kept before suppression
MOST = 10  # garments reported per photo at most


@dataclass(frozen=True)
class Garment:
    """One garment found in a photo: its box (x1, y1, x2, y2 in the upright photo's pixels),
    its type (DetectorSpec.classes: upper, lower, full) and the detector's score."""

    box: tuple[int, int, int, int]
    type: str
    score: float

    def to_dict(self) -> dict:
        return {"box": list(self.box), "type": self.type, "score": round(self.score, 4)}


def letterbox(img: Image.Image, size: int, mean=(0.485, 0.456, 0.406)) -> tuple[np.ndarray, float]:
    """The photo scaled (longer side to `size`) into the top-left of a size × size square
    filled with the mean colour, as uint8 CHW; and the scale (square pixels per photo pixel)."""
    scale = size / max(img.width, img.height)
    shape = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    fill = tuple(int(round(m * 255)) for m in mean)
    square = Image.new("RGB", (size, size), fill)
    square.paste(img.convert("RGB").resize(shape, Image.BILINEAR), (0, 0))
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy(), scale


def intersection(box, others) -> np.ndarray:
    """The area `box` shares with each of `others` (x1, y1, x2, y2 boxes, one a row)."""
    box, others = np.asarray(box, np.float64), np.asarray(others, np.float64).reshape(-1, 4)
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    inter = intersection(box, others)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def box_iou(a, b) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    return float(_iou(np.asarray(a, np.float64), np.asarray([b], np.float64))[0])


def garments(
    scores: np.ndarray,
    boxes: np.ndarray,
    spec: DetectorSpec,
    scale: float,
    photo: tuple[int, int],
    *,
    threshold: float = SCORE,
    per_type: bool = False,
    most: int = MOST,
) -> list[Garment]:
    """One photo's garments from the detector's output (`scores` [A, classes], `boxes` [A, 4]
    in the square's pixels), best first: locations scoring `threshold` or more, suppressed
    where they overlap a better one by more than spec.nms_iou (whatever their type: one
    garment, one box; `per_type`: only within a type, so that each type keeps its best box),
    mapped back to the width × height `photo` and clipped to it."""
    where, kind = np.nonzero(scores >= threshold)
    if not len(where):
        return []
    score = scores[where, kind]
    order = np.argsort(-score, kind="stable")[:CANDIDATES]
    where, kind, score = where[order], kind[order], score[order]
    found = np.clip(boxes[where] / scale, 0, [photo[0], photo[1], photo[0], photo[1]])
    kept: list[int] = []
    for i in range(len(found)):
        if len(kept) >= most:
            break
        if (found[i, 2] - found[i, 0]) < MIN_BOX or (found[i, 3] - found[i, 1]) < MIN_BOX:
            continue
        rivals = [k for k in kept if not per_type or kind[k] == kind[i]]
        if rivals and _iou(found[i], found[rivals]).max() > spec.nms_iou:
            continue
        kept.append(i)
    return [
        Garment(tuple(int(round(v)) for v in found[i]), spec.classes[kind[i]], float(score[i]))
        for i in kept
    ]


def of_category(found: list[Garment], category) -> list[Garment]:
    """The garments of the type `category` implies (TOPS: upper), all for a category that
    implies none (or no category)."""
    kind = category_type(category) if category else None
    return [g for g in found if g.type == kind] if kind else found


class GarmentFinder:
    """A built detector: photo → its garments. `raw` runs the detector's graph (the exported
    model on OpenVINO, or torch's) on uint8 NCHW letterboxed photos."""

    def __init__(self, raw, spec: DetectorSpec):
        self.raw, self.spec = raw, spec

    def __call__(
        self,
        img: Image.Image,
        threshold: float = SCORE,
        per_type: bool = False,
        size: tuple[int, int] | None = None,
    ) -> list[Garment]:
        """The garments in `img` (an upright RGB photo), best first; `size`: the photo's own
        width and height when `img` was decoded smaller (boxes are given in its pixels)."""
        size = size or img.size
        pixels, scale = letterbox(img, self.spec.img_size, self.spec.mean)
        scale *= img.width / size[0]  # square pixels per pixel of the photo itself
        scores, boxes = self.raw(pixels[None])
        return garments(
            scores[0], boxes[0], self.spec, scale, size, threshold=threshold, per_type=per_type
        )

    def describe(self) -> str:
        describe = getattr(self.raw, "describe", None)
        return describe() if describe else "cpu"
