"""Inference backends: one interface over eager torch, torch.compile, onnxruntime, TensorRT
and AOTInductor packages.

Every backend maps normalised crops (B, 3, S, S) float32 on its device to the same named
outputs (OUTPUT_NAMES), as torch tensors on that device:
    rot_mats (B, 24, 3, 3)  betas (B, 10)  cam (B, 3)  joints3d (B, J, 3)
    keypoints2d (B, J, 2) normalised crop coordinates  vertices (B, V, 3) (or None)
and carries the few facts the Predictor needs: img_size, joint_set, smpl_model, device.
`InferenceModel` is the graph all of them run (exported ones run a frozen copy of it).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from hmr_fast.atomic import atomic_path
from hmr_fast.body import reference

OUTPUT_NAMES = ("rot_mats", "betas", "cam", "joints3d", "keypoints2d", "vertices")
BACKENDS = ("auto", "torch", "compiled", "onnxruntime", "tensorrt", "aoti")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EXPORT_FORMAT = "hmr_fast.export/1"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class InferenceModel(nn.Module):
    """HMR for inference: encoder -> IEF (all iterations, last kept) -> one SMPL forward
    with vertices and the joint set -> weak-perspective keypoints.

    HMR.forward poses the body twice when vertices are wanted (joints-only for the losses,
    then the mesh); here one forward gives both. `dtype` is the encoder + regressor's
    compute type; the body model always runs in float32 (its sums need the mantissa).
    smpl_impl: "layer" calls the SMPL module (the fused Triton kernels on CUDA),
    "reference" calls the plain-torch math directly (what ONNX and AOTInductor export).
    """

    def __init__(self, hmr, dtype: torch.dtype = torch.float32, smpl_impl: str = "layer",
                 with_vertices: bool = True):
        super().__init__()
        if smpl_impl not in ("layer", "reference"):
            raise ValueError(f"smpl_impl must be 'layer' or 'reference', got {smpl_impl!r}")
        self.encoder = hmr.encoder.to(dtype)
        self.regressor = hmr.regressor.to(dtype)
        self.smpl = hmr.smpl
        self.joint_set = hmr.joint_set
        self.img_size = hmr.img_size
        self.dtype = dtype
        self.smpl_impl = smpl_impl
        self.with_vertices = with_vertices

    def forward(self, images: torch.Tensor):
        theta = self.regressor(self.encoder(images.to(self.dtype)))[-1]
        cam, rot_mats, betas = self.regressor.split(theta.float())
        if self.smpl_impl == "reference":
            vertices, joints = reference.smpl_forward(self.smpl, betas, rot_mats, None, self.with_vertices,
                                                      self.joint_set)
        else:
            out = self.smpl(betas=betas, global_orient=rot_mats[:, :1], body_pose=rot_mats[:, 1:], pose2rot=False,
                            return_verts=self.with_vertices, joint_set=self.joint_set)
            vertices, joints = out.vertices, out.joints
        keypoints = reference.project_weak_perspective(joints, cam)
        return rot_mats, betas, cam, joints, keypoints, vertices


def load_hmr(checkpoint, device="cpu"):
    """(HMR in eval mode, its config dict) from an hmr_fast checkpoint."""
    from hmr_fast.model import load_checkpoint

    return load_checkpoint(checkpoint, map_location=torch.device(device))


def export_metadata(config: dict) -> dict:
    """What an exported graph needs besides its weights: the crop size, joint set, body model."""
    model = config["model"]
    return {"format": EXPORT_FORMAT, "img_size": int(model["img_size"]), "joint_set": model["joint_set"],
            "smpl_model": model.get("smpl_model"), "backbone": model["backbone"],
            "output_names": list(OUTPUT_NAMES), "config": config}


def write_sidecar(path, metadata: dict) -> Path:
    """PATH.json beside an engine or package (TensorRT engines carry no metadata of their own)."""
    sidecar = Path(str(path) + ".json")
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(metadata, indent=1) + "\n")
    return sidecar


def read_sidecar(path) -> dict:
    sidecar = Path(str(path) + ".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} not found: `hmr-fast export` writes it beside {path} "
                                "(img_size, joint_set, body model); keep the two together")
    meta = json.loads(sidecar.read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{sidecar} is not hmr_fast export metadata (format {EXPORT_FORMAT!r} expected)")
    return meta


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device (CPU convolutions in fp16 are not supported); "
                         "use 'fp32' or 'bf16'")
    return precision


class Backend:
    """Base class: subclasses set the attributes and implement `run`."""

    name = "backend"
    img_size: int
    joint_set: str
    smpl_model: Optional[str] = None
    device: torch.device = torch.device("cpu")
    max_batch: Optional[int] = None  # None: any batch size
    returns_vertices = True

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
            hmr, config = load_hmr(checkpoint, self.device)
        self.config = config
        self.img_size = int(hmr.img_size)
        self.joint_set = hmr.joint_set
        self.smpl_model = config["model"].get("smpl_model")
        self.returns_vertices = with_vertices
        self.model = InferenceModel(hmr, _DTYPES[self.precision], "layer", with_vertices).eval()
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
        exist before tracing (kernels/smpl_forward.py), so run one eager batch now."""
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
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("hmr_fast") is None:
            raise ValueError(f"{path} has no hmr_fast metadata: export it with `hmr-fast export --format onnx`")
        info = json.loads(meta["hmr_fast"])
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
        from hmr_fast.export.tensorrt import EngineRunner

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"backend 'tensorrt' runs on a CUDA device, got {self.device}")
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
        from hmr_fast.export.aoti import load_package

        self.device = torch.device(device)
        self.module, meta = load_package(path, self.device)
        self.img_size = int(meta["img_size"])
        self.joint_set = meta["joint_set"]
        self.smpl_model = meta.get("smpl_model")
        self.max_batch = meta.get("max_batch")

    @torch.inference_mode()
    def run(self, images):
        return self._named(self.module(images.float().contiguous()))


def backend_for_path(path) -> str:
    """The backend a file's type implies: .onnx, .engine/.plan, .pt2, else a checkpoint."""
    suffix = Path(str(path)).suffix.lower()
    return {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt",
            ".pt2": "aoti"}.get(suffix, "checkpoint")


def make_backend(checkpoint, backend: str = "auto", device=None, precision: str = "auto",
                 with_vertices: bool = True, max_batch: int = 64, threads: Optional[int] = None) -> Backend:
    """The backend `name` for `checkpoint` (a checkpoint, .onnx, .engine or .pt2 file).
    threads: onnxruntime's CPU threads (torch's are process-wide: torch.set_num_threads)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for, but torch sees no CUDA device here")
    kind = backend_for_path(checkpoint)
    if backend == "auto":
        backend = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "aoti": "aoti"}.get(
            kind, "compiled" if device.type == "cuda" else "torch")
    file_backends = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "aoti": "aoti"}
    if backend in file_backends.values() and kind != backend:
        raise ValueError(f"backend {backend!r} needs its exported file (run `hmr-fast export` first); "
                         f"got {checkpoint}")
    if backend in ("torch", "compiled") and kind != "checkpoint":
        raise ValueError(f"backend {backend!r} runs an hmr_fast checkpoint, got the exported file {checkpoint}")
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
