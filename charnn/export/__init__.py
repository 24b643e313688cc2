"""Taking a trained model out of Python: `export_html` writes one self-contained playground page (the model and a
JavaScript forward step; runs offline in a browser), `export_onnx` an ONNX step model for onnxruntime. The page
reads the model's own cell layout table (`charnn.shapes.CELLS`, embedded as `CELL_LAYOUT`). The CLI's
`charnn export` wraps these two functions.
"""

from charnn.export.html import build_page, export_html
from charnn.export.onnx import MissingExtraError, export_onnx, onnx_bytes
from charnn.export.output import ExportTargetError
from charnn.export.spec import CELL_LAYOUT, PRECISIONS

__all__ = [
    "CELL_LAYOUT",
    "PRECISIONS",
    "ExportTargetError",
    "MissingExtraError",
    "build_page",
    "export_html",
    "export_onnx",
    "onnx_bytes",
]
