"""Batched fitting of SMPL to keypoints (SMPLify, Bogo et al. 2016, batched and on our kernels).

Every person of a call is one row of one batch: no per-sample Python loop, all tensors on
the body model's device; the SMPL layer picks its backend (the fused Triton joints-only op
on CUDA, the reference on the CPU).

`fit_keypoints2d`, per person, minimises with Adam
    sum_k c_k^2 GM(|proj(J_k) - x_k|)     SMPLify's Geman-McClure robust reprojection,
                                          in units of the person's box (half side = 1)
  + w_pose  GMM(body_pose)                 the pose prior (priors.GaussianMixturePrior)
  + w_shape |betas|^2 + w_bend bend(pose)  shape prior, elbows and knees bend one way
  + w_disc  (D(pose, betas) - 1)^2         optionally, a trained HMR discriminator
  + w_smooth |theta_t - theta_t-1|^2       for sequences, between a track's frames
in two stages, as SMPLify: first the camera and the global orientation from the torso
alone (shoulders and hips), then everything, with the prior weights annealed from strong to
weak. Where the front of the body cannot be told from its back, SMPLify also tries the body
turned around: here both orientations run side by side for the first iterations of the
second stage and the better one of each person goes on. The start: what `init` gives (HMR's
prediction), else for COCO-17 keypoints a guess learned from keypoints (initializer.py;
FitSettings.start = "learned"), else HMR's mean body, upright and facing the camera.

Cameras: HMR's weak perspective x = s (X + t) inside the person's box (cx, cy, size), or a
full perspective camera with given focal lengths and principal points, x = f (X + T)_xy /
(X + T)_z + c. The perspective fit starts from the weak one (its depth is 2 f / (s size)).

`fit_joints3d` fits to 3D joints (mocap, other models' output): squared distance plus the
same priors, with a global translation.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from hmr_fast.rotations import rodrigues, rotmat_to_axis_angle

from .formats import KeypointFormat
from .initializer import default_initializer
from .priors import GaussianMixturePrior, bending_prior, default_pose_prior, shape_prior
from .start import MEAN_SCALE, UPRIGHT, people_boxes  # noqa: F401 (people_boxes: fitter's API)


START_CHOICES = ("learned", "mean", "best")


@dataclass
class FitSettings:
    iters: int = 100  # Adam iterations of the whole-body stage
    torso_iters: int = 30  # camera and global orientation from the torso first
    lr: float = 0.1
    sigma: float = 0.3  # Geman-McClure scale (of the box's half side): residuals beyond it count less
    pose_prior: float = 5e-5  # weights of the priors (annealed: x4, x2, x1 over the iterations)
    shape_prior: float = 5e-4
    bending: float = 1e-3
    discriminator: float = 0.0
    smooth: float = 0.0  # temporal smoothness between consecutive rows of one sequence
    try_flip: bool = True  # also try the body turned around
    flip_iters: int = 20  # iterations both orientations run before the better one is kept
    anneal: tuple = (4.0, 2.0, 1.0)
    # Where a person without a given pose starts: "learned" (the keypoint initializer's guess
    # from their keypoints; coco17 only, the one format it was trained on) or "mean" (HMR's
    # mean body, upright, facing the camera). "best": as "learned", and where a pose is
    # given (HMR's), each person starts from the better of it and the learned guess by the
    # objective at the start.
    start: str = "learned"

    def __post_init__(self):
        if self.start not in START_CHOICES:
            raise ValueError(f"FitSettings.start must be one of {', '.join(START_CHOICES)}, got {self.start!r}")


@dataclass
class Perspective:
    """A pinhole camera per person: focal (B, 2) and principal point (B, 2), pixels."""

    focal: torch.Tensor
    center: torch.Tensor


@dataclass
class FitResult:
    betas: torch.Tensor  # (B, NB)
    body_pose: torch.Tensor  # (B, 69) axis-angle
    global_orient: torch.Tensor  # (B, 3), in the camera frame
    camera: torch.Tensor  # (B, 3): weak (s, tx, ty) in the box's normalised coordinates, or translation (m)
    boxes: torch.Tensor  # (B, 3) the boxes (cx, cy, size) the weak camera lives in
    joints3d: torch.Tensor  # (B, K, 3) the fitted model's keypoints, the format's order (NaN: not modelled)
    keypoints2d: torch.Tensor  # (B, K, 2) their projections, pixels (NaN: not modelled)
    loss: torch.Tensor  # (B,) the final objective per person
    flipped: torch.Tensor = field(default=None)  # (B,) bool: the turned-around start won
    camera_model: str = "weak"
    learned_start: torch.Tensor = field(default=None)  # (B,) bool: started from the keypoint initializer's guess


class _Params(torch.nn.Module):
    """What Adam moves, one row per person: pose, shape and the camera."""

    def __init__(self, global_orient, body_pose, betas, cam):
        super().__init__()
        self.global_orient = torch.nn.Parameter(global_orient.clone())
        self.body_pose = torch.nn.Parameter(body_pose.clone())
        self.betas = torch.nn.Parameter(betas.clone())
        self.cam = torch.nn.Parameter(cam.clone())

    def rows(self, index) -> tuple:
        return tuple(p.detach()[index] for p in (self.global_orient, self.body_pose, self.betas, self.cam))


def _turned_around(global_orient: torch.Tensor) -> torch.Tensor:
    """The same orientation turned by pi about the camera's vertical (y) axis."""
    flip = torch.diag(global_orient.new_tensor([-1.0, 1.0, -1.0]))
    R = flip @ rodrigues(global_orient.detach())
    return torch.as_tensor(rotmat_to_axis_angle(R.cpu().numpy()), dtype=global_orient.dtype,
                           device=global_orient.device)


class KeypointFitter:
    """Fits SMPL to 2D keypoints of one format; reusable across calls (the priors stay)."""

    def __init__(self, smpl, fmt: KeypointFormat, settings: Optional[FitSettings] = None,
                 pose_prior: Optional[GaussianMixturePrior] = None, discriminator=None):
        self.smpl = smpl
        self.fmt = fmt
        self.settings = settings or FitSettings()
        device = smpl.v_template.device if hasattr(smpl, "v_template") else torch.device("cpu")
        self.pose_prior = (pose_prior or default_pose_prior()).to(device)
        self.discriminator = discriminator
        rows = torch.as_tensor(fmt.rows, dtype=torch.long)
        self.modelled = rows >= 0
        self.rows = rows.clamp(min=0).to(device)

    # -- the model's keypoints --------------------------------------------------------------
    def _rot_mats(self, global_orient, body_pose):
        B = global_orient.shape[0]
        return rodrigues(torch.cat([global_orient, body_pose], dim=1).view(B, -1, 3))

    def _project(self, p: _Params, boxes, perspective: Optional[Perspective]):
        """(joints3d (B, K, 3), keypoints (B, K, 2) pixels) in the format's order."""
        rot = self._rot_mats(p.global_orient, p.body_pose)
        if perspective is None:
            # x_px = centre + s (X + t) size / 2: HMR's camera, one fused op with the joints on CUDA
            cam = torch.cat([p.cam[:, :1].exp(), p.cam[:, 1:]], dim=1)
            joints, kp_norm = self.smpl.joints_projected(p.betas, rot, cam, self.fmt.joint_set)
            joints, kp_norm = joints[:, self.rows], kp_norm[:, self.rows]
            return joints, boxes[:, None, :2] + kp_norm * boxes[:, None, 2:] / 2
        _, joints = self.smpl.pose_body(p.betas, rot, False, self.fmt.joint_set)
        joints = joints[:, self.rows]
        X = joints + p.cam[:, None]
        z = X[..., 2:].clamp(min=1e-3)
        return joints, perspective.focal[:, None] * X[..., :2] / z + perspective.center[:, None]

    # -- the objective ----------------------------------------------------------------------
    def _data_term(self, pred_px, target, boxes, keep):
        """Geman-McClure on the residual in box units, weighted by confidence squared: (B,)."""
        sigma2 = self.settings.sigma ** 2
        r = (pred_px - target[..., :2]) / (boxes[:, None, 2:] / 2)
        d2 = (r * r).sum(-1)
        rho = sigma2 * d2 / (sigma2 + d2)
        w = (target[..., 2] ** 2) * keep
        return (w * rho).sum(-1) / w.sum(-1).clamp(min=1e-9)

    def _objective(self, p: _Params, target, boxes, keep, perspective, weight: float, sequence_pairs):
        s = self.settings
        joints, pred = self._project(p, boxes, perspective)
        loss = self._data_term(pred, target, boxes, keep)
        if weight > 0:
            loss = loss + weight * (s.pose_prior * self.pose_prior(p.body_pose) + s.shape_prior * shape_prior(p.betas)
                                    + s.bending * bending_prior(p.body_pose))
            if self.discriminator is not None and s.discriminator > 0:
                rot = self._rot_mats(p.global_orient, p.body_pose)[:, 1:]
                score = self.discriminator(rot, p.betas)
                loss = loss + weight * s.discriminator * (score - 1).pow(2).flatten(1).mean(1)
        if sequence_pairs is not None and s.smooth > 0:
            a, b = sequence_pairs
            theta = torch.cat([p.body_pose, p.betas], dim=1)
            jump = (theta[a] - theta[b]).pow(2).sum(-1)
            loss = loss.index_add(0, a, s.smooth * jump)
        return loss, joints, pred

    def _run(self, p: _Params, params, iters, target, boxes, keep, perspective, anneal, sequence_pairs):
        opt = torch.optim.Adam(params, lr=self.settings.lr)
        loss = None
        for it in range(iters):
            weight = anneal[min(len(anneal) - 1, it * len(anneal) // max(iters, 1))] if anneal else 0.0
            loss, _, _ = self._objective(p, target, boxes, keep, perspective, weight, sequence_pairs)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        return loss

    # -- the fit ------------------------------------------------------------------------------
    def fit(self, keypoints, boxes=None, init: Optional[dict] = None, perspective: Optional[Perspective] = None,
            sequence_ids=None) -> FitResult:
        """keypoints (B, K, 3): pixels + confidence in the format's order. boxes: the people's
        boxes (B, 4) x1, y1, x2, y2 (default: around their keypoints), or the square boxes
        (B, 3) (cx, cy, size) the weak camera lives in. init: a dict of
        global_orient (B, 3), body_pose (B, 69), betas (B, NB), cam (B, 3) weak (s, tx, ty) to
        start from (e.g. HMR's prediction), any of them; the rest start from the mean body,
        or for coco17 without a body_pose (settings.start "learned"), from the keypoint
        initializer's guess (hmr_fast.fit.initializer) in the same boxes.
        sequence_ids (B,): rows with the same id, in order, are one person's frames (smoothness)."""
        s = self.settings
        device = self.rows.device
        target = torch.as_tensor(keypoints, dtype=torch.float32, device=device)
        B, K = target.shape[:2]
        if K != self.fmt.num_keypoints:
            raise ValueError(f"keypoints have {K} per person; format {self.fmt.name} has {self.fmt.num_keypoints}")
        box = people_boxes(target, boxes)
        keep = self.modelled.to(device).to(target.dtype).expand(B, K)
        torso = torch.zeros(K, device=device)
        torso[list(self.fmt.torso)] = 1.0
        pairs = _sequence_pairs(sequence_ids, device)
        start, learned = self._first_start(B, target, box, keep, init, device)
        p = _Params(*start)

        # 1. camera and global orientation from the torso (the pose and shape stay)
        if s.torso_iters:
            self._run(p, [p.cam, p.global_orient], s.torso_iters, target, box, keep * torso, None, (), None)
        flipped = torch.zeros(B, dtype=torch.bool, device=device)
        # 2. everything; both orientations for the first iterations where asked
        if s.try_flip and s.flip_iters and B:
            go, bp, be, ca = p.rows(slice(None))
            both = _Params(torch.cat([go, _turned_around(go)]), torch.cat([bp, bp]), torch.cat([be, be]),
                           torch.cat([ca, ca]))
            t2, b2, k2 = torch.cat([target, target]), torch.cat([box, box]), torch.cat([keep, keep])
            pairs2 = None if pairs is None else (torch.cat([pairs[0], pairs[0] + B]), torch.cat([pairs[1], pairs[1] + B]))
            n = min(s.flip_iters, s.iters)
            anneal = tuple(s.anneal[:1])
            loss2 = self._run(both, list(both.parameters()), n, t2, b2, k2, None, anneal, pairs2)
            flipped = loss2[B:] < loss2[:B]
            pick = torch.where(flipped, torch.arange(B, device=device) + B, torch.arange(B, device=device))
            p = _Params(*both.rows(pick))
            rest = s.iters - n
        else:
            rest = s.iters
        if perspective is not None:
            p = _Params(p.global_orient.detach(), p.body_pose.detach(), p.betas.detach(),
                        _weak_to_translation(p.cam.detach(), box, perspective))
        anneal = s.anneal if not (s.try_flip and s.flip_iters) else s.anneal[1:] or s.anneal
        self._run(p, list(p.parameters()), rest, target, box, keep, perspective, anneal, pairs)
        with torch.no_grad():
            loss, joints, pred = self._objective(p, target, box, keep, perspective, s.anneal[-1], pairs)
        nan = torch.full_like(pred[..., :1], float("nan"))
        modelled = self.modelled.to(device)[None, :, None]
        cam = p.cam.detach() if perspective is not None else torch.cat([p.cam[:, :1].exp(), p.cam[:, 1:]], 1).detach()
        return FitResult(
            betas=p.betas.detach(), body_pose=p.body_pose.detach(), global_orient=p.global_orient.detach(),
            camera=cam, boxes=box, joints3d=torch.where(modelled, joints.detach(), nan.expand_as(joints)),
            keypoints2d=torch.where(modelled, pred.detach(), nan.expand_as(pred)), loss=loss.detach(),
            flipped=flipped, camera_model="weak" if perspective is None else "perspective", learned_start=learned)

    def _first_start(self, B, keypoints, boxes, keep, init: Optional[dict], device) -> tuple:
        """(the start (`_start`'s tensors), learned (B,) bool): init, with what it lacks guessed
        by the keypoint initializer from the keypoints in their boxes where the settings ask
        for it and init gives no pose; with start "best" and a given pose, per person the
        better of the two starts by the objective (the priors at their final weight)."""
        given = "body_pose" in (init or {})
        no = torch.zeros(B, dtype=torch.bool, device=device)
        if self.settings.start == "mean" or self.fmt.name != "coco17" or not B or \
                (given and self.settings.start != "best"):
            return self._start(B, init, device), no
        guess = default_initializer().start(keypoints.detach().cpu(), boxes.detach().cpu())
        if not given:
            return self._start(B, {**guess, **(init or {})}, device), ~no
        starts = [self._start(B, init, device),
                  self._start(B, {**guess, **({"betas": init["betas"]} if "betas" in init else {})}, device)]
        with torch.no_grad():
            loss = [self._objective(_Params(*start), keypoints, boxes, keep, None, self.settings.anneal[-1], None)[0]
                    for start in starts]
        better = loss[1] < loss[0]
        return tuple(torch.where(better[:, None], b, a) for a, b in zip(*starts)), better

    def _start(self, B, init, device):
        init = init or {}
        nb = getattr(self.smpl, "num_betas", 10)
        as_t = lambda v, shape: torch.as_tensor(v, dtype=torch.float32, device=device).reshape(shape)  # noqa: E731
        go = as_t(init["global_orient"], (B, 3)) if "global_orient" in init else \
            torch.tensor(UPRIGHT, device=device).expand(B, 3)
        bp = as_t(init["body_pose"], (B, 69)) if "body_pose" in init else torch.zeros(B, 69, device=device)
        be = as_t(init["betas"], (B, nb)) if "betas" in init else torch.zeros(B, nb, device=device)
        cam = as_t(init["cam"], (B, 3)) if "cam" in init else \
            torch.tensor([MEAN_SCALE, 0.0, 0.0], device=device).expand(B, 3)
        cam = torch.cat([cam[:, :1].clamp(min=1e-3).log(), cam[:, 1:]], dim=1)  # the scale as its log: s > 0
        return go, bp, be, cam


def _weak_to_translation(cam, boxes, perspective: Perspective) -> torch.Tensor:
    """The translation whose perspective view matches the weak camera (log s, tx, ty) in its box."""
    s = cam[:, 0].exp()
    depth = 2 * perspective.focal.mean(1) / (s * boxes[:, 2])
    offset = (boxes[:, :2] - perspective.center) * depth[:, None] / perspective.focal
    return torch.cat([cam[:, 1:] + offset, depth[:, None]], dim=1)


def _sequence_pairs(sequence_ids, device):
    if sequence_ids is None:
        return None
    ids = np.asarray(sequence_ids)
    a = np.flatnonzero(ids[1:] == ids[:-1])
    if not len(a):
        return None
    return torch.as_tensor(a, device=device), torch.as_tensor(a + 1, device=device)


def fit_keypoints2d(smpl, keypoints, fmt: KeypointFormat, boxes=None, init=None, perspective=None,
                    settings: Optional[FitSettings] = None, pose_prior=None, discriminator=None,
                    sequence_ids=None) -> FitResult:
    """SMPL fitted to 2D keypoints (see the module docstring and KeypointFitter.fit)."""
    fitter = KeypointFitter(smpl, fmt, settings, pose_prior, discriminator)
    return fitter.fit(keypoints, boxes, init, perspective, sequence_ids)


@dataclass
class Fit3DResult:
    betas: torch.Tensor
    body_pose: torch.Tensor
    global_orient: torch.Tensor
    transl: torch.Tensor  # (B, 3)
    joints3d: torch.Tensor  # (B, K, 3) the fitted keypoints, translated, the format's order
    loss: torch.Tensor  # (B,)


def fit_joints3d(smpl, joints, fmt: KeypointFormat, iters: int = 150, lr: float = 0.05,
                 settings: Optional[FitSettings] = None, pose_prior=None) -> Fit3DResult:
    """SMPL fitted to 3D joints (B, K, 3) or (B, K, 4) with a confidence column, in the
    format's order: the global orientation and translation from the torso (Kabsch), then
    Adam on the squared distances + the priors."""
    s = replace(settings or FitSettings(), lr=lr)
    fitter = KeypointFitter(smpl, fmt, s, pose_prior)
    device = fitter.rows.device
    target = torch.as_tensor(joints, dtype=torch.float32, device=device)
    B, K = target.shape[:2]
    conf = target[..., 3] if target.shape[-1] == 4 else torch.ones(B, K, device=device)
    conf = conf * fitter.modelled.to(device)
    target = target[..., :3]
    nb = getattr(smpl, "num_betas", 10)
    go, transl = _kabsch_start(smpl, fitter, target, conf)
    p = _Params(go, torch.zeros(B, 69, device=device), torch.zeros(B, nb, device=device), transl)

    def objective(weight):
        rot = fitter._rot_mats(p.global_orient, p.body_pose)
        _, j = smpl.pose_body(p.betas, rot, False, fmt.joint_set)
        j = j[:, fitter.rows] + p.cam[:, None]
        d2 = ((j - target) ** 2).sum(-1)
        loss = (conf * d2).sum(-1) / conf.sum(-1).clamp(min=1e-9)
        prior = s.pose_prior * fitter.pose_prior(p.body_pose) + s.shape_prior * shape_prior(p.betas) \
            + s.bending * bending_prior(p.body_pose)
        return loss + 0.01 * weight * prior, j

    opt = torch.optim.Adam(p.parameters(), lr=s.lr)
    for it in range(iters):
        weight = s.anneal[min(len(s.anneal) - 1, it * len(s.anneal) // max(iters, 1))]
        loss, _ = objective(weight)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        loss, j = objective(s.anneal[-1])
    return Fit3DResult(p.betas.detach(), p.body_pose.detach(), p.global_orient.detach(), p.cam.detach(), j, loss)


def _kabsch_start(smpl, fitter, target, conf):
    """Root orientation and translation aligning the rest body's keypoints to the targets."""
    B = target.shape[0]
    device = target.device
    rest_rot = torch.eye(3, device=device).expand(B, 24, 3, 3)
    _, rest = smpl.pose_body(torch.zeros(B, getattr(smpl, "num_betas", 10), device=device), rest_rot, False,
                             fitter.fmt.joint_set)
    rest = rest[:, fitter.rows]
    w = conf[..., None]
    mu_r = (w * rest).sum(1) / w.sum(1).clamp(min=1e-9)
    mu_t = (w * target).sum(1) / w.sum(1).clamp(min=1e-9)
    H = ((rest - mu_r[:, None]) * w).transpose(1, 2) @ (target - mu_t[:, None])
    U, _, Vh = torch.linalg.svd(H)
    d = torch.sign(torch.linalg.det(Vh.transpose(1, 2) @ U.transpose(1, 2)))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = Vh.transpose(1, 2) @ D @ U.transpose(1, 2)
    go = torch.as_tensor(rotmat_to_axis_angle(R.cpu().numpy()), dtype=torch.float32, device=device)
    # the root joint is the rotation centre: transl = mu_t - R mu_r shifted by the root's rest place
    root = rest.new_zeros(B, 3) if not hasattr(smpl, "J_template") else smpl.J_template[0].expand(B, 3)
    transl = mu_t - (R @ (mu_r - root)[..., None]).squeeze(-1) - root
    return go, transl
