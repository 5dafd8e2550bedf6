"""The pose-and-shape prior: real SMPL parameters, the discriminator's "real" samples.

Accepted files (a path may also be a folder, searched recursively for *.npz):
- AMASS: poses (T, 156) SMPL-H (root 0:3, body 3:66, hands after; (T, 72) or any width
  >= 66 also works), betas (16,) per subject or (T, >=10) per frame, trans, mocap_framerate.
  SMPL-H has no SMPL hand joints (22, 23), so those get the identity. AMASS folders also
  hold shape.npz files with no poses: inside a folder such files are skipped.
- Plain: pose (N, 72) and shape or betas (N, 10) (SPIN's npz layout, any SMPL fits).
`frame_stride` keeps every n-th frame of AMASS sequences (plain files are not sequences).
Files are read with allow_pickle=False. Every frame is checked when the prior is built:
NaN/Inf (or beyond float32) in poses / betas is a DataError naming the file, key and rows,
or with drop_bad_labels (data.drop_bad_labels) the frames are dropped, logged and counted.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from hmr_fast.errors import DataError

from .dataset import NUMERIC_KINDS, LabelCheck, read_npz

log = logging.getLogger(__name__)
NUM_BETAS = 10


def _read_prior_file(path: Path, frame_stride: int, check_for=None):
    """(poses (n, 72), betas (n, 10)) of one file, or None for a file without poses; bad rows
    (NaN/Inf) are refused or, with `check_for(path, num_rows)` making a dropping LabelCheck, dropped."""
    f = read_npz(path, ("poses", "betas", "pose", "shape"))  # trans, mocap_framerate, ... are not read
    for key, a in f.items():
        if a.dtype.kind not in NUMERIC_KINDS:
            raise DataError(f"{path}: key {key!r} must hold numbers, got dtype {a.dtype}")
    if "poses" in f:
        pose_key, poses = "poses", f["poses"]
        if poses.ndim != 2 or poses.shape[1] < 66:
            raise DataError(f"{path}: key 'poses' must be (T, >=66) (AMASS SMPL-H is (T, 156)), got {poses.shape}")
        if "betas" not in f:
            raise DataError(f"{path}: AMASS file is missing key 'betas'")
        betas_key = "betas"
    elif "pose" in f:
        pose_key, poses = "pose", f["pose"]
        if poses.ndim != 2 or poses.shape[1] != 72:
            raise DataError(f"{path}: key 'pose' must be (N, 72), got {poses.shape}")
        betas_key = "shape" if "shape" in f else "betas" if "betas" in f else None
        if betas_key is None:
            raise DataError(f"{path}: has 'pose' but is missing key 'shape' (or 'betas')")
    else:
        return None
    raw = f[betas_key]
    if not ((raw.ndim == 1 and raw.shape[0] >= NUM_BETAS)
            or (raw.ndim == 2 and raw.shape[0] == len(poses) and raw.shape[1] >= NUM_BETAS)):
        raise DataError(f"{path}: key {betas_key!r} must be (>={NUM_BETAS},) or (T, >={NUM_BETAS}) with "
                        f"T={len(poses)}, got {raw.shape}")
    betas = raw[None] if raw.ndim == 1 else raw
    if len(poses) == 0:
        raise DataError(f"{path}: key {pose_key!r} has no rows")
    width = 72 if poses.shape[1] == 72 else 66
    check = check_for(path, len(poses)) if check_for is not None else LabelCheck(path, len(poses))
    check.flag_nonfinite(pose_key, poses[:, :width])  # the columns used (not AMASS's hands)
    check.flag_nonfinite(betas_key, np.broadcast_to(betas[:, :NUM_BETAS], (len(poses), NUM_BETAS)))
    stride = frame_stride if pose_key == "poses" else 1  # only mocap sequences are subsampled
    rows = np.arange(0, len(poses), stride)
    rows = rows[check.finish()[rows]]
    body = np.zeros((len(rows), 72))
    body[:, :width] = poses[rows, :width]  # SMPL-H has no SMPL hand joints (22, 23): identity
    betas = betas[rows if len(betas) > 1 else np.zeros(len(rows), np.int64), :NUM_BETAS].astype(np.float64)
    return body, betas


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

    def __init__(self, paths, frame_stride: int = 1, drop_bad_labels: bool = False):
        poses, betas = [], []
        self.dropped = 0  # frames with NaN/Inf left out (drop_bad_labels)
        checks = []

        def check_for(path, num_rows):
            checks.append(LabelCheck(path, num_rows, drop_bad_labels, unit="rows"))
            return checks[-1]

        for path, in_folder in _files(paths):
            got = _read_prior_file(path, max(1, int(frame_stride)), check_for)
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
        self.dropped = sum(c.dropped for c in checks)
        self.poses = torch.as_tensor(np.concatenate(poses), dtype=torch.float32)
        self.betas = torch.as_tensor(np.concatenate(betas), dtype=torch.float32)
        if len(self.poses) == 0:  # every frame of every file was dropped
            raise DataError(f"prior {paths}: no usable frames")

    def __len__(self) -> int:
        return len(self.poses)

    def sample(self, n: int, generator: torch.Generator):
        """n random (pose (n, 72), betas (n, 10)) pairs, with replacement."""
        idx = torch.randint(len(self.poses), (n,), generator=generator)
        return self.poses[idx], self.betas[idx]
