"""The pose-and-shape prior: real SMPL parameters, the discriminator's "real" samples.

Accepted files (a path may also be a folder, searched recursively for *.npz):
- AMASS: poses (T, 156) SMPL-H (root 0:3, body 3:66, hands after; (T, 72) or any width
  >= 66 also works), betas (16,) per subject or (T, >=10) per frame, trans, mocap_framerate.
  SMPL-H has no SMPL hand joints (22, 23), so those get the identity. AMASS folders also
  hold shape.npz files with no poses: inside a folder such files are skipped.
- Plain: pose (N, 72) and shape or betas (N, 10) (SPIN's npz layout, any SMPL fits).
`frame_stride` keeps every n-th frame of AMASS sequences (plain files are not sequences).
Files are read with allow_pickle=False.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from hmr_fast.errors import DataError

log = logging.getLogger(__name__)
NUM_BETAS = 10


def _read_prior_file(path: Path, frame_stride: int):
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        if "poses" in keys:
            poses = f["poses"]
            if poses.ndim != 2 or poses.shape[1] < 66:
                raise DataError(f"{path}: key 'poses' must be (T, >=66) (AMASS SMPL-H is (T, 156)), "
                                         f"got {poses.shape}")
            body = np.zeros((len(poses), 72))
            width = 72 if poses.shape[1] == 72 else 66
            body[:, :width] = poses[:, :width]
            if "betas" not in keys:
                raise DataError(f"{path}: AMASS file is missing key 'betas'")
            betas = f["betas"]
        elif "pose" in keys:
            body = f["pose"]
            if body.ndim != 2 or body.shape[1] != 72:
                raise DataError(f"{path}: key 'pose' must be (N, 72), got {body.shape}")
            shape_key = "shape" if "shape" in keys else "betas" if "betas" in keys else None
            if shape_key is None:
                raise DataError(f"{path}: has 'pose' but is missing key 'shape' (or 'betas')")
            betas = f[shape_key]
        else:
            return None
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim == 1:
        betas = np.broadcast_to(betas, (len(body), betas.shape[0]))
    if betas.ndim != 2 or betas.shape[0] != len(body) or betas.shape[1] < NUM_BETAS:
        raise DataError(f"{path}: betas must be (>={NUM_BETAS},) or (T, >={NUM_BETAS}) with "
                                 f"T={len(body)}, got {betas.shape}")
    stride = frame_stride if "poses" in keys else 1  # only mocap sequences are subsampled
    return body[::stride], betas[::stride, :NUM_BETAS]


def _files(paths) -> list:
    out = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        p = Path(p)
        if p.is_dir():
            out.extend((f, True) for f in sorted(p.rglob("*.npz")))
        elif p.is_file():
            out.append((p, False))
        else:
            raise DataError(f"{p}: prior file or folder not found")
    return out


class PosePrior:
    """All prior samples in memory (N, 72) + (N, 10), drawn in batches by a torch.Generator."""

    def __init__(self, paths, frame_stride: int = 1):
        poses, betas = [], []
        for path, in_folder in _files(paths):
            got = _read_prior_file(path, max(1, int(frame_stride)))
            if got is None:
                if not in_folder:
                    raise DataError(f"{path}: missing key 'poses' (AMASS) or 'pose' + 'shape' "
                                             "(plain SMPL npz)")
                log.info("prior: %s has no poses, skipped", path)
                continue
            poses.append(got[0])
            betas.append(got[1])
        if not poses:
            raise DataError(f"prior {paths}: no file with poses found")
        self.poses = torch.as_tensor(np.concatenate(poses), dtype=torch.float32)
        self.betas = torch.as_tensor(np.concatenate(betas), dtype=torch.float32)
        if not (torch.isfinite(self.poses).all() and torch.isfinite(self.betas).all()):
            raise DataError(f"prior {paths}: poses or betas contain NaN/Inf")

    def __len__(self) -> int:
        return len(self.poses)

    def sample(self, n: int, generator: torch.Generator):
        """n random (pose (n, 72), betas (n, 10)) pairs, with replacement."""
        idx = torch.randint(len(self.poses), (n,), generator=generator)
        return self.poses[idx], self.betas[idx]
