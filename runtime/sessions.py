"""The one place that builds onnxruntime sessions, for both graphs."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

from .errors import ProviderError

if TYPE_CHECKING:
    import onnxruntime as ort

# Preferred order for providers="auto": accelerators first, CPU always last.
AUTO_PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)

_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
}

Providers = str | Sequence[str] | None


def onnxruntime() -> ModuleType:
    """The onnxruntime module, imported on first use: the numpy-only parts of the runtime never load it."""
    return importlib.import_module("onnxruntime")


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    return list(onnxruntime().get_available_providers())


def resolve_providers(providers: Providers) -> list[str]:
    """Turn ``"auto"``, a comma-separated string, short names (``cpu``, ``cuda``) or a list into provider names.

    Raises:
        ProviderError: a requested provider is not available in this onnxruntime build.
    """
    available = available_providers()
    if providers is None or providers == "auto" or providers == ["auto"]:
        chosen = [p for p in AUTO_PROVIDER_ORDER if p in available]
        return chosen or ["CPUExecutionProvider"]
    names = providers.split(",") if isinstance(providers, str) else list(providers)
    resolved: list[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        full = _ALIASES.get(name.lower(), name)
        if full not in available:
            raise ProviderError(
                f"execution provider {name!r} is not available in this onnxruntime build; available: "
                f"{', '.join(available)}. Install the matching onnxruntime package (e.g. onnxruntime-gpu) "
                "or use providers='auto'"
            )
        if full not in resolved:
            resolved.append(full)
    if not resolved:
        raise ProviderError(f"no execution provider given; available: {', '.join(available)}")
    return resolved


def create_session(
    model: bytes | str,
    providers: Providers = "auto",
    *,
    threads: int | None = None,
    strict: bool = False,
    name: str = "graph",
) -> ort.InferenceSession:
    """Create an onnxruntime session with deliberate options.

    Args:
        model: serialized ONNX (or ORT) bytes, or a path.
        providers: ``"auto"``, a list of provider names, or a comma-separated string.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        strict: fail when the session did not get every requested provider (auto: the first choice).
        name: used in error messages.

    Raises:
        ProviderError: unavailable provider, or (strict) a provider silently fell back.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 0):
        raise ValueError(f"threads must be a non-negative integer (0 = onnxruntime default), got {threads!r}")
    requested = resolve_providers(providers)
    ort_module = onnxruntime()
    options = ort_module.SessionOptions()
    options.graph_optimization_level = ort_module.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session: ort.InferenceSession = ort_module.InferenceSession(model, sess_options=options, providers=requested)
    got = session.get_providers()
    if strict:
        wanted = requested[:1] if providers in (None, "auto") else requested
        missing = [p for p in wanted if p not in got]
        if missing:
            raise ProviderError(
                f"{name}: requested {', '.join(missing)} but the session runs on {', '.join(got)} "
                "(the provider failed to initialise and onnxruntime fell back); drop strict mode to accept this"
            )
    return session
