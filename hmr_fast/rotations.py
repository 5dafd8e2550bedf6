"""Rotation maps, in torch (differentiable, batched) and numpy forms side by side.

- axis-angle -> matrix: `rodrigues` (torch); `rotmat_to_axis_angle` goes back (numpy),
  `rotmat_to_axis_angle_torch` too (torch, no gradient needed).
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


def rotmat_to_axis_angle_torch(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3) in torch: the twin of
    `rotmat_to_axis_angle` (scipy), which costs as much as the keypoint initializer's network
    (6 ms for 64 people's 1536 matrices on one thread). Through the quaternion, taken from
    the best conditioned of Shepperd's four formulas, w >= 0 so the angle is in [0, pi]."""
    m = R.flatten(-2)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    two_q = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                         1 - m00 - m11 + m22], -1).clamp(min=0).sqrt()  # 2 |w|, 2 |x|, 2 |y|, 2 |z|
    candidates = torch.stack([
        torch.stack([two_q[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, two_q[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, two_q[..., 2] ** 2, m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, two_q[..., 3] ** 2], -1),
    ], -2) / (2 * two_q[..., None].clamp(min=0.1))  # row i is the quaternion (w, x, y, z) by formula i
    best = two_q.argmax(-1, keepdim=True)[..., None].expand(*two_q.shape[:-1], 1, 4)
    q = candidates.gather(-2, best).squeeze(-2)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., 0], q[..., 1:]
    n = v.norm(dim=-1)
    # angle / sin(angle / 2) = 2 atan2(n, w) / n, and 2 / w where n is tiny
    scale = torch.where(n > 1e-6, 2 * torch.atan2(n, w) / n.clamp(min=1e-6), 2 / w.clamp(min=1e-6))
    return v * scale[..., None]
