"""edgevae's runtime: load a bundle and encode, score and generate with numpy + onnxruntime only.

Never imports torch or onnx. Pillow is imported lazily, only when image files are read.

    >>> from edgevae.runtime import load
    >>> model = load("bundle/")
    >>> result = model.score(images)           # uint8 or [0, 1] float, (N, H, W) / (N, C, H, W)
    >>> result.scores, result.p_values, result.is_outlier
"""

from .contract import InputContract, uint8_to_unit
from .errors import (
    ArrayInputError,
    BundleError,
    EdgeVAEError,
    IDXFormatError,
    ImageReadError,
    ImageSizeError,
    InputError,
    PathError,
    ProviderError,
)
from .inputs import Batch, iter_batches, read_array_file, read_idx
from .manifest import SCHEMA_VERSION, Manifest
from .model import GraphInfo, Model, load, read_manifest
from .scores import (
    SCORE_METHODS,
    ScoreResult,
    TailFit,
    fit_tail,
    kl_divergence,
    log_likelihood,
    p_values,
    threshold_at_fpr,
)
from .sessions import AUTO_PROVIDER_ORDER, available_providers, create_session, resolve_providers

__all__ = [
    "AUTO_PROVIDER_ORDER", "ArrayInputError", "Batch", "BundleError", "EdgeVAEError", "GraphInfo",
    "IDXFormatError", "ImageReadError", "ImageSizeError", "InputContract", "InputError", "PathError", "Manifest",
    "Model", "ProviderError",
    "SCHEMA_VERSION", "SCORE_METHODS", "ScoreResult", "TailFit", "available_providers", "create_session",
    "fit_tail", "iter_batches",
    "kl_divergence", "load", "log_likelihood", "p_values", "read_array_file", "read_idx", "read_manifest",
    "resolve_providers", "threshold_at_fpr", "uint8_to_unit",
]
