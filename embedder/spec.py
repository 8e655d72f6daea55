"""What a model is, without building it: backbone, head size, preprocessing, weights' origin."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

DEFAULT_BACKBONE = "resnet50"
DEFAULT_DIM = 512


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and preprocess its input; saved in checkpoints.

    `weights` names where the parameters came from: "none" (seeded random init),
    "timm:<backbone.tag>" (timm's pretrained ImageNet weights) or "sha256:<digest>" (a checkpoint).
    """

    backbone: str = DEFAULT_BACKBONE
    dim: int = DEFAULT_DIM
    img_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    dropout: float = 0.2
    weights: str = "none"
    projection: int = 0  # PCA (or whitening) of the head's output to this size; 0: none
    whiten: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def out_dim(self) -> int:
        """The size of the vectors the model outputs (and a collection stores)."""
        return self.projection or self.dim

    def identity(self) -> dict:
        """What a collection records to refuse vectors from any other model."""
        return {
            "backbone": self.backbone,
            "dim": self.out_dim,
            "img_size": self.img_size,
            "weights": self.weights,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        for key in ("mean", "std"):
            data[key] = tuple(data[key])
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def model_difference(recorded: dict | None, spec: ModelSpec) -> str | None:
    """The one "same model?" rule: None when a collection's recorded model identity is
    `spec`'s, else what differs ("weights 'sha256:a' vs 'sha256:b'"), for the caller's message."""
    want = spec.identity()
    recorded = recorded or {}
    diff = [f"{k} {recorded.get(k)!r} vs {v!r}" for k, v in want.items() if recorded.get(k) != v]
    return ", ".join(diff) or None


DETECTOR_BACKBONE = "resnet50"
# The Anno file's clothes_type: the garment types a detector finds, and the type a category
# implies (CLOTHING implies none).
GARMENT_TYPES = {1: "upper", 2: "lower", 3: "full"}
CATEGORY_TYPES = {"TOPS": 1, "TROUSERS": 2, "DRESSES": 3}
GARMENTS = tuple(GARMENT_TYPES.values())  # the detector's classes, in clothes_type order


def category_type(category) -> str | None:
    """The garment type a category implies (TOPS: upper), None for any other."""
    return GARMENT_TYPES.get(CATEGORY_TYPES.get(str(category).upper(), 0))


@dataclass(frozen=True)
class DetectorSpec:
    """Everything needed to rebuild the garment detector and feed it; saved in its checkpoints.

    torchvision's FCOS on a ResNet feature pyramid. `head`: "full" is torchvision's own layout
    (256 channels, 4 tower convolutions, pyramid levels P3-P7: COCO's detection weights fit
    it), "light" a CPU-sized one (128 channels, 2 convolutions, P4-P7: garments are large, a
    stride-8 level finds nothing they need). Photos are letterboxed to `img_size` square.
    `weights`: "none", "torchvision:<weights enum>" or "sha256:<digest>" (a checkpoint)."""

    backbone: str = DETECTOR_BACKBONE
    img_size: int = 512
    head: str = "full"
    classes: tuple[str, ...] = GARMENTS
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    nms_iou: float = 0.6
    weights: str = "none"
    extra: dict = field(default_factory=dict, compare=False)

    def identity(self) -> dict:
        """What a collection records of the detector that chose its boxes."""
        return {
            "backbone": self.backbone,
            "img_size": self.img_size,
            "head": self.head,
            "weights": self.weights,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DetectorSpec:
        data = json.loads(text)
        for key in ("mean", "std", "classes"):
            data[key] = tuple(data[key])
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
