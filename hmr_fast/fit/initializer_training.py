"""Training the keypoint initializer (initializer.py) on synthetic people made on the fly.

A person: a pose from the pose sampler (some from the pose prior's mixture), betas, a
global orientation (any heading, mostly upright, some tilt), a weak camera (pixels per
metre, an offset). Their COCO-17 keypoints are the SMPL layer's "hmr19" joints read
through the format's rows and projected, exactly as the fitter reads them. Then a detector
is simulated: its box (the body's extent, a random margin per side; or no box, so that
`people_boxes` frames the keypoints), a cut at a frame edge (points beyond it lost, the box
clipped), noise proportional to the box, outliers, low and zero scores, left-right swaps
of limb pairs. The network sees those keypoints in the box `people_boxes` makes; the truth
is what the camera saw in that box.

Loss per person, with the SMPL layer in the loop (`joints_projected`, with gradients):
    |reprojected joints - true joints|   HMR's 19 joints in the box (halves: 1), all of
                                         them, seen or not: where a point is lost the
                                         network should still guess it; divided by the
                                         body's reach in the box where that exceeds 1
  + w_3d |root-centred 3D joints - truth|   metres
  + w_rot |R - R_true|^2 over the 24 rotations; the global orientation's term is the
                                         smaller of the truth's and the truth turned around
                                         (a 2D keypoint set often fits both: the 2D and 3D
                                         terms decide where the keypoints do)
  + w_betas |betas - truth|^2
Single thread, one seed: the run, and so the file, is the same every time.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from hmr_fast import metrics
from hmr_fast.body import SMPL
from hmr_fast.data.keypoints import COCO17_NAMES
from hmr_fast.data.pose_sampler import sample_betas, sample_poses
from hmr_fast.rotations import rot6d_to_rotmat, rodrigues

from .start import people_boxes
from .formats import keypoint_format
from .priors import default_pose_prior

COCO17 = keypoint_format("coco17")
# COCO's left-right pairs: a detector's most common confusion.
LR_PAIRS = tuple((i, COCO17_NAMES.index(n.replace("left", "right"))) for i, n in enumerate(COCO17_NAMES)
                 if n.startswith("left"))
# Turned around: pi about the camera's vertical axis (fitter._turned_around).
TURN = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
LSP14 = slice(0, 14)  # HMR19's first 14: the joints PA-MPJPE is reported on


@dataclass
class TrainSettings:
    steps: int = 8000
    batch: int = 256
    lr: float = 1e-3
    final_lr: float = 2e-5  # cosine decay to this
    seed: int = 0
    width: int = 512
    blocks: int = 3
    w_3d: float = 1.0
    w_rot: float = 0.1
    w_betas: float = 0.01
    turn_free_root: bool = True  # the root's rotation term: min over the truth and the truth turned around
    prior_share: float = 0.15  # poses drawn from the pose prior's mixture instead of the sampler
    eval_people: int = 512
    eval_every: int = 1000


@dataclass
class DetectorNoise:
    """How far a simulated detector strays; the defaults are the training's ranges."""

    noise: float = 0.04  # keypoint noise std, up to this fraction of the box's long side
    outlier: float = 0.02  # chance a keypoint lands somewhere else (std 15% of the box)
    missing: float = 0.2  # up to this share of a person's keypoints have score 0
    low_score: float = 0.1  # chance of a low score (0.05-0.3) on a kept keypoint
    swap: float = 0.03  # chance per left-right pair of swapped labels
    truncate: float = 0.25  # chance the frame's edge cuts the person
    no_box: float = 0.2  # chance there is no detector box (the box comes from the keypoints)


# ------------------------------------------------------------------------- the people
def sample_orientations(rng, n) -> np.ndarray:
    """(n, 3) axis-angle in the camera frame: upright (pi about x), any heading, a small tilt
    for most and a large one for a tenth (bending, falling, lying)."""
    heading = Rotation.from_rotvec(np.c_[np.zeros(n), rng.uniform(0, 2 * np.pi, n), np.zeros(n)])
    spread = np.where(rng.random(n) < 0.9, 0.12, 0.7)[:, None]
    tilt = Rotation.from_rotvec(np.c_[rng.normal(0, 1, n), np.zeros(n), rng.normal(0, 1, n)] * spread)
    return (Rotation.from_rotvec([np.pi, 0, 0]) * tilt * heading).as_rotvec()


def sample_body_poses(rng, n, prior=None, prior_share: float = 0.0) -> np.ndarray:
    """(n, 69): the pose sampler's, and a share drawn from the pose prior's mixture."""
    pose = sample_poses(rng, n)[:, 3:]
    take = rng.random(n) < prior_share if prior is not None else np.zeros(n, bool)
    if take.any():
        a = prior.arrays
        k = rng.choice(len(a["weights"]), size=int(take.sum()), p=a["weights"])
        chol = np.linalg.cholesky(a["covariances"])[k]
        pose[take] = a["means"][k] + (chol @ rng.normal(size=(len(k), pose.shape[1], 1)))[..., 0]
    return pose


def synthetic_people(smpl, rng, n, detector: DetectorNoise = DetectorNoise(), prior=None,
                     prior_share: float = 0.0) -> dict:
    """n people seen by a simulated detector: keypoints (n, 17, 3) pixels + score, boxes
    (n, 4) x1, y1, x2, y2 (NaN where there is none), square boxes (n, 3) as the fitter makes
    them, and the truth: pose (n, 72), betas (n, 10), cam (n, 3) weak in the square box,
    joints (n, 19, 3) HMR19 in the model frame, keypoints2d (n, 19, 2) in the square box."""
    pose = np.c_[sample_orientations(rng, n), sample_body_poses(rng, n, prior, prior_share)]
    betas = sample_betas(rng, n, smpl.num_betas)
    pose_t, betas_t = torch.tensor(pose, dtype=torch.float32), torch.tensor(betas, dtype=torch.float32)
    with torch.no_grad():
        joints, _ = smpl.joints_projected(betas_t, rodrigues(pose_t.view(n, 24, 3)),
                                          torch.tensor([[1.0, 0.0, 0.0]]).expand(n, 3), "hmr19")
    J = joints.numpy().astype(np.float64)
    # The camera: pixels per metre and an offset; p = f (X + t).
    f = rng.uniform(50, 400, n)[:, None, None]
    t = rng.uniform(-3, 3, (n, 1, 2))
    px = f * (J[..., :2] + t)  # (n, 19, 2): all of HMR's 19, head top included
    kp = np.concatenate([px[:, list(COCO17.rows)], np.ones((n, 17, 1))], axis=-1)
    box = _detector_box(rng, px, detector)
    _truncate(rng, kp, box, detector)
    _detector_noise(rng, kp, box, detector)
    box[rng.random(n) < detector.no_box] = np.nan
    kp_t = torch.tensor(kp, dtype=torch.float32)
    square = people_boxes(kp_t, box).double().numpy()
    # The truth in the square box: u = (p - c) / (size / 2) = (2 f / size) (X + t - c / f).
    half = square[:, None, 2:] / 2
    cam = np.c_[f[:, 0] / half[:, 0], t[:, 0] - square[:, :2] / f[:, 0]]
    return {"keypoints": kp_t, "boxes": box, "square": torch.tensor(square, dtype=torch.float32),
            "pose": pose_t, "betas": betas_t, "cam": torch.tensor(cam, dtype=torch.float32), "joints": joints,
            "keypoints2d": torch.tensor((px - square[:, None, :2]) / half, dtype=torch.float32)}


def _detector_box(rng, px, d: DetectorNoise) -> np.ndarray:
    """(n, 4): the body's extent (its 19 joints, head top included) and a random margin per side."""
    lo, hi = px.min(1), px.max(1)
    side = (hi - lo).max(1, keepdims=True)
    margin = rng.uniform(-0.02, 0.12, (len(px), 4)) * side
    return np.c_[lo - margin[:, :2], hi + margin[:, 2:]]


def _truncate(rng, kp, box, d: DetectorNoise) -> None:
    """A frame edge across some people (mostly below: legs out of frame): the keypoints
    beyond it get score 0 and the box ends at it. In place."""
    for i in np.flatnonzero(rng.random(len(kp)) < d.truncate):
        edge = rng.choice(4, p=[0.1, 0.15, 0.6, 0.15])  # top, left, bottom, right
        axis, keep_low = (1, False) if edge == 0 else (0, False) if edge == 1 else (1, True) if edge == 2 else (0, True)
        lo, hi = box[i, axis], box[i, axis + 2]
        frac = rng.uniform(0.4, 0.95)
        cut = lo + frac * (hi - lo) if keep_low else hi - frac * (hi - lo)
        lost = kp[i, :, axis] > cut if keep_low else kp[i, :, axis] < cut
        kp[i, lost] = 0.0
        box[i, axis + 2 if keep_low else axis] = cut


def _detector_noise(rng, kp, box, d: DetectorNoise) -> None:
    """Noise proportional to the box, outliers, scores that fall with the error, low and
    zero scores, swapped left-right pairs. In place."""
    n = len(kp)
    side = (box[:, 2:] - box[:, :2]).max(1)[:, None, None]
    seen = kp[..., 2:] > 0
    sigma = rng.uniform(0, d.noise, (n, 1, 1)) * side
    err = rng.normal(size=(n, 17, 2)) * sigma
    outlier = rng.random((n, 17, 1)) < d.outlier
    err = np.where(outlier, rng.normal(size=(n, 17, 2)) * 0.15 * side, err)
    kp[..., :2] += err
    # A detector's confidence: a person's level, lower where its point is off.
    off = np.linalg.norm(err, axis=-1, keepdims=True) / side
    score = np.clip(rng.uniform(0.4, 1.0, (n, 1, 1)) + rng.normal(0, 0.1, (n, 17, 1)) - 3 * off, 0.05, 1.0)
    score = np.where(rng.random((n, 17, 1)) < d.low_score, rng.uniform(0.05, 0.3, (n, 17, 1)), score)
    missing = rng.random((n, 17, 1)) < rng.uniform(0, d.missing, (n, 1, 1))
    kp[..., 2:] = np.where(seen & ~missing, score, 0.0)
    kp[kp[..., 2] == 0] = 0.0  # unseen: no position, as COCO's v = 0
    for a, b in LR_PAIRS:
        swap = rng.random(n) < d.swap
        kp[swap, a], kp[swap, b] = kp[swap, b].copy(), kp[swap, a].copy()


# ------------------------------------------------------------------------- the loss
def losses(smpl, model, people, s: TrainSettings) -> dict:
    """The terms of the module docstring, each a mean over the batch."""
    rot6d, betas, cam = model(people["keypoints"], people["square"])
    rot = rot6d_to_rotmat(rot6d)
    joints, kp2d = smpl.joints_projected(betas, rot, cam, "hmr19")
    true_rot = rodrigues(people["pose"].view(-1, 24, 3))
    root = ((rot[:, 0] - true_rot[:, 0]) ** 2).sum((1, 2))
    if s.turn_free_root:
        root = torch.minimum(root, ((rot[:, 0] - TURN @ true_rot[:, 0]) ** 2).sum((1, 2)))
    # A body cut short by the frame can reach far outside its box: its 2D error counts
    # relative to its size, so a few such people do not drown the rest.
    extent = people["keypoints2d"].abs().amax((1, 2)).clamp(min=1.0)
    body = ((rot[:, 1:] - true_rot[:, 1:]) ** 2).sum((2, 3)).mean(1)
    return {
        "2d": ((kp2d - people["keypoints2d"]).norm(dim=-1).mean(1) / extent).mean(),
        "3d": (metrics.align_by_pelvis(joints) - metrics.align_by_pelvis(people["joints"])).norm(dim=-1).mean(),
        "rot": (root / 24 + body * 23 / 24).mean(),
        "betas": ((betas - people["betas"]) ** 2).mean(),
    }


def evaluate(smpl, model, people) -> dict:
    """PA-MPJPE (mm, LSP's 14) and the 2D error (box halves) of the network alone."""
    with torch.no_grad():
        rot6d, betas, cam = model(people["keypoints"], people["square"])
        joints, kp2d = smpl.joints_projected(betas, rot6d_to_rotmat(rot6d), cam, "hmr19")
    pa = 1000 * metrics.pa_mpjpe(joints[:, LSP14], people["joints"][:, LSP14])
    return {"pa_mpjpe_mm": round(float(pa.mean()), 2),
            "error_2d": round(float((kp2d - people["keypoints2d"]).norm(dim=-1).median()), 4)}


def train(make_model, s: TrainSettings, log=print) -> tuple:
    """Adam on fresh synthetic batches, cosine-decayed: (the network make_model(width, blocks)
    made after seeding, how it went (for the file))."""
    torch.set_num_threads(1)
    torch.manual_seed(s.seed)
    model = make_model(s.width, s.blocks)
    rng = np.random.default_rng(s.seed)
    smpl = SMPL(joint_set="hmr19", backend="reference")
    prior = default_pose_prior()
    held_out = synthetic_people(smpl, np.random.default_rng(s.seed + 1_000_003), s.eval_people, prior=prior,
                                prior_share=s.prior_share)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    t0 = time.perf_counter()
    for step in range(s.steps):
        lr = s.final_lr + 0.5 * (s.lr - s.final_lr) * (1 + math.cos(math.pi * step / max(s.steps, 1)))
        for group in opt.param_groups:
            group["lr"] = lr
        people = synthetic_people(smpl, rng, s.batch, prior=prior, prior_share=s.prior_share)
        terms = losses(smpl, model, people, s)
        loss = terms["2d"] + s.w_3d * terms["3d"] + s.w_rot * terms["rot"] + s.w_betas * terms["betas"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            model.eval()
            figures = evaluate(smpl, model, held_out)
            model.train()
            log(f"step {step + 1}: loss {loss.item():.4f} " + " ".join(f"{k} {v.item():.4f}" for k, v in terms.items())
                + f" | held-out {figures} | {time.perf_counter() - t0:.0f} s")
    model.eval()
    log(f"trained {s.steps} steps in {time.perf_counter() - t0:.0f} s")
    # No times in what the file keeps: the same command writes the same bytes.
    return model, {**asdict(s), **evaluate(smpl, model, held_out), "torch": str(torch.__version__)}
