"""The named choices of the commands and the library, as str Enums: typer checks them and lists
them in --help; library functions take them (or their values) and compare members, not strings."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A str Enum whose unknown values are a one-line ValueError listing the known ones."""

    @classmethod
    def _missing_(cls, value):
        known = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown {cls.__name__.lower()} {value!r}: use one of {known}")

    def __str__(self) -> str:
        return self.value


class Mode(Choice):
    """Training: the reference recipe's fixed triplets, or online mining in item batches."""

    reference = "reference"
    batch_hard = "batch-hard"
    semihard = "semihard"


class Precision(Choice):
    auto = "auto"  # bf16 autocast where the CPU/GPU has native bf16, else fp32
    bf16 = "bf16"
    fp32 = "fp32"


class Decode(Choice):
    cpu = "cpu"  # reader processes decode
    device = "device"  # readers read bytes; JPEGs decode on the model's device (nvjpeg)


class MapMethod(Choice):
    pca = "pca"
    tsne = "tsne"


class Runtime(Choice):
    """What runs the model: torch, or the exported model on OpenVINO (CPU); auto: OpenVINO on
    a CPU, torch on a GPU."""

    auto = "auto"
    torch = "torch"
    openvino = "openvino"


class Boxes(Choice):
    """The box each query photo of an evaluation is searched in: the dataset's annotated box
    (the literature's protocol), the garment detector's box of the category's type (as users'
    photos are searched), or the whole photo."""

    annotated = "annotated"
    detected = "detected"
    none = "none"
