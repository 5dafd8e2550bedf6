"""Where a fit starts: the square box each person's weak camera lives in, and HMR's mean body
in it. Shared by the fitter and the keypoint initializer, so that both read the same box."""
from __future__ import annotations

import math

import numpy as np
import torch

from hmr_fast.camera import keypoint_box

# HMR's mean camera: the body fills most of its box, no offset.
MEAN_SCALE = 0.9
# The upright root in HMR's camera frame (x right, y down, z forward): pi about x.
UPRIGHT = (math.pi, 0.0, 0.0)


def people_boxes(keypoints: torch.Tensor, boxes=None, expand: float = 1.2) -> torch.Tensor:
    """(B, 3) square boxes (cx, cy, size): around given ones (B, 4) x1, y1, x2, y2 or the
    confident keypoints, expand times their extent; boxes given as (B, 3) are used as they are."""
    if boxes is not None and np.shape(boxes)[-1:] == (3,):
        return torch.as_tensor(np.asarray(boxes, dtype=np.float32), device=keypoints.device).reshape(-1, 3)
    out = []
    kp = keypoints.detach().cpu().numpy()
    given = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i in range(len(kp)):
        box = None
        if given is not None and np.isfinite(given[i]).all() and (given[i, 2:] > given[i, :2]).all():
            x1, y1, x2, y2 = given[i]
            box = np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * expand])
        if box is None:
            box = keypoint_box(kp[i, :, :2], kp[i, :, 2] > 0, expand=expand)
        out.append(box if box is not None else np.array([0.0, 0.0, 1.0]))
    return torch.as_tensor(np.asarray(out), dtype=keypoints.dtype, device=keypoints.device).reshape(-1, 3)
