"""SPIN's loop (Kolotouros et al. 2019): fits made during training supervise HMR where a
sample has only 2D keypoints.

At each step, for the batch's samples without SMPL labels:
1. SMPLify (hmr_fast.fit, batched) starts from HMR's own prediction and fits the sample's
   2D keypoints in its crop;
2. the best fit that sample has had so far, kept in the sample's own frame (before the
   crop's rotation and flip), is seen through this crop, given the weak camera that best
   places it (closed form) and scored by the same objective;
3. the better of the two is kept, and where its keypoints lie close enough to the labels
   (spin.max_error), it is the SMPL target of HMR's parameter loss.
SPIN itself keeps the fits in the same way (a table indexed by sample, updated when a new
fit reprojects better). The table is part of the checkpoint: a resumed run keeps its fits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist

from hmr_fast.body.model_data import NUM_JOINTS
from hmr_fast.camera import fit_weak_perspective
from hmr_fast.data.augment import augment_poses, unaugment_poses
from hmr_fast.fit import FitSettings, KeypointFitter, keypoint_format
from hmr_fast.rotations import rodrigues, rotmat_to_axis_angle

# The crop's normalised coordinates as the fitter's box: centre 0, half side 1.
CROP_BOX = (0.0, 0.0, 2.0)


@dataclass
class SpinTargets:
    rot_mats: torch.Tensor  # (B, 24, 3, 3) the kept fits, in the crops' frame
    betas: torch.Tensor  # (B, NB)
    used: torch.Tensor  # (B,) bool: fitted, and close enough to the labels to supervise
    error: torch.Tensor  # (B,) mean distance of the fit's keypoints from the labels (crop units; inf: none)


class BestFits:
    """One fit per training sample (axis-angle pose in the sample's frame, betas), on the
    host; `known` marks the samples fitted so far."""

    def __init__(self, num_samples: int, num_betas: int = 10):
        self.pose = torch.zeros(num_samples, 3 * NUM_JOINTS)
        self.betas = torch.zeros(num_samples, num_betas)
        self.known = torch.zeros(num_samples, dtype=torch.bool)

    def state_dict(self) -> dict:
        return {"pose": self.pose, "betas": self.betas, "known": self.known}

    def load_state_dict(self, state: dict) -> None:
        if state["pose"].shape != self.pose.shape:
            raise ValueError(f"the checkpoint's SPIN fits are for {state['pose'].shape[0]} samples; "
                             f"this run's training data has {self.pose.shape[0]}")
        self.pose, self.betas, self.known = state["pose"].float(), state["betas"].float(), state["known"].bool()

    def store(self, index: torch.Tensor, pose: torch.Tensor, betas: torch.Tensor) -> None:
        self.pose[index], self.betas[index], self.known[index] = pose, betas, True


class SpinLoop:
    """The fits of one training run (see the module docstring); `targets` is one step's part."""

    def __init__(self, smpl, num_samples: int, iters: int, torso_iters: int, max_error: float):
        fmt = keypoint_format("hmr19")  # what the training sets' `keypoints` hold
        settings = FitSettings(iters=iters, torso_iters=torso_iters, try_flip=False)
        self.fitter = KeypointFitter(smpl, fmt, settings)
        # the same objective at a given start, with no iterations: the kept fits' score
        self.scorer = KeypointFitter(smpl, fmt, replace(settings, iters=0, torso_iters=0),
                                     pose_prior=self.fitter.pose_prior)
        self.smpl = smpl
        self.max_error = max_error
        self.fits = BestFits(num_samples, getattr(smpl, "num_betas", 10))

    def targets(self, batch: dict, rot_mats: torch.Tensor, betas: torch.Tensor, cam: torch.Tensor,
                rows: torch.Tensor) -> SpinTargets:
        """Fit the batch's `rows` (bool (B,)) from HMR's prediction (rot_mats, betas, cam),
        keep the better of that and each sample's kept fit, and return the targets."""
        device = rot_mats.device
        B = rot_mats.shape[0]
        out = SpinTargets(rot_mats.detach().clone(), betas.detach().float().clone(),
                          torch.zeros(B, dtype=torch.bool, device=device), torch.full((B,), float("inf"), device=device))
        picked = torch.nonzero(rows.to(device)).flatten()
        if len(picked):
            new_index = self._fit(batch, rot_mats, betas, cam, picked, out)
        else:
            new_index = (torch.zeros(0, dtype=torch.long), torch.zeros(0, 3 * NUM_JOINTS), torch.zeros(0, betas.shape[1]))
        self._share(*new_index)
        return out

    def _fit(self, batch, rot_mats, betas, cam, picked, out):
        keypoints = batch["keypoints"][picked].float()
        box = np.tile(CROP_BOX, (len(picked), 1))
        index = batch["index"][picked].cpu()
        rotation = batch["rotation"][picked].cpu().numpy()
        flip = batch["flip"][picked].cpu().numpy()
        with torch.enable_grad():
            aa = torch.as_tensor(rotmat_to_axis_angle(rot_mats[picked].detach().cpu().numpy()),
                                 dtype=torch.float32).reshape(len(picked), -1).to(keypoints.device)
            init = {"global_orient": aa[:, :3], "body_pose": aa[:, 3:], "betas": betas[picked].detach().float(),
                    "cam": cam[picked].detach().float()}
            new = self.fitter.fit(keypoints, box, init)
            known = self.fits.known[index].to(keypoints.device)
            kept_pose = torch.as_tensor(augment_poses(self.fits.pose[index].numpy(), rotation, flip),
                                        dtype=torch.float32, device=keypoints.device)
            kept_betas = self.fits.betas[index].to(keypoints.device)
            kept_cam = self._place(kept_pose, kept_betas, keypoints)
            kept = self.scorer.fit(keypoints, box, {"global_orient": kept_pose[:, :3], "body_pose": kept_pose[:, 3:],
                                                    "betas": kept_betas, "cam": kept_cam})
        keep_old = known & (kept.loss < new.loss)
        pose = torch.where(keep_old[:, None], torch.cat([kept.global_orient, kept.body_pose], 1),
                           torch.cat([new.global_orient, new.body_pose], 1))
        fit_betas = torch.where(keep_old[:, None], kept.betas, new.betas)
        fit_kp = torch.where(keep_old[:, None, None], kept.keypoints2d, new.keypoints2d)
        visible = (keypoints[..., 2] > 0) & torch.isfinite(fit_kp).all(-1)
        dist_ = torch.nan_to_num((fit_kp - keypoints[..., :2]).norm(dim=-1), nan=0.0)
        error = (dist_ * visible).sum(-1) / visible.sum(-1).clamp(min=1)
        error = torch.where(visible.any(-1), error, torch.full_like(error, float("inf")))
        out.rot_mats[picked] = rodrigues(pose.reshape(-1, NUM_JOINTS, 3)).to(out.rot_mats.dtype)
        out.betas[picked] = fit_betas
        out.error[picked] = error
        out.used[picked] = error < self.max_error
        better = ~keep_old.cpu()
        # the new fits that won, back in their samples' own frames
        own = unaugment_poses(torch.cat([new.global_orient, new.body_pose], 1).cpu().numpy()[better.numpy()],
                              rotation[better.numpy()], flip[better.numpy()])
        return index[better], torch.as_tensor(own, dtype=torch.float32), new.betas.cpu()[better]

    def _place(self, pose, betas, keypoints):
        """The weak camera that best places each kept fit's keypoints on the labels."""
        fmt_rows = self.fitter.rows
        _, joints = self.smpl.pose_body(betas, rodrigues(pose.reshape(-1, NUM_JOINTS, 3)), False, "hmr19")
        weights = keypoints[..., 2] * self.fitter.modelled.to(keypoints.device)
        return fit_weak_perspective(joints[:, fmt_rows], keypoints[..., :2], weights)

    def _share(self, index, pose, betas) -> None:
        """Every process stores every process's new fits (each meets other samples)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            self.fits.store(index, pose, betas)
            return
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (index, pose, betas))
        for i, p, b in gathered:
            self.fits.store(i, p, b)

    def state_dict(self) -> dict:
        return self.fits.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.fits.load_state_dict(state)

    def log_values(self, targets: SpinTargets, rows: torch.Tensor) -> torch.Tensor:
        """(share of the fitted rows that supervised, their mean error) on the device."""
        rows = rows.to(targets.used.device)
        n = rows.sum().clamp(min=1)
        err = torch.where(rows & torch.isfinite(targets.error), targets.error, torch.zeros_like(targets.error))
        return torch.stack([(targets.used & rows).sum() / n, err.sum() / n]).float()


def spin_rows(batch: dict) -> torch.Tensor:
    """The samples SPIN fits: those without SMPL labels."""
    return batch["has_smpl"] < 0.5
