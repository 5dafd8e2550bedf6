"""The SMPL model as plain numpy arrays: what every loader returns and every backend reads."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# SMPL's kinematic tree (parent of each joint; the root's parent is -1) and joint names.
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
NUM_JOINTS = len(SMPL_PARENTS)  # 24
NUM_POSE_FEATURES = 9 * (NUM_JOINTS - 1)  # 207: (R - I) of the 23 non-root joints


@dataclass(frozen=True)
class SMPLModelData:
    """Arrays of one SMPL model (checked by `model_file.validate_model_data`).

    Shapes: V vertices (6890 for SMPL), F faces, NB shape directions (10 for SMPL).
    `extra_regressors` maps a name to a (J, V) vertex regressor: "h36m" (17, SPIN's
    J_regressor_h36m.npy), "extra" (9, SPIN's J_regressor_extra.npy), "hmr19" (19, HMR's
    cocoplus regressor), present only when the model file or its folder provides them.
    """

    v_template: np.ndarray  # (V, 3) float64, metres
    faces: np.ndarray  # (F, 3) int64
    J_regressor: np.ndarray  # (24, V) float64, dense
    parents: np.ndarray  # (24,) int64, parents[0] == -1
    weights: np.ndarray  # (V, 24) float64 skinning weights
    shapedirs: np.ndarray  # (V, 3, NB) float64
    posedirs: np.ndarray  # (V, 3, 207) float64
    extra_regressors: dict = field(default_factory=dict)
    source: str = ""

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[2]
