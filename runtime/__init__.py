"""edgevae's runtime: load a bundle and encode, score and generate with numpy + onnxruntime only.

Never imports torch or onnx. Importing the package loads nothing heavy: each name below is imported from its
module on first use, so ``edgevae.runtime.options``, ``methods``, ``contract`` and ``inputs`` stay usable without
onnxruntime, and onnxruntime is loaded when a session is built. Pillow is imported only when image files are read.

    >>> from edgevae.runtime import load
    >>> model = load("bundle/")
    >>> result = model.score(images)           # uint8 or [0, 1] float, (N, H, W) / (N, C, H, W)
    >>> result.scores, result.p_values, result.is_outlier
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below are, for type checkers; at run time they are imported on first use
    from .bundle import load, read_manifest
    from .contract import InputContract, uint8_to_unit
    from .errors import (
        ArrayInputError,
        BundleError,
        CalibrationError,
        CalibrationWarning,
        EdgeVAEError,
        IDXFormatError,
        ImageReadError,
        ImageSizeError,
        InputError,
        MissingExtraError,
        PathError,
        ProviderError,
        SigningKeyError,
    )
    from .inputs import Batch, iter_batches, read_array_file, read_idx
    from .manifest import SCHEMA_VERSION, Manifest, ScoringSpec
    from .methods import METHODS, SCORE_METHODS, ScoreMethod
    from .model import Model, Posterior, Scorer
    from .runner import GraphInfo, GraphRunner, ThreadPlan, build_runner, thread_plan
    from .scores import (
        ScoreResult,
        TailFit,
        fit_tail,
        kl_divergence,
        log_likelihood,
        p_values,
        threshold_at_fpr,
    )
    from .sessions import AUTO_PROVIDER_ORDER, available_providers, create_session, resolve_providers
    from .signing import SIGNATURE_FILE, TRUSTED_KEYS_ENV, generate_key, sign_bundle

# public name -> the module (relative to this package) that defines it
_HOMES: dict[str, str] = {
    **dict.fromkeys(("load", "read_manifest"), "bundle"),
    **dict.fromkeys(("InputContract", "uint8_to_unit"), "contract"),
    **dict.fromkeys(("ArrayInputError", "BundleError", "CalibrationError", "CalibrationWarning", "EdgeVAEError",
                     "IDXFormatError", "ImageReadError", "ImageSizeError", "InputError", "MissingExtraError",
                     "PathError", "ProviderError", "SigningKeyError"), "errors"),
    **dict.fromkeys(("Batch", "iter_batches", "read_array_file", "read_idx"), "inputs"),
    **dict.fromkeys(("SCHEMA_VERSION", "Manifest", "ScoringSpec"), "manifest"),
    **dict.fromkeys(("METHODS", "SCORE_METHODS", "ScoreMethod"), "methods"),
    **dict.fromkeys(("Model", "Posterior", "Scorer"), "model"),
    **dict.fromkeys(("GraphInfo", "GraphRunner", "ThreadPlan", "build_runner", "thread_plan"), "runner"),
    **dict.fromkeys(("ScoreResult", "TailFit", "fit_tail", "kl_divergence", "log_likelihood", "p_values",
                     "threshold_at_fpr"), "scores"),
    **dict.fromkeys(("AUTO_PROVIDER_ORDER", "available_providers", "create_session", "resolve_providers"), "sessions"),
    **dict.fromkeys(("SIGNATURE_FILE", "TRUSTED_KEYS_ENV", "generate_key", "sign_bundle"), "signing"),
}

__all__ = ["AUTO_PROVIDER_ORDER", "ArrayInputError", "Batch", "BundleError", "CalibrationError",
    "CalibrationWarning", "EdgeVAEError", "GraphInfo", "GraphRunner", "IDXFormatError", "ImageReadError",
    "ImageSizeError", "InputContract", "InputError", "METHODS", "Manifest", "MissingExtraError", "Model",
    "PathError", "Posterior", "ProviderError", "SCHEMA_VERSION", "SCORE_METHODS", "SIGNATURE_FILE", "ScoreMethod",
    "ScoreResult", "Scorer", "ScoringSpec", "SigningKeyError", "TRUSTED_KEYS_ENV", "TailFit", "ThreadPlan",
    "available_providers", "build_runner", "create_session", "fit_tail", "generate_key", "iter_batches",
    "kl_divergence", "load", "log_likelihood", "p_values", "read_array_file", "read_idx", "read_manifest",
    "resolve_providers", "sign_bundle", "thread_plan", "threshold_at_fpr", "uint8_to_unit"]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'edgevae.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
