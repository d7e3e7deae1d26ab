"""edgevae: variational autoencoders for outlier detection and generation on the edge.

Subpackages: ``edgevae.runtime`` (numpy + onnxruntime), ``edgevae.training`` (PyTorch),
``edgevae.export`` (PyTorch + ONNX), the command line in ``edgevae.cli``, and ``edgevae.OutlierVAE``, a
scikit-learn-style detector over all of them.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``edgevae.OutlierVAE``, imported on first use so that ``import edgevae`` stays light."""
    if name == "OutlierVAE":
        from .estimator import OutlierVAE

        return OutlierVAE
    raise AttributeError(f"module 'edgevae' has no attribute {name!r}")
