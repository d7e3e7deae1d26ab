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
    CalibrationError,
    CalibrationWarning,
    EdgeVAEError,
    IDXFormatError,
    ImageReadError,
    ImageSizeError,
    InputError,
    PathError,
    ProviderError,
)
from .bundle import load, read_manifest
from .inputs import Batch, iter_batches, read_array_file, read_idx
from .manifest import SCHEMA_VERSION, Manifest, ScoringSpec
from .model import Model, Posterior, Scorer
from .runner import GraphInfo, GraphRunner, ThreadPlan, build_runner, thread_plan
from edgevae.options import SCORE_METHODS

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
from .signing import SIGNATURE_FILE, TRUSTED_KEYS_ENV, MissingExtraError, SigningKeyError, generate_key, sign_bundle

__all__ = [
    "AUTO_PROVIDER_ORDER", "ArrayInputError", "Batch", "BundleError", "CalibrationError", "CalibrationWarning", "EdgeVAEError", "GraphInfo", "GraphRunner",
    "IDXFormatError", "ImageReadError", "MissingExtraError", "SIGNATURE_FILE", "SigningKeyError", "TRUSTED_KEYS_ENV",
    "generate_key", "sign_bundle", "ImageSizeError", "InputContract", "InputError", "PathError", "Manifest",
    "Model", "Posterior", "ProviderError", "Scorer", "ScoringSpec", "ThreadPlan",
    "SCHEMA_VERSION", "SCORE_METHODS", "ScoreResult", "TailFit", "available_providers", "build_runner",
    "create_session", "fit_tail", "iter_batches", "thread_plan",
    "kl_divergence", "load", "log_likelihood", "p_values", "read_array_file", "read_idx", "read_manifest",
    "resolve_providers", "threshold_at_fpr", "uint8_to_unit",
]
