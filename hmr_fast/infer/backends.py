"""Inference backends: one interface over eager torch, torch.compile, onnxruntime, TensorRT
and AOTInductor packages.

Every backend maps normalised crops (B, 3, S, S) float32 on its device to the same named
outputs (hmr_fast.model.OUTPUT_NAMES), as torch tensors on that device:
    rot_mats (B, 24, 3, 3)  betas (B, 10)  cam (B, 3)  joints3d (B, J, 3)
    keypoints2d (B, J, 2) normalised crop coordinates  vertices (B, V, 3) (or None)
and carries the few facts the Predictor needs: img_size, joint_set, smpl_model, device.
All of them run `hmr_fast.model.InferenceModel` (exported ones a frozen copy of it); what an
exported file carries besides its weights is hmr_fast.model.artefact's.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Optional

import torch

from hmr_fast.devices import DTYPES, resolve_device, resolve_precision
from hmr_fast.errors import CheckpointError, UsageError
from hmr_fast.model import OUTPUT_NAMES, InferenceModel, load_checkpoint
from hmr_fast.model.artefact import METADATA_KEY, backend_for_path, parse_metadata, read_sidecar

from .tensorrt_engine import EngineRunner

BACKENDS = ("auto", "torch", "compiled", "onnxruntime", "tensorrt", "aoti")


class Backend:
    """Base class: subclasses set the attributes and implement `run`."""

    name = "backend"
    img_size: int
    joint_set: str
    smpl_model: Optional[str] = None
    device: torch.device = torch.device("cpu")
    max_batch: Optional[int] = None  # None: any batch size

    def run(self, images: torch.Tensor) -> dict:
        raise NotImplementedError

    def _named(self, outputs) -> dict:
        return dict(zip(OUTPUT_NAMES, outputs))


class TorchBackend(Backend):
    """Eager PyTorch: the reference path, and the fallback everywhere."""

    name = "torch"

    def __init__(self, checkpoint, device, precision="auto", with_vertices=True, hmr=None, config=None):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        if hmr is None:
            hmr, config = load_checkpoint(checkpoint, map_location=self.device)
        self.config = config
        self.img_size = int(hmr.img_size)
        self.joint_set = hmr.joint_set
        self.smpl_model = config["model"].get("smpl_model")
        self.model = InferenceModel(hmr, DTYPES[self.precision], None, with_vertices).eval()
        if self.device.type == "cuda":
            self.model.encoder.to(memory_format=torch.channels_last)
        self.faces = hmr.smpl.faces

    @torch.inference_mode()
    def run(self, images):
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return self._named(self.model(images))


def batch_buckets(max_batch: int) -> tuple:
    """1, 2, 4, ... up to max_batch (included): the static shapes compiled graphs are built for."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return tuple(sizes + [max_batch])


class CompiledBackend(TorchBackend):
    """torch.compile of the inference graph: Inductor-fused encoder in bf16/fp16, the SMPL
    Triton ops as single graph nodes, and CUDA graphs ("reduce-overhead") on the GPU.

    Batches are padded up to a power of two (<= max_batch), so each size compiles once and
    replays as one CUDA graph; outputs are copied out of the graph's static buffers before
    the next replay can overwrite them. On the CPU it compiles with Inductor's C++ backend
    and no CUDA graphs (slow to compile; meant for CUDA).
    """

    name = "compiled"

    def __init__(self, checkpoint, device, precision="auto", with_vertices=True, max_batch=64, cuda_graphs=True,
                 hmr=None, config=None):
        super().__init__(checkpoint, device, precision, with_vertices, hmr, config)
        self.max_batch = int(max_batch)
        self.buckets = batch_buckets(self.max_batch)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        if self.device.type == "cuda":
            self._prepare_kernels()
        mode = "reduce-overhead" if self.cuda_graphs else "default"
        self.compiled = torch.compile(self.model, mode=mode, dynamic=False)

    def _prepare_kernels(self):
        """The Triton SMPL ops cache a re-laid copy of the body model on first use; that must
        exist before tracing (hmr_fast.kernels.prepare), so run one eager batch now."""
        with torch.inference_mode():
            self.model(torch.zeros(1, 3, self.img_size, self.img_size, device=self.device))

    def warmup(self, sizes=None):
        """Compile (and capture) the given batch sizes now instead of on first use."""
        for b in sizes or self.buckets:
            self.run(torch.zeros(b, 3, self.img_size, self.img_size, device=self.device))

    @torch.inference_mode()
    def run(self, images):
        B = images.shape[0]
        size = next((b for b in self.buckets if b >= B), None)
        if size is None:
            raise ValueError(f"batch of {B} is larger than this compiled backend's max_batch {self.max_batch}")
        if size != B:
            images = torch.cat([images, images.new_zeros((size - B, *images.shape[1:]))])
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        outputs = self.compiled(images)
        return self._named(None if t is None else t[:B].clone() for t in outputs)


class OnnxRuntimeBackend(Backend):
    """An exported .onnx graph in onnxruntime (CUDA execution provider when asked and present)."""

    name = "onnxruntime"

    def __init__(self, path, device="cpu", threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime "
                              "(or onnxruntime-gpu)") from exc
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} not found")
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("onnxruntime here has no CUDAExecutionProvider (pip install onnxruntime-gpu), "
                                   "or run the onnxruntime backend with device='cpu'")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        # No busy-waiting between runs: spinning workers would starve the video pipeline's
        # decoder, encoder and rendering threads (on 2 cores it cut the video FPS by 2.5x).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
            meta = self.session.get_modelmeta().custom_metadata_map
        except Exception as exc:  # onnxruntime's own types (InvalidProtobuf, Fail, ...): all mean "not a model"
            raise CheckpointError(f"{path} is not an ONNX model onnxruntime can load ({_first_line(exc)}); expected "
                                  "an .onnx file written by `hmr-fast export --format onnx`") from None
        if meta.get(METADATA_KEY) is None:
            raise CheckpointError(f"{path} is an ONNX model without hmr_fast metadata: export it with "
                                  "`hmr-fast export --format onnx`")
        info = parse_metadata(meta[METADATA_KEY], path)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        missing = [name for name in OUTPUT_NAMES if name != "vertices" and name not in outputs]
        if inputs != ["images"] or missing:
            raise CheckpointError(f"{path}: the ONNX graph has inputs {inputs} and outputs {outputs}; expected the "
                                  f"input ['images'] and the outputs {list(OUTPUT_NAMES)}")
        self.img_size = int(info["img_size"])
        self.joint_set = info["joint_set"]
        self.smpl_model = info.get("smpl_model")
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images):
        feed = {"images": images.detach().float().cpu().numpy()}
        arrays = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        return {name: torch.from_numpy(arrays[name]).to(self.device) if name in arrays else None
                for name in OUTPUT_NAMES}


class TensorRTBackend(Backend):
    """A serialized TensorRT engine (`hmr-fast export --format tensorrt`), run by EngineRunner."""

    name = "tensorrt"

    def __init__(self, path, device="cuda"):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise UsageError(f"backend 'tensorrt' runs on a CUDA device, got {self.device}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"TensorRT engine {path} not found")
        meta = read_sidecar(path)
        self.runner = EngineRunner(path, self.device)
        self.img_size = int(meta["img_size"])
        self.joint_set = meta["joint_set"]
        self.smpl_model = meta.get("smpl_model")
        self.max_batch = self.runner.max_batch

    def run(self, images):
        outputs = self.runner(images.float().contiguous())
        return {name: outputs.get(name) for name in OUTPUT_NAMES}


class AOTIBackend(Backend):
    """An AOTInductor package (.pt2) from `hmr-fast export --format aoti`."""

    name = "aoti"

    def __init__(self, path, device="cpu"):
        self.device = torch.device(device)
        self.module, meta = load_package(path, self.device)
        self.img_size = int(meta["img_size"])
        self.joint_set = meta["joint_set"]
        self.smpl_model = meta.get("smpl_model")
        self.max_batch = meta.get("max_batch")

    @torch.inference_mode()
    def run(self, images):
        return self._named(self.module(images.float().contiguous()))


def load_package(path, device=None):
    """(runner, metadata) of an AOTInductor package written by `hmr-fast export --format aoti`.

    A .pt2 package holds compiled native code, which runs when it is loaded: load only packages
    you exported yourself. The archive is checked first (a zip with an AOTInductor model and
    hmr_fast metadata), so random bytes or another file with this suffix give CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AOTInductor package {path} not found")
    expected = "expected a .pt2 package written by `hmr-fast export --format aoti`"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception as exc:  # BadZipFile, or zipfile's other complaints about damaged archives
        raise CheckpointError(f"{path} is not an AOTInductor package: not a readable zip archive "
                              f"({_first_line(exc)}); {expected}") from None
    if not any("/data/aotinductor/" in f"/{name}" for name in names):
        listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise CheckpointError(f"{path} is a zip archive without an AOTInductor model (data/aotinductor/; found "
                              f"{len(names)} entries: {listed or 'none'}); {expected}")
    try:
        runner = torch._inductor.aoti_load_package(str(path))
        meta = runner.get_metadata() if hasattr(runner, "get_metadata") else {}
    except Exception as exc:  # torch's loader: a damaged archive, a library built for another torch
        raise CheckpointError(f"{path}: AOTInductor cannot load this package ({_first_line(exc)}); "
                              f"{expected}, with this torch version") from None
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise CheckpointError(f"{path} has no hmr_fast metadata (not written by `hmr-fast export --format aoti`)")
    info = parse_metadata(meta[METADATA_KEY], path)
    if device is not None and torch.device(device).type != info.get("device", "cpu"):
        raise CheckpointError(f"{path} was compiled for {info.get('device')!r}, not {torch.device(device).type!r}: "
                              "export it again with --device")
    return runner, info


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's message as one short line (the libraries' messages span many)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return "unreadable" if "weights_only" in text else text


def make_backend(checkpoint, backend: str = "auto", device=None, precision: str = "auto",
                 with_vertices: bool = True, max_batch: int = 64, threads: Optional[int] = None) -> Backend:
    """The backend `name` for `checkpoint` (a checkpoint, .onnx, .engine or .pt2 file).
    threads: onnxruntime's CPU threads (torch's are process-wide: torch.set_num_threads)."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = resolve_device(device)
    kind = backend_for_path(checkpoint)
    if backend == "auto":
        backend = kind if kind != "checkpoint" else ("compiled" if device.type == "cuda" else "torch")
    if backend not in ("torch", "compiled") and kind != backend:
        raise UsageError(f"backend {backend!r} needs its exported file (run `hmr-fast export` first); "
                         f"got {checkpoint}")
    if backend in ("torch", "compiled") and kind != "checkpoint":
        raise UsageError(f"backend {backend!r} runs an hmr_fast checkpoint, got the exported file {checkpoint}")
    if backend == "torch":
        return TorchBackend(checkpoint, device, precision, with_vertices)
    if backend == "compiled":
        if device.type != "cuda":
            warnings.warn("backend 'compiled' on the CPU: Inductor's C++ backend, no CUDA graphs; "
                          "compiling takes minutes", stacklevel=2)
        return CompiledBackend(checkpoint, device, precision, with_vertices, max_batch)
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(checkpoint, device, threads)
    if backend == "tensorrt":
        return TensorRTBackend(checkpoint, device)
    return AOTIBackend(checkpoint, device)
