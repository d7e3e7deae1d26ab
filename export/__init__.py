"""edgevae's export side (PyTorch + ONNX): checkpoint -> verified, calibrated bundle."""

from .bundle import ExportConfig, ExportError, export_bundle, export_graph, parity

__all__ = ["ExportConfig", "ExportError", "export_bundle", "export_graph", "parity"]
