"""The one model recipe: how every command makes its encoder.

A recipe names a model (a checkpoint file, a timm backbone, or the model a collection records)
and how to run it (torch, or the exported model on OpenVINO; device, precision, int8). It
resolves the runtime once, checks identity against a collection's record, and builds the
encoder: exported (and quantised) or traced once and cached where it is built. The spec of a
checkpoint's or a collection's model is known without torch, so a command can plan (and find
nothing to embed) before paying for torch and the model. It is cheap to hold and to pickle: a
process pool or a Ray actor builds its own encoder from the same recipe."""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from embedder.choices import Precision, Runtime
from embedder.errors import WeightsError
from embedder.spec import DEFAULT_BACKBONE, ModelSpec, model_difference

if TYPE_CHECKING:
    from embedder.catalog import DatasetRoot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How a command runs its model, whichever model it is (the options every command shares)."""

    device: str = "auto"
    precision: Precision | str = Precision.auto
    runtime: Runtime | str = Runtime.auto  # auto: OpenVINO on a CPU, torch on a GPU
    int8: bool = False  # OpenVINO's int8 model (quantised once on the user's photos)
    traced: bool = False  # torch on a CPU: a cached traced copy for fast starts


@dataclass
class ModelRecipe:
    backbone: str = DEFAULT_BACKBONE
    img_size: int | None = None
    pretrained: str = "default"
    weights: str | None = None  # a .safetensors checkpoint: its recorded spec wins
    device: str = "auto"
    precision: Precision | str = Precision.auto
    compile: bool = False
    runtime: Runtime | str = Runtime.auto  # auto: OpenVINO on a CPU, torch on a GPU
    int8: bool = False  # OpenVINO: the int8 model (quantised once, checked against fp32)
    calibration: str | DatasetRoot | None = None  # int8: a folder (or located dataset) of photos
    traced: bool = False  # torch on a CPU: a cached traced copy (fast starts, no GIL)
    record: dict | None = None  # a collection's metadata: the model must be the one it records
    _model: object = field(default=None, repr=False, compare=False)  # built for the spec

    @classmethod
    def for_collection(
        cls, metadata: dict, weights: str | None = None, run: RunOptions = RunOptions()
    ) -> ModelRecipe:
        """The model a collection records (from `weights` when its file moved), run as `run`
        says; calibration photos are the collection's dataset."""
        identity = metadata.get("model")
        if not identity:
            raise WeightsError("the collection records no model; it was not made by `ingest run`")
        how = {**asdict(run), "calibration": metadata.get("dataset_root")}
        weights = str(weights) if weights else None
        origin = identity["weights"]
        if origin.startswith("sha256:"):
            path = weights or metadata.get("weights_file")
            if weights and not Path(weights).is_file():
                raise WeightsError(f"weights file {weights!r} not found")
            if not path or not Path(path).is_file():
                raise WeightsError(
                    f"the collection was embedded with weights {origin}; the recorded "
                    f"file {path!r} is missing: pass --weights FILE.safetensors"
                )
            return cls(weights=path, record=metadata, **how)
        if weights:
            raise WeightsError(
                f"the collection was embedded with {origin!r}, not a weights file; drop --weights"
            )
        tag = "none" if origin == "none" else origin.removeprefix("timm:").partition(".")[2]
        return cls(
            identity["backbone"],
            img_size=identity["img_size"],
            pretrained=tag or "default",
            record=metadata,
            **how,
        )

    @classmethod
    def compared(
        cls,
        weights,
        backbones: list[str] | None,
        img_size: int | None,
        pretrained: str,
        run: RunOptions,
        calibration=None,
    ) -> list[tuple[str, ModelRecipe]]:
        """`embedder evaluate`'s models, by name: a checkpoint, or timm backbones (names
        repeated or comma-separated) with `pretrained` weights; one of the two."""
        names = [n for given in backbones or [] for n in given.split(",") if n]
        if (weights is None) == (not names):
            raise ValueError("give either --weights or --backbone")
        how = {**asdict(run), "calibration": calibration}
        if weights:
            return [(str(weights), cls(weights=str(weights), **how))]
        return [(n, cls(n, img_size=img_size, pretrained=pretrained, **how)) for n in names]

    def against(self, metadata: dict) -> ModelRecipe:
        """This recipe for a collection that already exists: when the collection records the
        model this recipe names (a timm backbone, its weights' tag, the image size), its spec
        comes from that record, so a rerun with nothing to embed never builds the model nor
        imports torch; the model, when something is embedded, is checked against the record."""
        identity = metadata.get("model") or {}
        if self.weights is not None or not metadata.get("model_spec"):
            return self
        origin = str(identity.get("weights", ""))
        if self.pretrained == "none":
            same_weights = origin == "none"
        elif self.pretrained == "default":  # timm's default tag, whatever it is named
            same_weights = origin.startswith(f"timm:{self.backbone}.")
        else:
            same_weights = origin == f"timm:{self.backbone}.{self.pretrained}"
        size = identity.get("img_size")
        if (
            identity.get("backbone") == self.backbone
            and same_weights
            and self.img_size
            in (
                None,
                size,
            )
        ):
            return self.with_(record=metadata)
        return self

    @property
    def spec(self) -> ModelSpec:
        """The model's spec: a checkpoint's from its header, a collection's from its record
        (neither needs torch); a backbone's from the model itself, which is kept for build()."""
        if self.weights is not None:
            from embedder.checkpoint import read_verified

            spec, _ = read_verified(self.weights)
            if self.img_size is not None and self.img_size != spec.img_size:
                raise ValueError(
                    f"--img-size {self.img_size} conflicts with {spec.img_size} recorded in "
                    f"{self.weights}"
                )
        elif self.record and self.record.get("model_spec"):
            spec = ModelSpec.from_json(self.record["model_spec"])
        else:
            spec = self.model().spec
        return self._checked(spec)

    def _checked(self, spec: ModelSpec) -> ModelSpec:
        """The one identity check: a collection is searched only with the model that made it."""
        if self.record is not None and model_difference(self.record.get("model"), spec):
            raise WeightsError(
                f"weights {spec.weights} do not match the collection's model "
                f"{self.record['model']['weights']}; the collection must be searched with the "
                f"model that made it"
            )
        return spec

    def model(self):
        """The torch model (built once)."""
        if self._model is None:
            from embedder.model import build_model

            if self.weights:
                model = build_model(weights=self.weights)
            else:
                dim = self.record["model"]["dim"] if self.record else None
                model = build_model(
                    self.backbone, img_size=self.img_size, pretrained=self.pretrained, dim=dim
                )
            self._model = model
            self._checked(model.spec)
        return self._model

    def resolved_runtime(self) -> Runtime:
        from embedder.runtime import resolve

        if self.int8 and Runtime(self.runtime) is Runtime.torch:
            raise ValueError("--int8 runs on OpenVINO: use --runtime openvino (or auto on a CPU)")
        return resolve(self.runtime, self.device)

    def build(self, throughput: bool = True):
        """The encoder, built now: the exported model on OpenVINO (from the cache, else
        exported and, for int8, quantised once), or torch's (the model on its device; with
        `traced`, the cached traced copy, written first when there is none)."""
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
        from embedder.device import autocast_dtype, resolve_device
        from embedder.inference import Encoder

        device = resolve_device(self.device)
        if not (self.traced and device.type == "cpu"):
            return Encoder(self.model(), device, self.precision, compile=self.compile)
        from embedder.compiled import load_traced, save_traced

        spec, dtype = self.spec, autocast_dtype(device, self.precision)
        if (module := load_traced(spec, dtype)) is None:
            try:
                save_traced(self.model(), dtype)
            except OSError as exc:
                log.warning("could not cache the traced model: %s", exc)
            module = load_traced(spec, dtype)
        if module is None:  # not faithful when traced, or not cached: the model itself
            return Encoder(self.model(), device, self.precision)
        return Encoder(module, device, self.precision, spec=spec)

    def calibration_photos(self):
        """A seeded sample of the calibration folder's photos, as the model sees them."""
        from embedder.catalog import DatasetRoot, bbox_of, locate, read_catalog
        from embedder.runtime import calibration_photos

        source = self.calibration
        if not source or not (isinstance(source, DatasetRoot) or Path(source).is_dir()):
            raise ValueError(
                "an int8 model needs calibration photos: pass --calibration DIR (or run "
                "`embedder export --int8 --calibration DIR` first)"
            )
        where = locate(source)
        table = read_catalog(where)
        paths = [where.file(p) for p in table["path"]]
        boxes = [bbox_of(r) for r in table.itertuples(index=False)]
        return calibration_photos(paths, boxes, self.spec, storage=where.storage)

    def describe(self) -> dict:
        """What made a collection's vectors (recorded with it, for information)."""
        runtime = self.resolved_runtime()
        return {
            "runtime": runtime.value,
            "precision": "int8" if self.int8 else Precision(self.precision).value,
        }

    def with_(self, **changes) -> ModelRecipe:
        """This recipe with some fields changed (the model, if built, built again)."""
        return replace(self, _model=None, **changes)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}  # workers build their own


@dataclass
class Built:
    """The recipe of an encoder that already exists (a test's or a benchmark's own): build()
    hands it over. Runs only in this process."""

    encoder: object

    @property
    def spec(self) -> ModelSpec:
        return self.encoder.spec

    @property
    def device(self):
        return self.encoder.device

    def build(self, throughput: bool = True):
        return self.encoder

    def describe(self) -> dict:
        return {}


@dataclass
class DetectorRecipe:
    """The garment detector a command runs: a checkpoint of `embedder train-detector`, run as
    the embedder is (OpenVINO's export on a CPU, cached; torch on a GPU). Its spec is read from
    the checkpoint's header (no torch); `record`: a collection's record of the detector that
    chose its boxes, which this one must be."""

    weights: str
    device: str = "auto"
    precision: Precision | str = Precision.auto
    runtime: Runtime | str = Runtime.auto
    record: dict | None = None

    @classmethod
    def for_collection(
        cls, metadata: dict, weights: str | None = None, run: RunOptions = RunOptions()
    ) -> DetectorRecipe | None:
        """The detector a collection records (from `weights` when its file moved), or None
        when the collection records none and no `weights` are given."""
        identity = metadata.get("detector")
        path = str(weights) if weights else (metadata.get("detector_file") if identity else None)
        if path is None:
            return None
        if not weights and not Path(path).is_file():  # a given file is checked as it is read
            raise WeightsError(
                f"the collection's boxes were found by detector {identity['weights']}; the "
                f"recorded file {path!r} is missing: pass --detector FILE.safetensors"
            )
        return cls(path, run.device, run.precision, run.runtime, record=identity)

    @functools.cached_property
    def spec(self):
        """The checkpoint's spec, read and checked once (each command asks for it several
        times: checks, the collection's record, the cache lookup, the build)."""
        from embedder.checkpoint import read_verified
        from embedder.spec import DetectorSpec

        spec, _ = read_verified(self.weights, DetectorSpec)
        if self.record and self.record.get("weights") != spec.weights:
            raise WeightsError(
                f"detector {spec.weights} is not the one that chose the collection's boxes "
                f"({self.record['weights']}); pass that detector, or none"
            )
        return spec

    def model(self):
        from embedder.detector import load_detector

        return load_detector(self.weights)

    def cached(self) -> bool:
        """Whether build() only loads: the export of this detector is in the model cache (and
        runs on OpenVINO), so building it needs no torch and may run beside another build."""
        from embedder.runtime import exported_path, resolve

        if resolve(self.runtime, self.device) is not Runtime.openvino:
            return False
        return exported_path(self.spec, int8=False).is_file()

    def build(self, throughput: bool = False):
        """A GarmentFinder: photo → garments."""
        from embedder.boxes import GarmentFinder
        from embedder.runtime import resolve

        spec = self.spec
        if resolve(self.runtime, self.device) is Runtime.openvino:
            from embedder.runtime import exported_encoder

            raw = exported_encoder(
                spec, self.model, precision=self.precision, throughput=throughput
            )
            return GarmentFinder(raw, spec)
        from embedder.detector import TorchDetector

        return GarmentFinder(TorchDetector(self.model(), self.device, self.precision), spec)

    def describe(self) -> dict:
        """What a collection records of the detector (beside the file's path)."""
        return self.spec.identity()
