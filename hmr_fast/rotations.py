"""Rotation maps, in torch (differentiable, batched) and numpy forms side by side.

- axis-angle -> matrix: `rodrigues` (torch); `rotmat_to_axis_angle` goes back (numpy).
- SPIN's continuous 6D representation (Zhou et al. 2019): the first two columns of the
  matrix, interleaved row by row as a (3, 2) block. `rotmat_to_6d` takes them,
  `rot6d_to_rotmat` (torch) and `rot6d_to_rotmat_np` (numpy) rebuild the matrix by
  Gram-Schmidt.
The torch forms are also the twins the rotation kernels (hmr_fast.kernels) are held to.
"""
from __future__ import annotations

import numpy as np
import torch

# Below this squared angle, sin(t)/t and (1 - cos t)/t^2 come from their Taylor series: the
# closed forms lose all precision there, and their gradients are 0/0 at exactly zero.
_SMALL_ANGLE_SQ = 1e-6


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3): R = I + a K + b K^2.

    K is the cross-product matrix of the (unnormalised) axis-angle vector, a = sin(t)/t,
    b = (1 - cos t)/t^2. Exact, with finite gradients, at t = 0 and near pi.
    """
    theta_sq = (axis_angle * axis_angle).sum(-1, keepdim=True)
    small = theta_sq < _SMALL_ANGLE_SQ
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = safe_sq.sqrt()
    a = torch.where(small, 1 - theta_sq / 6 + theta_sq**2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24 + theta_sq**2 / 720, (1 - torch.cos(theta)) / safe_sq)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """SPIN's 6D rotation (..., 6) -> rotation matrices (..., 3, 3), by Gram-Schmidt."""
    cols = x.unflatten(-1, (3, 2))
    a1, a2 = cols[..., 0], cols[..., 1]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def rot6d_to_rotmat_np(six: np.ndarray) -> np.ndarray:
    """`rot6d_to_rotmat` for numpy arrays (..., 6) -> (..., 3, 3)."""
    cols = six.reshape(*six.shape[:-1], 3, 2)
    a1, a2 = cols[..., 0], cols[..., 1]
    b1 = a1 / np.maximum(np.linalg.norm(a1, axis=-1, keepdims=True), 1e-12)
    a2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 = a2 / np.maximum(np.linalg.norm(a2, axis=-1, keepdims=True), 1e-12)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-1)


def rotmat_to_6d(rot_mats):
    """(..., 3, 3) -> (..., 6): the first two columns, interleaved row by row (torch or numpy)."""
    return rot_mats[..., :2].reshape(*rot_mats.shape[:-2], 6)


def rotmat_to_axis_angle(rot_mats: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle (numpy, float64)."""
    from scipy.spatial.transform import Rotation

    shape = rot_mats.shape[:-2]
    flat = np.asarray(rot_mats, dtype=np.float64).reshape(-1, 3, 3)
    return Rotation.from_matrix(flat).as_rotvec().reshape(*shape, 3)
