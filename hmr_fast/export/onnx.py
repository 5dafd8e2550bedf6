"""ONNX export: encoder + IEF + SMPL (vertices, joints, keypoints) with a dynamic batch.

The graph is `InferenceModel` with the body model's plain-torch math (the reference
backend), traced by torch's TorchScript exporter (`dynamo=False`: no onnxscript needed, and
the most predictable graphs for TensorRT's parser). Inputs and outputs:
    images (B, 3, S, S) float32, RGB, ImageNet-normalised
    rot_mats (B, 24, 3, 3), betas (B, 10), cam (B, 3), joints3d (B, J, 3),
    keypoints2d (B, J, 2) normalised crop coordinates, vertices (B, V, 3)
The model's metadata_props["hmr_fast"] holds img_size, joint_set, the body model and the
training config as JSON, so an .onnx file is all the onnxruntime backend needs.
`smpl_graph="plugins"` writes the TensorRT variant whose SMPL is three plugin nodes
(trt_plugins.py) instead of plain ONNX ops.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from hmr_fast.atomic import atomic_path
from hmr_fast.devices import DTYPES
from hmr_fast.errors import CheckpointError
from hmr_fast.model import OUTPUT_NAMES, InferenceModel, load_checkpoint
from hmr_fast.model.artefact import METADATA_KEY, export_metadata, parse_metadata

from .trt_plugins import PLUGIN_DOMAIN, PluginInferenceModel

DEFAULT_OPSET = 17
ONNX_PRECISIONS = ("fp16", "fp32")


def _need_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx package: pip install onnx") from exc
    return onnx


def export_model(model: torch.nn.Module, img_size: int, out_path, metadata: dict, opset: int = DEFAULT_OPSET,
                 custom_opsets=None, example_batch: int = 2) -> Path:
    """Trace `model` (images -> OUTPUT_NAMES) to `out_path` atomically, with a dynamic batch."""
    onnx = _need_onnx()
    out_path = Path(out_path)
    images = torch.randn(example_batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    dynamic = {name: {0: "batch"} for name in ("images",) + OUTPUT_NAMES}
    with atomic_path(out_path) as tmp:
        with warnings.catch_warnings():
            # Tracer warnings about Python ints taken from shapes: the SMPL tree walk uses the
            # kinematic tree's fixed structure on purpose; the batch stays dynamic (tested).
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (images,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic,
                              do_constant_folding=True, custom_opsets=custom_opsets)
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        proto.producer_name = "hmr_fast"
        onnx.save(proto, str(tmp))
    return out_path


def export_onnx(checkpoint, out_path, opset: int = DEFAULT_OPSET, smpl_graph: str = "plain",
                precision: str = "fp32", batch_hint: int = 1) -> Path:
    """Export a checkpoint to ONNX (see the module docstring). Returns the written path.

    precision "fp16" stores and runs the encoder + regressor in float16 (a Cast after the
    float32 input; the body model stays float32): the graph a strongly typed TensorRT FP16
    engine is built from. batch_hint: the batch the plugin kernels' tiles are chosen for.
    """
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be >= {DEFAULT_OPSET}, got {opset}")
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"precision must be one of {list(ONNX_PRECISIONS)}, got {precision!r}")
    hmr, config = load_checkpoint(checkpoint)
    metadata = dict(export_metadata(config), precision=precision, smpl_graph=smpl_graph)
    if smpl_graph == "plain":
        model = InferenceModel(hmr, DTYPES[precision], "reference", with_vertices=True).eval()
        custom = None
    elif smpl_graph == "plugins":
        model = PluginInferenceModel(hmr, batch_hint, DTYPES[precision]).eval()
        custom = {PLUGIN_DOMAIN: 1}
    else:
        raise ValueError(f"smpl_graph must be 'plain' or 'plugins', got {smpl_graph!r}")
    return export_model(model, int(hmr.img_size), out_path, metadata, opset, custom)


def read_metadata(path) -> dict:
    """The hmr_fast metadata of an exported .onnx file; FileNotFoundError when it is missing,
    CheckpointError (naming the file) when it is not an ONNX model or not one of ours."""
    onnx = _need_onnx()
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX model {path} not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, or onnx's checks of a damaged model
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise CheckpointError(f"{path} is not an ONNX model ({reason}); expected an .onnx file written by "
                              "`hmr-fast export --format onnx`") from None
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return parse_metadata(entry.value, path)
    raise CheckpointError(f"{path} has no hmr_fast metadata (not written by `hmr-fast export`)")


@torch.inference_mode()
def verify_onnx(onnx_path, checkpoint, batch_sizes=(1, 3), atol: float = 1e-4, seed: int = 0) -> dict:
    """Largest |onnxruntime - torch eager| per output over random batches; raises when any
    exceeds atol. Torch runs the checkpoint itself (reference SMPL, float32, CPU)."""
    import onnxruntime as ort

    hmr, _ = load_checkpoint(checkpoint)
    model = InferenceModel(hmr, torch.float32, "reference", with_vertices=True).eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    size = int(hmr.img_size)
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    gen = torch.Generator().manual_seed(seed)
    for B in batch_sizes:
        images = torch.randn(B, 3, size, size, generator=gen)
        expected = dict(zip(OUTPUT_NAMES, model(images)))
        got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"images": images.numpy()})))
        for name in OUTPUT_NAMES:
            worst[name] = max(worst[name], float(np.abs(got[name] - expected[name].numpy()).max()))
    bad = {k: v for k, v in worst.items() if not v <= atol}
    if bad:
        raise AssertionError(f"onnxruntime and torch differ by more than {atol}: {bad}")
    return worst
