"""Pose metrics: MPJPE, PA-MPJPE (similarity Procrustes per sample) and PCK.

All functions take torch tensors or numpy arrays, batched as (B, J, D), and return per-sample
values (B,) so callers can average over a dataset however they like. `mask` (B, J) marks the
joints that count (visibility / confidence > 0); a sample with no counted joint gives NaN.
"""
from __future__ import annotations

import torch

from hmr_fast.body.joint_sets import HMR19_NAMES

# HMR's pelvis is the midpoint of its two hips (LSP has no pelvis keypoint).
RIGHT_HIP, LEFT_HIP = HMR19_NAMES.index("right_hip"), HMR19_NAMES.index("left_hip")


def _as_tensor(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.double()


def _mask(mask, points) -> torch.Tensor:
    if mask is None:
        return torch.ones(points.shape[:2], dtype=points.dtype, device=points.device)
    return (_as_tensor(mask).to(points.device) > 0).to(points.dtype)


def _masked_mean(values, mask) -> torch.Tensor:
    """Per-sample mean of values (B, J) over the masked joints; NaN where none counts."""
    count = mask.sum(1)
    return (values * mask).sum(1) / count.where(count > 0, torch.full_like(count, float("nan")))


def align_by_pelvis(joints, right_hip: int = RIGHT_HIP, left_hip: int = LEFT_HIP) -> torch.Tensor:
    """Joints (B, J, 3) minus the midpoint of the hips, as HMR aligns them before 3D errors."""
    joints = _as_tensor(joints)
    pelvis = (joints[:, right_hip] + joints[:, left_hip]) / 2
    return joints - pelvis[:, None]


def mpjpe(pred, gt, mask=None) -> torch.Tensor:
    """Mean per-joint position error (B,): mean Euclidean distance over the masked joints.

    No alignment happens here; align both sides first (e.g. `align_by_pelvis`) if needed.
    """
    pred, gt = _as_tensor(pred), _as_tensor(gt)
    gt = gt.to(pred.dtype)
    return _masked_mean((pred - gt).norm(dim=-1), _mask(mask, pred))


def similarity_procrustes(pred, gt, mask=None) -> torch.Tensor:
    """`pred` (B, J, 3) moved by the similarity (scale s, rotation R, translation t) that best
    fits it to `gt` in least squares over the masked joints (Umeyama 1991).

    R is a proper rotation: a reflection is never allowed, so a mirrored prediction keeps
    its error. Computed in float64 because the SVD of near-degenerate sets is touchy.
    """
    pred64, gt64 = _as_tensor(pred).double(), _as_tensor(gt).double()
    w = _mask(mask, pred64)[..., None]  # (B, J, 1)
    n = w.sum(1, keepdim=True).clamp(min=1)
    mu_pred, mu_gt = (w * pred64).sum(1, keepdim=True) / n, (w * gt64).sum(1, keepdim=True) / n
    x, y = (pred64 - mu_pred) * w, (gt64 - mu_gt) * w
    cov = y.transpose(1, 2) @ x  # (B, 3, 3): sum over joints of y x^T
    U, S, Vh = torch.linalg.svd(cov)
    # Flip the last singular direction when U V^T would be a reflection.
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    R = U @ D @ Vh
    var_pred = (x * x).sum((1, 2))
    scale = (S * D.diagonal(dim1=1, dim2=2)).sum(-1) / var_pred.clamp(min=1e-12)
    aligned = scale[:, None, None] * (pred64 - mu_pred) @ R.transpose(1, 2) + mu_gt
    return aligned.to(_as_tensor(pred).dtype)


def pa_mpjpe(pred, gt, mask=None) -> torch.Tensor:
    """Procrustes-aligned MPJPE (B,): MPJPE after the per-sample similarity alignment."""
    return mpjpe(similarity_procrustes(pred, gt, mask), gt, mask)


def pck(pred2d, gt2d, mask=None, threshold: float = 0.05, size=2.0) -> torch.Tensor:
    """Percentage of correct keypoints (B,): the share of masked keypoints whose 2D error is
    below `threshold * size`.

    size: the reference length, one number or one per sample (B,). With keypoints normalised
    to [-1, 1] crop coordinates the crop is 2 wide (the default), so PCK@0.05 counts errors
    under 5% of the crop side (11.2 px of a 224 crop); in pixels, pass each person's box side.
    """
    pred2d, gt2d = _as_tensor(pred2d), _as_tensor(gt2d)
    error = (pred2d - gt2d.to(pred2d.dtype)).norm(dim=-1)
    size = _as_tensor(size).to(error.dtype).reshape(-1, 1) if not isinstance(size, (int, float)) else size
    return _masked_mean((error < threshold * size).to(pred2d.dtype), _mask(mask, pred2d))


def pck3d(pred, gt, threshold: float = 0.150, mask=None) -> torch.Tensor:
    """3D PCK (B,): the share of (masked) joints whose 3D error is below `threshold` (same
    units as the joints; 0.150 m is MPI-INF-3DHP's 150 mm). Align both sides first."""
    pred, gt = _as_tensor(pred), _as_tensor(gt)
    error = (pred - gt.to(pred.dtype)).norm(dim=-1)
    return _masked_mean((error < threshold).to(pred.dtype), _mask(mask, pred))


def auc3d(pred, gt, thresholds, mask=None) -> torch.Tensor:
    """Area under the 3D PCK curve (B,): PCK averaged over `thresholds` (MPI-INF-3DHP:
    0, 5, ..., 150 mm, 31 values), a share in [0, 1]."""
    values = [pck3d(pred, gt, float(t), mask) for t in thresholds]
    return torch.stack(values, dim=0).mean(0)
