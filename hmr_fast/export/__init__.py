"""Export a checkpoint to ONNX, TensorRT (with the SMPL Triton kernels as plugins) or AOTInductor.

Functions import their heavy dependencies (onnx, tensorrt, triton) only when called.
"""


def export_onnx(*args, **kwargs):
    from .onnx import export_onnx as impl

    return impl(*args, **kwargs)


def export_tensorrt(*args, **kwargs):
    from .tensorrt import build_engine

    return build_engine(*args, **kwargs)


def export_aoti(*args, **kwargs):
    from .aoti import export_aoti as impl

    return impl(*args, **kwargs)


__all__ = ["export_onnx", "export_tensorrt", "export_aoti"]
