"""How to make an Encoder, cheap to hold and to pickle: the model (a checkpoint file or a timm
backbone) and how to run it. The spec of a checkpoint's model is known without torch, so a
command can plan (and find nothing to embed) before paying for torch and the model; a process
pool or a Ray actor builds its own encoder from the same recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from embedder.choices import Precision
from embedder.spec import DEFAULT_BACKBONE, ModelSpec


@dataclass
class EncoderRecipe:
    backbone: str = DEFAULT_BACKBONE
    img_size: int | None = None
    pretrained: str = "default"
    weights: str | None = None  # a .safetensors checkpoint: its recorded spec wins
    device: str = "auto"
    precision: Precision | str = Precision.auto
    compile: bool = False
    _model: object = field(default=None, repr=False, compare=False)  # built for the spec

    @property
    def spec(self) -> ModelSpec:
        """The model's spec: a checkpoint's from its header (no torch); a backbone's from the
        model itself, which is kept for build()."""
        if self.weights is not None:
            from embedder.checkpoint import read_metadata

            spec, _ = read_metadata(self.weights)
            if self.img_size is not None and self.img_size != spec.img_size:
                raise ValueError(
                    f"--img-size {self.img_size} conflicts with {spec.img_size} recorded in "
                    f"{self.weights}"
                )
            return spec
        return self._built().spec

    def _built(self):
        if self._model is None:
            from embedder.model import build_model

            self._model = build_model(
                self.backbone, img_size=self.img_size, pretrained=self.pretrained
            )
        return self._model

    def build(self):
        """The Encoder (torch, the model on its device), built now."""
        from embedder.inference import Encoder
        from embedder.model import build_model

        model = build_model(weights=self.weights) if self.weights else self._built()
        return Encoder(model, self.device, self.precision, compile=self.compile)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}  # workers build their own
