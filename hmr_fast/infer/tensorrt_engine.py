"""Running a serialized TensorRT engine on torch CUDA tensors (no pycuda): the "tensorrt"
inference backend. Engines are built by `hmr-fast export --format tensorrt`
(hmr_fast.export.tensorrt). Their SMPL plugins are TensorRT's ahead-of-time kind: the
compiled kernels live inside the engine, so running one needs no plugin registration and
no Python plugin code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from hmr_fast.errors import CheckpointError

INSTALL_HINT = ("TensorRT is not installed. Install it from NVIDIA's index, e.g. "
                "`pip install tensorrt-cu12` (or `pip install 'hmr_fast[trt]'`; the PyPI package downloads the "
                "real wheels from pypi.nvidia.com), on a machine with an NVIDIA GPU and driver. "
                "Without TensorRT use --format onnx (onnxruntime) or --format aoti.")


def require_tensorrt():
    """The tensorrt module, or ImportError with the install hint."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    if not hasattr(trt, "Builder"):  # the PyPI placeholder package that failed to fetch the real one
        raise ImportError(INSTALL_HINT)
    return trt


def _torch_dtype(trt, dtype):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise TypeError(f"unsupported TensorRT tensor type {dtype}")
    return table[dtype]


class EngineRunner:
    """Runs a serialized engine on torch CUDA tensors: runner(images) -> {output name: tensor}.

    Output buffers are allocated per call with torch (so they stay valid after the next
    call); the engine runs on torch's current CUDA stream.
    """

    def __init__(self, engine_path, device="cuda", verbose: bool = False):
        trt = require_tensorrt()
        self.trt = trt
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise FileNotFoundError(f"TensorRT engine {engine_path} not found")
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING))
            try:
                self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
            except Exception as exc:  # some TensorRT versions raise where others return None
                self.engine = None
                reason = " ".join(str(exc).split())[:160]
            else:
                reason = "it returned no engine"
            if self.engine is None:
                raise CheckpointError(f"TensorRT could not load {engine_path} ({reason}): not an engine, or one built "
                                      "by another TensorRT version or for another GPU; rebuild it with "
                                      "`hmr-fast export --format tensorrt`")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if self.inputs != ["images"]:
            raise CheckpointError(f"{engine_path}: expected an engine with one input 'images', found {self.inputs}")
        _min, _opt, max_shape = self.engine.get_tensor_profile_shape("images", 0)
        self.max_batch = int(max_shape[0])

    def __call__(self, images: torch.Tensor) -> dict:
        if images.device != self.device:
            raise ValueError(f"images are on {images.device}, the engine on {self.device}")
        B = images.shape[0]
        if not 1 <= B <= self.max_batch:
            raise ValueError(f"batch {B} is outside this engine's profile 1..{self.max_batch}")
        ctx = self.context
        images = images.contiguous().to(_torch_dtype(self.trt, self.engine.get_tensor_dtype("images")))
        ctx.set_input_shape("images", tuple(images.shape))
        ctx.set_tensor_address("images", images.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            out[name] = torch.empty(shape, dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(name)),
                                    device=self.device)
            ctx.set_tensor_address(name, out[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out
