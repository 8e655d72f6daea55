"""Detectors for tests: untrained FCOS whose classifier is biased so that it scores chosen
garment types high all over any photo (its boxes are arbitrary; what a test of the pipeline
needs). How well a trained detector finds garments: benchmarks/detector_quality.py."""

import torch

from embedder.checkpoint import save_checkpoint
from embedder.detector import build_detector


def biased_detector(path, types: tuple[str, ...]) -> str:
    """Write (and return the path of) a detector that finds garments of `types`, and only
    those, everywhere."""
    model = build_detector("resnet18", img_size=128, head="light", pretrained="none")
    classes = model.spec.classes
    with torch.no_grad():
        head = model.fcos.head
        bias = head.classification_head.cls_logits.bias
        bias.fill_(-20.0)
        for kind in types:
            bias[classes.index(kind) + 1] = 6.0
        head.regression_head.bbox_ctrness.bias.fill_(6.0)
        head.regression_head.bbox_reg.bias.fill_(2.0)  # boxes of some size
    save_checkpoint(model, path)
    return str(path)
