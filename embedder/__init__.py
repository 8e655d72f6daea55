"""embedder: turns images into 512-d L2-normalised vectors (model, transforms, catalog, training).

Names are imported lazily so that the CLIs start (and answer --help) without importing torch.
"""

import importlib

_EXPORTS = {
    "read_catalog": "catalog",
    "read_pairs": "catalog",
    "load_checkpoint": "model",
    "read_metadata": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Encoder": "inference",
    "embed_batches": "inference",
    "embed_files": "inference",
    "EmbeddingNet": "model",
    "ModelSpec": "spec",
    "WeightsError": "errors",
    "build_model": "model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"embedder.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'embedder' has no attribute {name!r}")
