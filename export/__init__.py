"""edgevae's export side (PyTorch + ONNX): checkpoint -> verified, calibrated bundle."""

from .bundle import ExportConfig, export_bundle
from edgevae.runtime.errors import ExportError

from .graphs import export_graph
from .parity import graph_parity

__all__ = ["ExportConfig", "ExportError", "export_bundle", "export_graph", "graph_parity"]
