"""Named joint sets: which 3D points a SMPL forward returns as `joints`.

A joint set is a list of rows. A row is either one of SMPL's 24 posed (kinematic-chain)
joints, or a sparse regressor over the posed vertices (a single vertex is a one-hot row).
- "smpl24": SMPL's kinematic-chain joints.
- "smplx45": smplx's default for SMPL, in its order: the 24 chain joints, then face, feet
  and fingertip vertices (smplx's `vertex_ids["smplh"]`).
- "hmr19": HMR's 19 keypoints (LSP's 14, then nose, eyes, ears): the model's cocoplus
  regressor when its file has one, else SMPL joints and vertices at those body parts.
- "lsp14": the first 14 of hmr19.
- "h36m17": Human3.6M's 17 joints, from SPIN's J_regressor_h36m.npy (must be present).
"""
from __future__ import annotations

import numpy as np

# smplx's vertex_ids["smplh"], in the order smplx appends them for SMPL.
SMPLX_EXTRA_VERTICES = (
    ("nose", 332), ("right_eye", 6260), ("left_eye", 2800), ("right_ear", 4071), ("left_ear", 583),
    ("left_big_toe", 3216), ("left_small_toe", 3226), ("left_heel", 3387),
    ("right_big_toe", 6617), ("right_small_toe", 6624), ("right_heel", 6787),
    ("left_thumb", 2746), ("left_index", 2319), ("left_middle", 2445), ("left_ring", 2556),
    ("left_pinky", 2673), ("right_thumb", 6191), ("right_index", 5782), ("right_middle", 5905),
    ("right_ring", 6016), ("right_pinky", 6133),
)
HEAD_TOP_VERTEX = 411

HMR19_NAMES = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck", "head_top", "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)
# Where no cocoplus regressor exists: the SMPL joint (int) or vertex ("v", id) for each.
_HMR19_FALLBACK = (8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20, 12,
                   ("v", HEAD_TOP_VERTEX), ("v", 332), ("v", 2800), ("v", 6260), ("v", 583), ("v", 4071))

JOINT_SET_SIZES = {"smpl24": 24, "smplx45": 45, "hmr19": 19, "lsp14": 14, "h36m17": 17}


def joint_set_rows(name: str, num_vertices: int, extra_regressors: dict):
    """(chain_index (J,) int64 with -1 for vertex rows, vertex regressor (J, V) float64)."""
    if name == "smpl24":
        rows = list(range(24))
    elif name == "smplx45":
        rows = list(range(24)) + [("v", vid) for _, vid in SMPLX_EXTRA_VERTICES]
    elif name in ("hmr19", "lsp14"):
        count = JOINT_SET_SIZES[name]
        if "hmr19" in extra_regressors:
            return _regressor_rows(extra_regressors["hmr19"][:count])
        rows = list(_HMR19_FALLBACK[:count])
    elif name == "h36m17":
        if "h36m" not in extra_regressors:
            raise ValueError(
                "joint_set 'h36m17' needs SPIN's J_regressor_h36m.npy (17, V) beside the model file; "
                "none was found")
        return _regressor_rows(extra_regressors["h36m"])
    else:
        raise ValueError(f"joint_set must be one of {sorted(JOINT_SET_SIZES)}, got {name!r}")
    too_big = [row[1] for row in rows if isinstance(row, tuple) and row[1] >= num_vertices]
    if too_big:
        raise ValueError(f"joint_set {name!r} reads SMPL vertices {too_big}, but this model has only "
                         f"{num_vertices} vertices")
    chain = np.full(len(rows), -1, dtype=np.int64)
    regressor = np.zeros((len(rows), num_vertices))
    for i, row in enumerate(rows):
        if isinstance(row, tuple):
            regressor[i, row[1]] = 1.0
        else:
            chain[i] = row
    return chain, regressor


def _regressor_rows(regressor):
    regressor = np.asarray(regressor, dtype=np.float64)
    return np.full(regressor.shape[0], -1, dtype=np.int64), regressor
