"""How to make an encoder, cheap to hold and to pickle: the model (a checkpoint file or a timm
backbone), what runs it (torch, or the exported model on OpenVINO) and how. The spec of a
checkpoint's model is known without torch, so a command can plan (and find nothing to embed)
before paying for torch and the model; a process pool or a Ray actor builds its own encoder
from the same recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from embedder.choices import Precision, Runtime
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
    runtime: Runtime | str = Runtime.auto  # auto: OpenVINO on a CPU, torch on a GPU
    int8: bool = False  # OpenVINO: the int8 model (quantised once, checked against fp32)
    calibration: str | None = None  # int8: a folder of the user's own photos
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
        return self.model().spec

    def model(self):
        """The torch model (built once)."""
        if self._model is None:
            from embedder.model import build_model

            self._model = (
                build_model(weights=self.weights)
                if self.weights
                else build_model(self.backbone, img_size=self.img_size, pretrained=self.pretrained)
            )
        return self._model

    def resolved_runtime(self) -> Runtime:
        from embedder.runtime import resolve

        if self.int8 and Runtime(self.runtime) is Runtime.torch:
            raise ValueError("--int8 runs on OpenVINO: use --runtime openvino (or auto on a CPU)")
        return resolve(self.runtime, self.device)

    def build(self, throughput: bool = True):
        """The encoder, built now: torch's (the model on its device), or the exported model
        (from the cache, else exported and, for int8, quantised once)."""
        if self.resolved_runtime() is Runtime.openvino:
            from embedder.runtime import exported_encoder

            return exported_encoder(
                self.spec,
                self.model,
                int8=self.int8,
                calibration=self.calibration_photos,
                dataset=self.calibration,
                precision=self.precision,
                throughput=throughput,
            )
        from embedder.inference import Encoder

        return Encoder(self.model(), self.device, self.precision, compile=self.compile)

    def calibration_photos(self):
        """A seeded sample of the calibration folder's photos, as the model sees them."""
        if not self.calibration:
            raise ValueError("an int8 model needs calibration photos: pass --calibration DIR")
        from embedder.catalog import bbox_of, locate, read_catalog
        from embedder.runtime import calibration_photos

        where = locate(self.calibration)
        table = read_catalog(where)
        paths = [str(where.base / p) for p in table["path"]]
        boxes = [bbox_of(r) for r in table.itertuples(index=False)]
        return calibration_photos(paths, boxes, self.spec)

    def describe(self) -> dict:
        """What made a collection's vectors (recorded with it, for information)."""
        runtime = self.resolved_runtime()
        return {
            "runtime": runtime.value,
            "precision": "int8" if self.int8 else Precision(self.precision).value,
        }

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}  # workers build their own
