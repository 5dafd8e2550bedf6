"""HMR's losses (Kanazawa et al. 2018, and its trainer's code for the reductions).

- keypoint_loss: L1 on normalised 2D keypoints, weighted by visibility, averaged over the
  visible coordinates (TF's SUM_BY_NONZERO_WEIGHTS, as HMR's keypoint_l1_loss).
- joints3d_loss: squared error of pelvis-aligned 3D joints (LSP's 14, pelvis = hip
  midpoint), over samples that have 3D joints and joints with confidence.
- smpl_loss: 0.5 x squared error of [24 rotation matrices, betas] where a sample has SMPL
  (labels, or with spin.enabled SPIN's fits: training/spin.py).
- The adversarial (LSGAN) losses are in hmr_fast.model.discriminator.
Each returns a scalar; a batch with nothing to compare gives 0 (with a gradient path).
"""
from __future__ import annotations

import torch

from hmr_fast.data.keypoints import NUM_LSP
from hmr_fast.metrics import LEFT_HIP, RIGHT_HIP, align_by_pelvis


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * v) / (number of nonzero w), 0 when all weights are 0."""
    weights = weights.expand_as(values)
    count = (weights > 0).sum()
    return (weights * values).sum() / count.clamp(min=1)


def keypoint_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred (B, J, 2), gt (B, J, 3) = x, y, visibility in normalised crop coordinates."""
    return _weighted_mean((pred - gt[..., :2]).abs(), gt[..., 2:3])


def joints3d_loss(pred: torch.Tensor, gt: torch.Tensor, has_3d: torch.Tensor) -> torch.Tensor:
    """pred (B, J, 3), gt (B, J, 4) = x, y, z, confidence (camera frame), has_3d (B,)."""
    pred, gt = pred[:, :NUM_LSP], gt[:, :NUM_LSP]
    hips_seen = (gt[:, RIGHT_HIP, 3] > 0) & (gt[:, LEFT_HIP, 3] > 0)
    weights = (gt[..., 3:4] > 0) * (has_3d * hips_seen)[:, None, None]
    error = (align_by_pelvis(pred) - align_by_pelvis(gt[..., :3])) ** 2
    return _weighted_mean(error, weights.to(pred.dtype))


def smpl_loss(pred_rot_mats, pred_betas, gt_rot_mats, gt_betas, has_smpl) -> torch.Tensor:
    """pred_rot_mats and gt_rot_mats (B, 24, 3, 3), betas (B, 10), has_smpl (B,) the samples' weights."""
    pred = torch.cat([pred_rot_mats.flatten(1), pred_betas], dim=1)
    gt = torch.cat([gt_rot_mats.flatten(1), gt_betas], dim=1)
    return 0.5 * _weighted_mean((pred - gt) ** 2, has_smpl[:, None].to(pred.dtype))
