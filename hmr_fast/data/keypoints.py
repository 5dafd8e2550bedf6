"""Keypoint orders of the formats users bring, and how each maps to HMR's 19 keypoints.

HMR's 19 (`hmr_fast.body.joint_sets.HMR19_NAMES`): LSP's 14 (R ankle, R knee,
R hip, L hip, L knee, L ankle, R wrist, R elbow, R shoulder, L shoulder, L elbow, L wrist,
neck, head top), then nose, L eye, R eye, L ear, R ear.

SPIN's 24 ground-truth keypoints (`part` in its npz files; the last 24 of SPIN's
constants.JOINT_NAMES), in order:
   0 R ankle, 1 R knee, 2 R hip, 3 L hip, 4 L knee, 5 L ankle, 6 R wrist, 7 R elbow,
   8 R shoulder, 9 L shoulder, 10 L elbow, 11 L wrist, 12 neck (LSP), 13 head top (LSP),
  14 pelvis (MPII), 15 thorax (MPII), 16 spine (H36M), 17 jaw (H36M), 18 head (H36M),
  19 nose, 20 L eye, 21 R eye, 22 L ear, 23 R ear.
So HMR19 = SPIN24[0..13] + SPIN24[19, 20, 21, 22, 23]; SPIN's 14..18 have no HMR keypoint.
SPIN's `S` (N, 24, 4) holds the 3D joints in the same order (x, y, z metres, confidence).

COCO's 17: nose, L eye, R eye, L ear, R ear, L shoulder, R shoulder, L elbow, R elbow,
L wrist, R wrist, L hip, R hip, L knee, R knee, L ankle, R ankle. COCO has no neck and no
head top: those two HMR keypoints get visibility 0.
"""
from __future__ import annotations

import numpy as np

from hmr_fast.body.joint_sets import HMR19_NAMES, JOINT_SET_SIZES
from hmr_fast.body.model_data import SMPL_JOINT_NAMES

NUM_HMR = len(HMR19_NAMES)  # 19
NUM_LSP = JOINT_SET_SIZES["lsp14"]  # the LSP joints at the front of HMR's 19: the 3D losses and metrics use them

SPIN24_NAMES = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck", "head_top", "pelvis_mpii", "thorax_mpii", "spine_h36m", "jaw_h36m", "head_h36m",
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)
SPIN24_TO_HMR19 = tuple(range(14)) + (19, 20, 21, 22, 23)

COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# For each HMR keypoint, its COCO index or -1 (neck, head top).
COCO17_TO_HMR19 = tuple(COCO17_NAMES.index(n) if n in COCO17_NAMES else -1 for n in HMR19_NAMES)


def _mirror_permutation(names) -> tuple:
    """Index of each name's left/right mirror (itself for centre points)."""
    def mirror(n):
        return n.replace("left", "#").replace("right", "left").replace("#", "right")
    return tuple(names.index(mirror(n)) for n in names)


HMR19_FLIP = _mirror_permutation(HMR19_NAMES)
SMPL24_FLIP = _mirror_permutation(SMPL_JOINT_NAMES)


def spin24_to_hmr19(points: np.ndarray) -> np.ndarray:
    """(..., 24, C) SPIN keypoints -> (..., 19, C) HMR keypoints."""
    return points[..., SPIN24_TO_HMR19, :]


def hmr19_to_spin24(points: np.ndarray) -> np.ndarray:
    """(..., 19, C) -> (..., 24, C) in SPIN's order; SPIN-only slots are zero (invisible)."""
    out = np.zeros(points.shape[:-2] + (24, points.shape[-1]), dtype=points.dtype)
    out[..., SPIN24_TO_HMR19, :] = points
    return out


def coco17_to_hmr19(keypoints: np.ndarray) -> np.ndarray:
    """(17, 3) COCO keypoints (x, y, v with v in {0, 1, 2}) -> (19, 3) with visibility 0/1.

    COCO's v=1 (labelled, occluded) counts as visible: the position is annotated.
    """
    out = np.zeros((NUM_HMR, 3), dtype=np.float64)
    for i, c in enumerate(COCO17_TO_HMR19):
        if c >= 0:
            out[i, :2] = keypoints[c, :2]
            out[i, 2] = float(keypoints[c, 2] > 0)
    return out
