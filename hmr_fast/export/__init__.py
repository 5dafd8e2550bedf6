"""Export a checkpoint to ONNX, TensorRT (with the SMPL Triton kernels as plugins) or AOTInductor.

The modules import their optional dependencies (onnx, tensorrt, triton) only when a
function needs them.
"""
from .aoti import export_aoti
from .onnx import export_onnx
from .tensorrt import build_engine as export_tensorrt

__all__ = ["export_onnx", "export_tensorrt", "export_aoti"]
