"""AOTInductor export: a .pt2 package that loads and runs with torch alone.

    hmr-fast export --checkpoint C --format aoti --out model.pt2 [--device cuda]
    # anywhere with the same torch, no hmr_fast needed:
    runner = torch._inductor.aoti_load_package("model.pt2")
    rot_mats, betas, cam, joints3d, keypoints2d, vertices = runner(images)

The exported graph is `InferenceModel` with the body model's plain-torch math: the Triton
SMPL ops are registered by hmr_fast at import time, and a package that called them could
not run without hmr_fast; Inductor instead generates its own fused kernels for the same
math (Triton on CUDA, C++ on the CPU). The batch is dynamic in 1..max_batch. The metadata
(img_size, joint_set, body model) is stored inside the package under "hmr_fast"
(hmr_fast.model.artefact); the "aoti" inference backend reads it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from hmr_fast.atomic import atomic_path
from hmr_fast.devices import DTYPES, resolve_device
from hmr_fast.model import InferenceModel, load_checkpoint
from hmr_fast.model.artefact import METADATA_KEY, export_metadata


def package_module(module: torch.nn.Module, example: torch.Tensor, out_path, metadata: dict,
                   max_batch: int = 64) -> Path:
    """torch.export `module` (one tensor in, batch dim 0 dynamic in 1..max_batch) and compile it
    into an AOTInductor package at out_path, written atomically."""
    out_path = Path(out_path)
    if out_path.suffix != ".pt2":
        raise ValueError(f"--out for an AOTInductor package must end in .pt2, got {out_path}")
    if max_batch < 2:
        raise ValueError(f"max_batch must be >= 2 (the batch is a dynamic dimension), got {max_batch}")
    batch = torch.export.Dim("batch", min=1, max=int(max_batch))
    with torch.inference_mode(False), torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    meta = dict(metadata, max_batch=int(max_batch))
    with atomic_path(out_path, suffix=".pt2") as tmp:  # the packager wants a .pt2 name
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp),
            inductor_configs={"aot_inductor.metadata": {METADATA_KEY: json.dumps(meta)}})
    return out_path


def export_aoti(checkpoint, out_path, device="cpu", max_batch: int = 64, precision: str = "fp32") -> Path:
    """Compile a checkpoint's inference graph (see the module docstring) into a .pt2 package."""
    device = resolve_device(device)
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision!r} is for CUDA packages; CPU packages are fp32")
    hmr, config = load_checkpoint(checkpoint, map_location=device)
    model = InferenceModel(hmr, DTYPES[precision], "reference", with_vertices=True).eval()
    size = int(hmr.img_size)
    example = torch.randn(2, 3, size, size, device=device)
    metadata = dict(export_metadata(config), precision=precision, device=device.type)
    return package_module(model, example, out_path, metadata, max_batch)
