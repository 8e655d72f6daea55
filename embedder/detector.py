"""The garment detector: torchvision's FCOS on a ResNet feature pyramid, one class per
clothes_type (upper, lower, full body).

One graph for every runtime: `GarmentDetector.forward` takes uint8 NCHW photos letterboxed to
the spec's square (embedder.boxes.letterbox) and returns every location's class scores and its
decoded box; torch runs it on a GPU (or a CPU), OpenVINO runs its export, and one NumPy
post-processing (embedder.boxes.garments) turns either's output into garments. Training calls
torchvision's FCOS with its targets and gets its losses."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from embedder.checkpoint import check_identity, read_state, weights_digest
from embedder.errors import WeightsError, first_line
from embedder.spec import DETECTOR_BACKBONE, DetectorSpec

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
HEADS = {  # pyramid channels, tower convolutions, first backbone stage returned (P3 or P4)
    "full": (256, 4, 2),
    "light": (128, 2, 3),
}
PRETRAINED = ("default", "coco", "imagenet", "none")
OFFLINE_ADVICE = "pass --pretrained none (random weights) or --weights FILE.safetensors"
RANDOM_INIT_SEED = 0


class GarmentDetector(nn.Module):
    """FCOS with the spec's backbone and head; forward(uint8 NCHW) → (scores [N, A, classes],
    boxes [N, A, 4] in the letterboxed square's pixels)."""

    def __init__(self, spec: DetectorSpec, trained_backbone: bool = False):
        super().__init__()
        if spec.backbone not in BACKBONES:
            raise ValueError(f"detector backbone {spec.backbone!r}: choose {', '.join(BACKBONES)}")
        if spec.head not in HEADS:
            raise ValueError(f"detector head {spec.head!r}: choose {' or '.join(HEADS)}")
        if spec.img_size % 32 or spec.img_size < 128:
            raise ValueError(f"detector --img-size {spec.img_size}: a multiple of 32, 128 or more")
        self.spec = spec
        channels, convs, first = HEADS[spec.head]
        norm = misc_ops.FrozenBatchNorm2d if trained_backbone else nn.BatchNorm2d
        body = getattr(resnet, spec.backbone)(weights=None, norm_layer=norm)
        stages = list(range(first, 5))
        wide = body.inplanes // 8  # layer1's output channels for this backbone
        pyramid = BackboneWithFPN(
            body,
            {f"layer{k}": str(n) for n, k in enumerate(stages)},
            [wide * 2 ** (k - 1) for k in stages],
            channels,
            extra_blocks=LastLevelP6P7(channels, channels),
        )
        levels = len(stages) + 2
        strides = [2 ** (first + 1 + n) for n in range(levels)]  # 8 (P3) or 16 (P4) upwards
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * levels)
        self.fcos = FCOS(
            pyramid,
            num_classes=len(spec.classes) + 1,  # label 0 unused: labels are clothes_type 1-3
            min_size=spec.img_size,
            max_size=spec.img_size,
            image_mean=list(spec.mean),
            image_std=list(spec.std),
            anchor_generator=anchors,
            head=FCOSHead(channels, 1, len(spec.classes) + 1, num_convs=convs),
            nms_thresh=spec.nms_iou,
        )
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255, False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255, False)

    def forward(self, x, targets: list[dict] | None = None):
        """uint8 (or float 0-255) N×3×S×S letterboxed photos → per-location scores of each
        garment type (FCOS's sqrt(class × centre-ness)) and decoded boxes. With `targets`
        (training: boxes in the square's pixels, labels clothes_type 1-3 per photo), FCOS's
        losses instead."""
        if targets is not None:
            return self.fcos([(p.float() / 255) for p in x], targets)
        fcos = self.fcos
        pixels = (x.float() - self.mean) / self.std
        features = list(fcos.backbone(pixels).values())
        out = fcos.head(features)
        size = (pixels.shape[-2], pixels.shape[-1])
        anchors = fcos.anchor_generator(ImageList(pixels, [size] * len(pixels)), features)[0]
        regression = out["bbox_regression"]
        boxes = torch.stack([fcos.box_coder.decode(r, anchors) for r in regression])
        scores = torch.sqrt(torch.sigmoid(out["cls_logits"]) * torch.sigmoid(out["bbox_ctrness"]))
        return scores[..., 1:].float(), boxes.float()


def _weights_enum(spec: DetectorSpec, pretrained: str):
    """torchvision's weights for `pretrained`: (enum, whole-detector?) or (None, False)."""
    from torchvision.models.detection import FCOS_ResNet50_FPN_Weights

    coco_fits = spec.backbone == "resnet50" and spec.head == "full"
    if pretrained == "coco" and not coco_fits:
        raise ValueError(
            "COCO detection weights exist for --backbone resnet50 --head full only; use "
            "--pretrained imagenet for this backbone"
        )
    if pretrained == "coco" or (pretrained == "default" and coco_fits):
        return FCOS_ResNet50_FPN_Weights.COCO_V1, True
    enum = resnet.__dict__[f"ResNet{spec.backbone.removeprefix('resnet')}_Weights"]
    return enum.IMAGENET1K_V1, False


def _download(weights) -> dict:
    """A torchvision weights file's state: from torch's hub cache, else downloaded, with one
    clear line when it cannot be."""
    from embedder.model import HUB_WAIT, _reachable

    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        host = url.split("/")[2]
        if not _reachable(f"https://{host}", HUB_WAIT):  # at once, not after a long hang
            raise WeightsError(
                f"cannot load pretrained weights {weights}: they are not in {cached.parent} and "
                f"{host} cannot be reached (offline?); {OFFLINE_ADVICE}"
            )
        log.info("downloading %s", url)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, a hash mismatch, a partial file
        raise WeightsError(
            f"cannot load pretrained weights {weights} ({first_line(exc)[:160]}): they are not "
            f"in {cached.parent} and cannot be downloaded (offline?); {OFFLINE_ADVICE}"
        ) from None


def build_detector(
    backbone: str = DETECTOR_BACKBONE,
    *,
    img_size: int | None = None,
    head: str = "full",
    pretrained: str = "default",
    weights: str | None = None,
) -> GarmentDetector:
    """The one detector builder. `weights`: a detector checkpoint (its spec wins). Otherwise
    `pretrained`: 'default' (COCO detection weights where torchvision has them for this
    backbone and head, else the backbone's ImageNet weights), 'coco', 'imagenet' or 'none'
    (seeded random weights)."""
    if weights is not None:
        return load_detector(weights, img_size=img_size)
    if pretrained not in PRETRAINED:
        raise ValueError(f"--pretrained {pretrained!r}: choose {', '.join(PRETRAINED)}")
    spec = DetectorSpec(backbone=backbone, img_size=img_size or 512, head=head)
    if pretrained == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = GarmentDetector(spec)
        return model.eval()
    enum, whole = _weights_enum(spec, pretrained)
    state = _download(enum)
    from dataclasses import replace

    spec = replace(spec, weights=f"torchvision:{enum}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = GarmentDetector(spec, trained_backbone=True)
    if whole:  # COCO's detector, less its 91-class classifier
        state = {k: v for k, v in state.items() if "cls_logits" not in k}
        missing, _ = model.fcos.load_state_dict(state, strict=False)
    else:
        body = model.fcos.backbone.body
        keep = {k: v for k, v in state.items() if k.split(".")[0] in dict(body.named_children())}
        missing, _ = body.load_state_dict(keep, strict=False)
    log.info("detector: %s %s from %s (%d tensors new)", backbone, head, enum, len(missing))
    return model.eval()


def load_detector(path: str | Path, *, img_size: int | None = None) -> GarmentDetector:
    """Rebuild the detector recorded in a checkpoint and load its parameters."""
    spec, state = read_state(path, DetectorSpec)
    check_identity(path, spec, weights_digest(state))
    if img_size is not None and img_size != spec.img_size:
        raise ValueError(f"--img-size {img_size} conflicts with {spec.img_size} recorded in {path}")
    model = GarmentDetector(spec, trained_backbone=_frozen(state))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(
            f"weights file {str(path)!r} does not fit a {spec.backbone} detector: "
            f"{first_line(exc)[:200]}"
        ) from None
    return model.eval()


def _frozen(state: dict) -> bool:
    """A backbone with frozen batch norm (trained from pretrained weights) has no
    num_batches_tracked counters."""
    return not any(
        k.startswith("fcos.backbone.body.") and "num_batches_tracked" in k for k in state
    )


class TorchDetector:
    """The detector's graph on torch: uint8 NCHW numpy photos → (scores, boxes) numpy, on its
    device and precision (the counterpart of the exported model's ExportedDetector)."""

    def __init__(self, model: GarmentDetector, device, precision="auto"):
        from embedder.device import autocast_dtype, resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.spec, self.dtype = model.spec, autocast_dtype(self.device, precision)

    @torch.inference_mode()
    def __call__(self, pixels):
        from embedder.device import autocast

        x = torch.from_numpy(pixels).to(self.device)
        with autocast(self.device, self.dtype):
            scores, boxes = self.model(x)
        return scores.float().cpu().numpy(), boxes.float().cpu().numpy()

    def describe(self) -> str:
        return f"{self.device} (torch {str(self.dtype or 'fp32').removeprefix('torch.')})"
