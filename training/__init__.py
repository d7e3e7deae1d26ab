"""edgevae's training side (PyTorch): the VAE, data sources, the ELBO loop and checkpoints.

Submodules import torch; ``edgevae.training.data`` and ``holdout`` need numpy only.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DataSpec": "data", "embedded_split": "data", "load_images": "data",
    "VAE": "model", "ModelConfig": "model",
    "TrainConfig": "loop", "TrainResult": "loop", "train": "loop", "load_checkpoint": "loop",
    "run_holdout": "loop", "Holdout": "holdout", "Checkpoint": "loop", "IN_MEMORY": "data",
    "kl_divergence": "objectives", "log_likelihood": "objectives", "negative_elbo": "objectives",
    "score": "objectives", "write_samples": "samples",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgevae.training' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"edgevae.training.{module}"), name)
