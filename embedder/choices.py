"""The named choices of the commands, as str Enums: typer checks them and lists them in --help."""

from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    """Training: the reference recipe's fixed triplets, or online mining in item batches."""

    reference = "reference"
    batch_hard = "batch-hard"
    semihard = "semihard"


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast where the CPU/GPU has native bf16, else fp32
    bf16 = "bf16"
    fp32 = "fp32"


class Decode(str, Enum):
    cpu = "cpu"  # reader processes decode
    device = "device"  # readers read bytes; JPEGs decode on the model's device (nvjpeg)


class MapMethod(str, Enum):
    pca = "pca"
    tsne = "tsne"
