"""hmr_fast.kernels: the SMPL math as fused Triton kernels, forward and backward.

Public API:
- `triton_usable(device) -> (bool, reason)`: can the kernels run on this device here?
- `smpl_forward(layer, betas, full_pose, transl, pose2rot, return_verts, joint_set)`:
  what `SMPL(backend="triton")` calls; (vertices or None, joints, rot_mats).
- `smpl_joints_projected(layer, betas, full_pose, transl, cam, pose2rot, joint_set)`:
  the training path, joints and HMR keypoints from the support vertices only.
- `rodrigues(axis_angle)`, `rot6d_to_rotmat(x)`: the rotation maps as ops.
- `prepare(layer, sparse=None)`: build (or force) the layer's kernel-side cache.
- `set_gemm_precision(p)`, `get_gemm_precision()`, `gemm_precision(p)` (context manager):
  "ieee" (default), "tf32x3", "tf32" or "bf16" for the corrective GEMM; a layer attribute
  `gemm_precision` overrides the process-wide setting.
The ops are registered under `torch.ops.hmr_fast` (see each module). Kernels run on CUDA
tensors, or on CPU tensors under TRITON_INTERPRET=1 (set before triton is first imported).
"""
from __future__ import annotations

import torch

from ._common import GEMM_PRECISIONS, HAVE_TRITON, gemm_precision, get_gemm_precision, set_gemm_precision
from ._common import check_device as _check_device
from ._common import usable as _usable

_usable_cache: dict = {}


def triton_usable(device) -> tuple:
    """(True, "") when the Triton kernels can run on `device` here, else (False, the reason)."""
    device = torch.device(device)
    if torch.compiler.is_compiling():  # decided when the eager code first asked
        return _usable_cache.get(device.type, (device.type == "cuda" and HAVE_TRITON, ""))
    result = _usable(device)
    _usable_cache[device.type] = result
    return result


if HAVE_TRITON:
    from .rotations import rodrigues_op as _rodrigues_op  # noqa: F401  (registers the ops)
    from .rotations import rot6d_op as _rot6d_op  # noqa: F401
    from .smpl_fused import prepare, smpl_forward, smpl_joints_projected

    def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
        """(..., 3) axis-angle -> (..., 3, 3) rotation matrices (differentiable; finite at 0 and pi)."""
        _check_device(axis_angle)
        return torch.ops.hmr_fast.rodrigues(axis_angle)

    def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
        """(..., 6) SPIN 6D rotation -> (..., 3, 3) rotation matrices (differentiable)."""
        _check_device(x)
        return torch.ops.hmr_fast.rot6d_to_rotmat(x)

else:  # pragma: no cover - platforms without triton

    def _missing(*args, **kwargs):
        raise RuntimeError("hmr_fast.kernels needs triton, which is not installed here")

    prepare = smpl_forward = smpl_joints_projected = rodrigues = rot6d_to_rotmat = _missing

__all__ = ["triton_usable", "smpl_forward", "smpl_joints_projected", "rodrigues", "rot6d_to_rotmat", "prepare",
           "set_gemm_precision", "get_gemm_precision", "gemm_precision", "GEMM_PRECISIONS"]
