"""The model on a plain CPU: exported once to OpenVINO (the normalisation built in: uint8 NCHW
pixels in, L2-normalised vectors out), cached beside the traced copies, and run without torch.
int8 by NNCF's post-training quantisation, kept only when it finds what fp32 finds.

OpenVINO runs a request on all cores (LATENCY: one query) or splits a batch over one stream per
core with asynchronous requests (THROUGHPUT: ingest, the web app's batches)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from embedder.choices import Precision, Runtime
from embedder.errors import UserError, first_line
from embedder.spec import DetectorSpec, ModelSpec
from embedder.storage import cache_dir, remembered_digest

log = logging.getLogger(__name__)
INT8_OVERLAP = 0.9  # mean top-20 overlap with fp32 an int8 model must reach on held-out photos
INT8_ACCURACY = 0.01  # and at most this loss of top-1 and top-20 accuracy, where there is a split
UNIT = 1e-2  # a usable model's vectors are unit length within this


class ExportError(UserError, RuntimeError):
    """An exported or int8 model that cannot be used (refused with the figures)."""


CONVERTER = "openvino.tools.ovc"  # OpenVINO's model converter, which only export needs


def import_openvino():
    """OpenVINO with its telemetry package kept out of the process: OpenVINO's converter and
    NNCF fall back to their own no-op stubs when `openvino_telemetry` cannot be imported, so
    nothing is sent anywhere and nothing is written under $HOME/intel. (Imported first thing
    wherever this project runs OpenVINO, child processes included.)"""
    import sys

    sys.modules.setdefault("openvino_telemetry", None)  # `import` now raises ImportError
    # and without its model converter (a tenth of `import openvino`, and only export needs it:
    # `converter()`); it stays importable afterwards, for NNCF and for export
    blocked = "openvino" not in sys.modules and CONVERTER not in sys.modules
    if blocked:
        sys.modules[CONVERTER] = None
    try:
        import openvino
    finally:
        if blocked and sys.modules.get(CONVERTER, 0) is None:
            del sys.modules[CONVERTER]
    return openvino


def converter():
    """OpenVINO's `convert_model` (torch → OpenVINO)."""
    import_openvino()
    from openvino.tools.ovc import convert_model

    return convert_model


def gpu_present() -> bool:
    """An NVIDIA GPU's driver is loaded (known without importing torch)."""
    return Path("/proc/driver/nvidia/version").exists() and os.environ.get(
        "CUDA_VISIBLE_DEVICES", "0"
    ) not in ("", "-1")


def resolve(runtime: Runtime | str, device: str = "auto") -> Runtime:
    """auto: OpenVINO on a CPU, torch on a GPU."""
    runtime = Runtime(runtime)
    if runtime is not Runtime.auto:
        if runtime is Runtime.openvino and str(device).startswith("cuda"):
            raise ValueError("--runtime openvino runs on the CPU: drop --device cuda")
        return runtime
    on_gpu = str(device).startswith("cuda") or (device == "auto" and gpu_present())
    return Runtime.torch if on_gpu else Runtime.openvino


def scratch_dir() -> Path:
    """This process's own folder for models that the cache cannot take (removed at exit)."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"fashion-retrieval-models-{os.getpid()}"


def cache_unwritable() -> OSError | None:
    """Why the model cache cannot be written (a read-only disk, no HOME), or None."""
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        probe = cache_dir() / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        return exc
    return None


def writable_dir() -> Path:
    """The cache when it can be written, else (once warned) a folder of this process's own:
    an unwritable cache or HOME costs a re-export at the next start, never the answer."""
    if (exc := cache_unwritable()) is None:
        return cache_dir()
    scratch = scratch_dir()
    if not scratch.is_dir():
        import atexit
        import shutil

        scratch.mkdir(mode=0o700)
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        log.warning("cannot write the model cache (%s); exporting for this run only", exc)
    return scratch


def exported_path(spec: ModelSpec, int8: bool, folder: Path | None = None) -> Path:
    openvino = import_openvino()
    key = f"{spec.to_json()}|openvino {openvino.__version__}|{'int8' if int8 else 'fp32'}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    kind = "detector-" if isinstance(spec, DetectorSpec) else ""
    name = f"{kind}{spec.backbone}-{digest}-{'int8' if int8 else 'fp32'}.xml"
    if folder is None:  # the cache, or this process's own folder when that holds it
        found = cache_dir() / name
        folder = cache_dir() if found.is_file() or not scratch_dir().is_dir() else scratch_dir()
    return folder / name


def with_normalisation(model):
    """`model` (an EmbeddingNet) taking uint8 NCHW pixels: the same normalisation as
    embedder.transforms.normalize, inside the graph that is exported."""
    import torch

    spec: ModelSpec = model.spec

    class Normalised(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner.eval()
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255)

        def forward(self, x):
            return self.inner((x.float() - self.mean) / self.std)

    return Normalised(model).eval()


def export(model, path: Path) -> Path:
    """Write `model` (an EmbeddingNet, or a GarmentDetector: it normalises its input itself)
    as OpenVINO IR at `path` (+ .bin), taking uint8 NCHW pixels of any batch size."""
    import torch

    convert_model = converter()
    spec = model.spec
    size = spec.img_size
    example = torch.zeros((1, 3, size, size), dtype=torch.uint8)
    graph = model.eval() if isinstance(spec, DetectorSpec) else with_normalisation(model)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's deprecation notices
        converted = convert_model(graph, example_input=example, input=[(-1, 3, size, size)])
    return _save(converted, path, {"spec": spec.to_json(), "int8": False})


def _save(model, path: Path, info: dict) -> Path:
    """Save an OpenVINO model atomically (the .xml last: its presence means complete)."""
    ov = import_openvino()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}-{path.name}")
    ov.save_model(model, tmp, compress_to_fp16=False)
    info = {**info, "sha256": {s: _digest(tmp.with_suffix(s)) for s in (".xml", ".bin")}}
    tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    tmp.replace(path)
    return path


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _intact(path: Path) -> None:
    """The files are the ones saved (a damaged one can hide behind OpenVINO's compiled-blob
    cache until that goes): ValueError otherwise. Each version of a file is read once."""
    recorded = json.loads(path.with_suffix(".json").read_text()).get("sha256", {})
    for suffix in (".xml", ".bin"):
        if recorded.get(suffix) != remembered_digest(path.with_suffix(suffix), _digest):
            raise ValueError(f"its {suffix} file is not the one that was saved")


def discard(path: Path) -> None:
    for suffix in (".xml", ".bin", ".json"):
        path.with_suffix(suffix).unlink(missing_ok=True)


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Keep the calling thread's alternate signal stack: OpenVINO's CPU plugin installs one of
    about 20 kB on the thread that compiles a model, too small for a signal frame once torch
    has used AMX on that thread (the process then died of SIGSEGV at its next SIGCHLD)."""

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        before = Stack()
        kept = libc.sigaltstack(None, ctypes.byref(before)) == 0
    except (OSError, AttributeError):  # not Linux
        kept = False
    try:
        yield
    finally:
        if kept:
            libc.sigaltstack(ctypes.byref(before), None)


class ExportedEncoder:
    """An exported model behind the Encoder's interface: uint8 NCHW pixels (array or tensor)
    → float32 vectors; `spec`, `device` ("cpu"), `describe()`. Thread-safe."""

    runtime = Runtime.openvino

    def __init__(
        self,
        path: Path,
        spec: ModelSpec,
        *,
        precision: Precision | str = Precision.auto,
        throughput: bool = False,
        int8: bool = False,
    ):
        ov = import_openvino()
        with signal_stack_kept():
            self._compile(ov, path, precision, throughput)
        self.spec, self.device, self.dtype, self.int8 = spec, "cpu", None, int8
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = "int8" if int8 else {"f32": "fp32"}.get(hint, hint)
        self.path = path
        self._lock = threading.Lock()

    def _compile(self, ov, path: Path, precision, throughput: bool) -> None:
        core = ov.Core()
        blobs = cache_dir() / "openvino-blobs"  # compiled models: a second start compiles in ms
        try:
            blobs.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(blobs)})
        except OSError:
            pass
        config = {"PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY"}
        if throughput:  # (bulk work) the streams share the cores with reader processes: a
            # stream pinned to a core leaves it idle while the reader waits on the other one
            # (+9% for resnet18 128 px on a 2-core Xeon with AMX: README, "On a plain CPU")
            config["ENABLE_CPU_PINNING"] = False
        precision = Precision(precision)
        if precision is not Precision.auto:  # auto: OpenVINO's own (bf16 where the CPU has it)
            config["INFERENCE_PRECISION_HINT"] = "f32" if precision is Precision.fp32 else "bf16"
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        # one request per stream and one more, queued behind them: a stream that finishes
        # starts the next batch at once, while Python collects the last one (no callbacks)
        self.depth = self.streams + 1 if throughput else 1
        self.requests = [self.compiled.create_infer_request() for _ in range(self.depth)]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for request in self.requests:
            self._idle.put(request)

    def submit(self, pixels) -> Running:
        """Start embedding a batch (its pixels copied in: the caller may reuse them at once);
        `.result()` waits for its unit vectors. Waits while `depth` batches are running."""
        x = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))
        request = self._idle.get()
        try:
            with signal_stack_kept():
                request.start_async({0: x})
        except BaseException:
            self._idle.put(request)
            raise
        return Running(request, self._idle)

    def __call__(self, pixels) -> np.ndarray:
        """uint8 NCHW pixels → unit vectors (normalised again here: int8 arithmetic leaves the
        graph's own normalisation a few per cent off), the batch split over the streams."""
        return unit(self._infer(pixels))

    def _infer(self, pixels) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))
        with self._lock:  # one caller's chunks at a time: callers never hold requests crosswise
            running = [self.submit(part) for part in np.array_split(x, min(len(x), self.streams))]
            return np.concatenate([run.output() for run in running])

    def describe(self) -> str:
        """Where and how the model runs, for reports: "cpu (OpenVINO bf16)"."""
        return f"{self.device} (OpenVINO {self.precision})"

    def check(self) -> None:
        """A usable model gives finite vectors of the spec's size, about unit length (exactly
        for fp32; int8 arithmetic is a few per cent off, and __call__ normalises again)."""
        size = self.spec.img_size  # one photo: the shape a query has (a new one costs a plan)
        probe = np.linspace(0, 255, 3 * size * size).astype(np.uint8).reshape(1, 3, size, size)
        out = self._infer(probe)
        norms = np.linalg.norm(out, axis=1) if out.ndim == 2 else np.array([0.0])
        if out.shape != (1, self.spec.out_dim) or not np.isfinite(out).all():
            raise ValueError(f"it gives output of shape {out.shape} or non-finite values")
        if not np.allclose(norms, 1.0, atol=0.2 if self.int8 else UNIT):
            raise ValueError("its vectors are not unit length")


class ExportedDetector(ExportedEncoder):
    """An exported garment detector: uint8 NCHW letterboxed photos → (scores [N, A, types],
    boxes [N, A, 4]), the raw output embedder.boxes.garments reads. Thread-safe."""

    def __call__(self, pixels) -> tuple[np.ndarray, np.ndarray]:
        """Callers in several threads each get a request of their own (with the THROUGHPUT
        hint one per stream, so that photos run side by side); a caller waits for one."""
        x = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))
        request = self._idle.get()
        try:
            with signal_stack_kept():
                request.infer({0: x})
            return (
                np.array(request.get_output_tensor(0).data, np.float32),
                np.array(request.get_output_tensor(1).data, np.float32),
            )
        finally:
            self._idle.put(request)

    def check(self) -> None:
        """A usable detector gives finite scores in [0, 1] and a box for every location."""
        size = self.spec.img_size
        probe = np.linspace(0, 255, 3 * size * size).astype(np.uint8).reshape(1, 3, size, size)
        scores, boxes = self(probe)
        types = len(self.spec.classes)
        if scores.ndim != 3 or scores.shape[2] != types or boxes.shape != (*scores.shape[:2], 4):
            raise ValueError(f"it gives outputs of shapes {scores.shape} and {boxes.shape}")
        if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
            raise ValueError("it gives non-finite values")
        if scores.min() < 0 or scores.max() > 1:
            raise ValueError("its scores are not between 0 and 1")


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


class Running:
    """A batch running on one of an ExportedEncoder's requests."""

    def __init__(self, request, idle: queue.SimpleQueue):
        self.request, self.idle = request, idle  # the pool the request goes back to

    def output(self) -> np.ndarray:
        """The model's raw output (waited for); the request goes back to the pool."""
        try:
            with signal_stack_kept():
                self.request.wait()
            return np.array(self.request.get_output_tensor(0).data, np.float32)
        finally:
            self.idle.put(self.request)

    def result(self) -> np.ndarray:
        return unit(self.output())


def load(
    spec: ModelSpec | DetectorSpec,
    *,
    int8: bool = False,
    precision=Precision.auto,
    throughput: bool = False,
) -> ExportedEncoder | None:
    """The cached exported model (an ExportedDetector for a detector's spec), or None when
    there is none or it is unusable (removed, to be rebuilt). Needs neither torch nor timm."""
    path = exported_path(spec, int8)
    if not path.is_file():
        return None
    kind = ExportedDetector if isinstance(spec, DetectorSpec) else ExportedEncoder
    try:
        _intact(path)
        encoder = kind(path, spec, precision=precision, throughput=throughput, int8=int8)
        encoder.check()
        return encoder
    except Exception as exc:  # a damaged cache entry is rebuilt, not fatal
        log.warning("rebuilding the exported model %s: %s", path, first_line(exc)[:200])
        discard(path)
        return None


def exported_encoder(
    spec: ModelSpec,
    make_model: Callable[[], object],
    *,
    int8: bool = False,
    calibration: Callable[[], Sequence[np.ndarray]] | None = None,
    dataset: str | None = None,
    precision=Precision.auto,
    throughput: bool = False,
) -> ExportedEncoder:
    """The exported model of `spec`: from the cache, else exported from `make_model()` (and,
    for int8, quantised with `calibration()`'s photos, checked, and on `dataset`'s split
    evaluated against fp32) and cached."""
    if (ready := load(spec, int8=int8, precision=precision, throughput=throughput)) is not None:
        return ready
    if load(spec) is None:
        fp32 = exported_path(spec, int8=False, folder=writable_dir())
        log.info("exporting %s to OpenVINO (once; cached in %s)", spec.backbone, fp32.parent)
        export(make_model(), fp32)
    if int8:
        if calibration is None:
            raise ValueError("an int8 model needs calibration photos (--calibration DIR)")
        quantize(spec, calibration(), dataset=dataset)
    encoder = load(spec, int8=int8, precision=precision, throughput=throughput)
    if encoder is None:
        raise ExportError(f"the exported {spec.backbone} model could not be loaded")
    return encoder


def quantize(
    spec: ModelSpec,
    photos: Sequence[np.ndarray],
    held_out: float = 0.4,
    dataset: str | None = None,
    check: bool = True,
) -> dict:
    """int8 by NNCF's post-training quantisation, calibrated on `photos` (uint8 CHW arrays of
    the user's own data); kept only when, on the held-out share of them, its top-20 neighbours
    overlap fp32's by INT8_OVERLAP or more and, where `dataset` has a test (or val) split, its
    top-1 and top-20 accuracy stay within INT8_ACCURACY of fp32's. Returns the figures;
    ExportError, with them, when refused. `check=False` keeps it whatever the figures (for
    timing an untrained model, whose near-identical vectors no int8 model keeps in order)."""
    photos = list(photos)
    if len(photos) < 20:
        raise ValueError(f"int8 calibration needs at least 20 photos, got {len(photos)}")
    split = int(len(photos) * (1 - held_out))
    calibrate, test = photos[:split], np.stack(photos[split:])
    fp32 = exported_path(spec, int8=False)
    int8_path = exported_path(spec, int8=True, folder=writable_dir())
    staging = int8_path.with_name("candidate-" + int8_path.name)
    try:
        _in_child(_nncf_quantize, str(fp32), np.stack(calibrate), str(staging), spec.to_json())
        a = ExportedEncoder(fp32, spec, precision=Precision.fp32, throughput=True)(test)
        b = ExportedEncoder(staging, spec, precision=Precision.fp32, int8=True, throughput=True)(
            test
        )
        figures = {"overlap@20": overlap(a, b, 20), "photos": len(photos), "held_out": len(test)}
        if check and figures["overlap@20"] < INT8_OVERLAP:
            raise ExportError(
                f"the int8 model was refused: its top-20 neighbours overlap fp32's by "
                f"{figures['overlap@20']:.3f} on {len(test)} held-out photos (needs "
                f"{INT8_OVERLAP}); calibrate with more photos of your own data (--calibration)"
            )
        if dataset is not None and check:
            figures.update(_accuracy_check(spec, fp32, staging, dataset))
        for suffix in (".bin", ".json", ".xml"):  # the .xml last: complete
            staging.with_suffix(suffix).replace(int8_path.with_suffix(suffix))
        info = json.loads(int8_path.with_suffix(".json").read_text())
        int8_path.with_suffix(".json").write_text(json.dumps({**info, **figures}, indent=1))
        return figures
    finally:
        discard(staging)


def _in_child(function, *args):
    """Run `function(*args)` in a fresh process: NNCF imports and patches parts of torch when it
    finds it loaded (a later training step in this process then crashed)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _nncf_quantize(fp32: str, calibrate: np.ndarray, out: str, spec_json: str) -> None:
    """NNCF's post-training quantisation of the fp32 model (in a child process)."""
    ov = import_openvino()  # before nncf: no telemetry in the child either
    import nncf

    model = ov.Core().read_model(fp32)
    data = nncf.Dataset(list(calibrate), lambda photo: photo[None])
    quantized = nncf.quantize(
        model, data, subset_size=len(calibrate), preset=nncf.QuantizationPreset.PERFORMANCE
    )
    _save(quantized, Path(out), {"spec": spec_json, "int8": True})


def _accuracy_check(spec: ModelSpec, fp32: Path, int8: Path, dataset: str) -> dict:
    """top-1 and top-20 of fp32 and int8 on `dataset`'s test (else val) split (at most 500
    queries); ExportError when int8 loses more than INT8_ACCURACY. {} without a split."""
    from embedder.evaluate import evaluate, split_sets

    for split in ("test", "val"):
        try:
            queries, gallery = split_sets(dataset, split)
            break
        except ValueError:
            continue
    else:
        log.info("no test or val split in %s: int8 checked by neighbour overlap only", dataset)
        return {}
    queries = queries.head(500)
    gallery = gallery[gallery["item_id"].isin(set(queries["item_id"]))].head(2000)
    found = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        encoder = ExportedEncoder(
            path, spec, precision=Precision.fp32, int8=name == "int8", throughput=True
        )
        report, _ = evaluate(
            encoder, dataset, split=split, ks=(1, 20), workers=0, sets=(queries, gallery)
        )
        found[name] = report.overall
    figures = {
        f"{name} top-{k}": round(v, 4) for name, acc in found.items() for k, v in acc.items()
    }
    worst = max(found["fp32"][k] - found["int8"][k] for k in (1, 20))
    if worst > INT8_ACCURACY:
        raise ExportError(
            "the int8 model was refused: on the " + split + " split it loses "
            f"{worst:.3f} of top-k accuracy ("
            + ", ".join(f"{k} {v}" for k, v in figures.items())
            + f"; at most {INT8_ACCURACY} allowed)"
        )
    return figures


def overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean overlap of each row's top-k neighbours (itself excluded) under two embeddings."""
    k = min(k, len(a) - 1)
    if k < 1:
        return 1.0

    def top(v):
        scores = v @ v.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :k]

    ta, tb = top(a), top(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)]))


def calibration_photos(
    paths: Sequence[str], boxes: Sequence | None, spec: ModelSpec, count: int = 300, storage=None
) -> list[np.ndarray]:
    """Up to `count` photos (seeded sample) decoded as the model sees them; unreadable skipped."""
    from embedder.reader import ImageFiles
    from embedder.storage import LOCAL

    rng = np.random.default_rng(0)
    chosen = rng.permutation(len(paths))[:count] if len(paths) > count else range(len(paths))
    files = ImageFiles(
        [paths[i] for i in chosen],
        [boxes[i] for i in chosen] if boxes else None,
        spec,
        storage=storage or LOCAL,
    ).fetch()
    return [pixels for _, pixels, _ in (files[i] for i in range(len(files))) if pixels is not None]
