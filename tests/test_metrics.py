"""Metric functions on hand-computed cases and their invariances."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hmr_fast import metrics


def _skeleton(seed=0, joints=14):
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(1, joints, 3)))


def test_mpjpe_hand_computed():
    gt = torch.zeros(1, 2, 3, dtype=torch.float64)
    pred = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    # distances 5 and 1 -> mean 3
    assert metrics.mpjpe(pred, gt).item() == pytest.approx(3.0)
    # masking out the second joint leaves 5
    assert metrics.mpjpe(pred, gt, mask=torch.tensor([[1, 0]])).item() == pytest.approx(5.0)


def test_mpjpe_without_counted_joints_is_nan():
    gt = torch.zeros(1, 2, 3)
    assert math.isnan(metrics.mpjpe(gt, gt, mask=torch.zeros(1, 2)).item())


def test_align_by_pelvis_hand_computed():
    joints = torch.zeros(1, 4, 3, dtype=torch.float64)
    joints[0, 2] = torch.tensor([1.0, 0, 0])  # right hip
    joints[0, 3] = torch.tensor([3.0, 2, 0])  # left hip
    aligned = metrics.align_by_pelvis(joints)
    assert aligned[0, 0].tolist() == [-2.0, -1.0, 0.0]


def test_pa_mpjpe_invariant_to_similarity_of_prediction():
    gt = _skeleton(0)
    noisy = gt + 0.05 * _skeleton(1)
    R = torch.as_tensor(Rotation.from_rotvec([0.3, -1.1, 2.0]).as_matrix())
    moved = 2.7 * noisy @ R.T + torch.tensor([5.0, -3.0, 11.0], dtype=torch.float64)
    before = metrics.pa_mpjpe(noisy, gt).item()
    after = metrics.pa_mpjpe(moved, gt).item()
    assert before > 1e-3  # the noise is not aligned away
    assert after == pytest.approx(before, rel=1e-9)
    # while the plain MPJPE of the moved prediction is far larger
    assert metrics.mpjpe(moved, gt).item() > 10 * after


def test_pa_mpjpe_of_exact_similarity_is_zero():
    gt = _skeleton(2)
    R = torch.as_tensor(Rotation.from_rotvec([1.0, 0.2, -0.4]).as_matrix())
    pred = 0.5 * gt @ R.T - 7.0
    assert metrics.pa_mpjpe(pred, gt).item() == pytest.approx(0.0, abs=1e-9)


def test_pa_mpjpe_does_not_allow_reflection():
    gt = _skeleton(3)
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert metrics.pa_mpjpe(mirrored, gt).item() > 0.1


def test_pa_mpjpe_is_per_sample():
    gt = torch.cat([_skeleton(4), _skeleton(5)])
    pred = gt.clone()
    pred[1] = pred[1] + 0.1 * _skeleton(6)[0]
    result = metrics.pa_mpjpe(pred, gt)
    assert result.shape == (2,)
    assert result[0].item() == pytest.approx(0.0, abs=1e-9)
    assert result[1].item() > 1e-3


def test_pa_mpjpe_ignores_masked_joints():
    gt = _skeleton(7)
    pred = gt.clone()
    pred[0, 0] += 100.0  # a wild joint that the mask excludes
    mask = torch.ones(1, 14)
    mask[0, 0] = 0
    assert metrics.pa_mpjpe(pred, gt, mask).item() == pytest.approx(0.0, abs=1e-9)


def test_pck_hand_computed():
    gt = torch.zeros(1, 4, 2)
    # errors 0.05, 0.15, 0.3, 0.0 in normalised units (crop side 2)
    pred = torch.tensor([[[0.05, 0.0], [0.0, 0.15], [0.3, 0.0], [0.0, 0.0]]])
    # PCK@0.05: threshold 0.1 -> errors 0.05 and 0.0 pass = 2/4
    assert metrics.pck(pred, gt, threshold=0.05).item() == pytest.approx(0.5)
    # PCK@0.1: threshold 0.2 -> 0.05, 0.15, 0.0 pass = 3/4
    assert metrics.pck(pred, gt, threshold=0.1).item() == pytest.approx(0.75)
    # invisible keypoints do not count
    vis = torch.tensor([[1, 1, 0, 1]])
    assert metrics.pck(pred, gt, vis, threshold=0.1).item() == pytest.approx(1.0)
