"""edgevae: variational autoencoders for outlier detection and generation on the edge.

Subpackages: ``edgevae.runtime`` (numpy + onnxruntime), ``edgevae.training`` (PyTorch),
``edgevae.export`` (PyTorch + ONNX), and the command line in ``edgevae.cli``.
"""

__version__ = "0.1.0"
