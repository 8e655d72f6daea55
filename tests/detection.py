"""Detectors for tests: untrained FCOS whose classifier is biased so that it scores chosen
garment types high all over any photo (its boxes are arbitrary; what a test of the pipeline
needs). How well a trained detector finds garments: benchmarks/detector_quality.py."""

import torch

from embedder.checkpoint import save_checkpoint
from embedder.detector import build_detector


def biased_detector(path, types: tuple[str, ...]) -> str:
    """Write (and return the path of) a detector that finds garments of `types`, and only
    those, all over any photo. With several types, a location's type is the one whose fixed
    (seeded) direction in the features there is strongest, by a wide margin: each type wins
    somewhere, the same on any CPU (a bare bias for each leaves equal scores to the CPU's
    rounding: one type everywhere on one machine, a mix on another)."""
    torch.manual_seed(0)
    model = build_detector("resnet18", img_size=128, head="light", pretrained="none")
    rows = [model.spec.classes.index(kind) + 1 for kind in types]
    with torch.no_grad():
        head = model.fcos.head
        logits = head.classification_head.cls_logits
        logits.bias.fill_(-20.0)
        logits.weight.zero_()
        if len(rows) == 1:
            logits.bias[rows[0]] = 6.0
        else:  # a random direction per type, with no part common to all feature channels
            # (their shared level would favour one type everywhere) nor to all types
            directions = torch.randn(len(rows), *logits.weight.shape[1:])
            directions -= directions.mean(1, keepdim=True)
            directions -= directions.mean(0, keepdim=True)
            logits.bias[rows] = 0.0
            logits.weight[rows] = 50.0 * directions
        head.regression_head.bbox_ctrness.bias.fill_(6.0)
        head.regression_head.bbox_reg.bias.fill_(2.0)  # boxes of some size
    save_checkpoint(model, path)
    return str(path)
