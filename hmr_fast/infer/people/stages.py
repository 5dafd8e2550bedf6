"""The stages that photographs (`hmr-fast images`) and videos (`hmr-fast video --people
all`) share, person by person: the crop around a detection, HMR on the crops, the start of
the fit (HMR's prediction or the learned start from the keypoints, whichever reprojects
better), the batched fit, the meshes drawn far to near, and the npz rows."""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import numpy as np
import torch

from hmr_fast import camera
from hmr_fast.fit import FitSettings, KeypointFitter, keypoint_format
from hmr_fast.render import simplified_faces
from hmr_fast.rotations import rodrigues, rotmat_to_axis_angle

from ..overlay import MeshOverlay
from ..pipeline import DETECTION_EXPAND, BodyPoser

MIN_KEYPOINT_SCORE = 0.2  # detected keypoints below this confidence do not pull the fit

# Every key of a people npz with its per-row shape and dtype, so that a run that found
# nobody still writes every key (with zero rows). Videos add frame/track_id and photos
# image/person (below).
ROW_FIELDS = {
    "box": ((4,), np.float64),  # x1, y1, x2, y2 px
    "score": ((), np.float64),
    "keypoints2d": ((17, 3), np.float64),  # detected: x, y px + confidence, COCO order
    "keypoints2d_fit": ((17, 2), np.float64),  # the fitted model's COCO keypoints, px
    "betas": ((10,), np.float64),
    "body_pose": ((69,), np.float64),
    "global_orient": ((3,), np.float64),
    "camera": ((3,), np.float64),  # weak perspective s, tx, ty in crop_box
    "crop_box": ((3,), np.float64),  # cx, cy, size px
    "loss": ((), np.float64),  # the fit's objective at the end (at the start with no fit)
}


def people_count(n: int) -> str:
    return "1 person" if n == 1 else f"{n} people"


def scene(predictor, mesh_faces: int) -> tuple:
    """(poser, overlay): the body model posed from parameters (HMR's keypoints) and the
    z-buffer that draws every person of a frame in one call, with a simplified mesh of
    `mesh_faces` faces (0: the model's own)."""
    poser = BodyPoser(predictor.backend.smpl_model, "hmr19", predictor.device)
    faces = poser.faces
    if mesh_faces:
        faces = simplified_faces(poser.smpl.v_template.cpu().numpy(), faces, mesh_faces)
    return poser, MeshOverlay(faces, predictor.device, rasterizer="torch")


def track_color(track_id: int) -> tuple:
    """A BGR colour per track: hues a golden-ratio step apart, so neighbours differ."""
    r, g, b = colorsys.hsv_to_rgb((0.13 + 0.618034 * track_id) % 1.0, 0.55, 0.95)
    return (int(255 * b), int(255 * g), int(255 * r))


def crop_boxes(detections) -> np.ndarray:
    """(P, 3) square crops (cx, cy, size) around the detections' boxes, with the training
    crops' margin."""
    return np.array([camera.as_box(d.box) * (1.0, 1.0, DETECTION_EXPAND) for d in detections]).reshape(-1, 3)


def depth_order(cam: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """People's indices far to near: under weak perspective a body's distance is inversely
    proportional to its scale in pixels, s * size."""
    return np.argsort(cam[:, 0] * boxes[:, 2], kind="stable")


def detected_keypoints(detections) -> np.ndarray:
    """(P, 17, 3) the detections' keypoints, confidences below MIN_KEYPOINT_SCORE set to 0."""
    keypoints = np.stack([d.keypoints for d in detections]).astype(np.float64).reshape(-1, 17, 3)
    keypoints[..., 2] = np.where(keypoints[..., 2] >= MIN_KEYPOINT_SCORE, keypoints[..., 2], 0.0)
    return keypoints


def hmr_parameters(predictor, frames_and_boxes) -> tuple:
    """HMR in one call on the crops of [(frame, boxes (P, 3))]: (rot_mats (N, 24, 3, 3),
    betas (N, 10), cam (N, 3)) float64, people in order."""
    crops = [camera.crop(frame, box, predictor.img_size) for frame, boxes in frames_and_boxes for box in boxes]
    if not crops:
        return np.zeros((0, 24, 3, 3)), np.zeros((0, 10)), np.zeros((0, 3))
    raw = predictor.run_batches(np.stack(crops))
    return tuple(raw[key].astype(np.float64) for key in ("rot_mats", "betas", "cam"))


@dataclass
class Fitted:
    """People after the fit (or as they started, with no iterations)."""
    rot_mats: np.ndarray  # (P, 24, 3, 3)
    betas: np.ndarray  # (P, 10)
    cam: np.ndarray  # (P, 3) weak s, tx, ty in the crop boxes
    keypoints2d: np.ndarray  # (P, 17, 2) the model's COCO keypoints, px (NaN: not modelled)
    loss: np.ndarray  # (P,)
    start: np.ndarray  # (P,) which start each person took: 0 the given one, 1 the learned one


def _as_init(rot_mats, betas, cam) -> dict:
    pose = rotmat_to_axis_angle(np.asarray(rot_mats)).reshape(len(rot_mats), -1)
    return {"global_orient": pose[:, :3], "body_pose": pose[:, 3:], "betas": np.asarray(betas),
            "cam": np.asarray(cam)}


START_CHOICES = ("auto", "hmr", "learned")


def frame_fit_settings(iters: int) -> FitSettings:
    """A frame's fit: `iters` Adam iterations from the start, no torso stage nor turned-around
    try (the start has the orientation). lr 0.01: from the learned start, Adam at 0.05 bends
    the limbs in depth to chase the keypoints' noise (benchmarks/results/initializer_2026-12-07.md:
    PA-MPJPE 76.0 mm at the start, 82.0 after 10 iterations at 0.05, 74.9 at 0.01)."""
    return FitSettings(iters=iters, torso_iters=0, try_flip=False, lr=0.01)


class PeopleFit:
    """The batched SMPLify fit of the people of a frame to their detected COCO keypoints,
    from the start given (HMR's prediction, or a track's previous frame) and the learned
    start from the keypoints (`hmr_fast.fit.initializer`): start "auto" takes per person the
    better of the two by the fit's objective (FitSettings.start "best"), "learned" the
    learned one (with the given shape), "hmr" the given one. With no iterations the given
    start is kept (HMR alone). `__call__` runs `settings.iters` iterations as one Adam run
    (the video's per-frame budget); `converge` goes on in blocks of `block` iterations, each
    person until its objective improves by less than `tol` (relative) over a block, up to
    `cap` iterations (photographs)."""

    def __init__(self, smpl, settings: FitSettings, start: str = "auto"):
        if start not in START_CHOICES:
            raise ValueError(f"--fit-start must be one of {', '.join(START_CHOICES)}, got {start!r}")
        self.start = start if settings.iters else "hmr"
        self.settings = replace(settings, start="best" if self.start == "auto" else "learned")
        self.fitter = KeypointFitter(smpl, keypoint_format("coco17"), self.settings)

    def _init(self, rot_mats, betas, cam) -> dict:
        init = _as_init(rot_mats, betas, cam)
        return {"betas": init["betas"]} if self.start == "learned" else init

    def __call__(self, keypoints, boxes, rot_mats, betas, cam) -> Fitted:
        return self._run(self.fitter, keypoints, boxes, self._init(rot_mats, betas, cam))

    def converge(self, keypoints, boxes, rot_mats, betas, cam, cap: int, block: int = 25,
                 tol: float = 0.01) -> Fitted:
        first = self._with(iters=min(block, cap))
        out = self._run(first, keypoints, boxes, self._init(rot_mats, betas, cam))
        # later blocks go on from where the last ended; the priors' annealing is done
        later = self._with(iters=block, anneal=(1.0,), start="learned")
        active = np.ones(len(out.loss), bool)
        done, previous = first.settings.iters, out.loss.copy()
        while done < cap and active.any():
            rows = np.flatnonzero(active)
            more = self._run(later, keypoints[rows], np.asarray(boxes)[rows],
                             _as_init(out.rot_mats[rows], out.betas[rows], out.cam[rows]))
            for name in ("rot_mats", "betas", "cam", "keypoints2d", "loss"):
                getattr(out, name)[rows] = getattr(more, name)
            gain = (previous[rows] - more.loss) / np.maximum(np.abs(previous[rows]), 1e-12)
            active[rows[gain < tol]] = False
            previous[rows] = more.loss
            done += block
        return out

    def _with(self, **changes) -> KeypointFitter:
        settings = replace(self.settings, **changes)
        if settings == self.settings:
            return self.fitter
        return KeypointFitter(self.fitter.smpl, self.fitter.fmt, settings, self.fitter.pose_prior)

    @staticmethod
    def _run(fitter, keypoints, boxes, init) -> Fitted:
        with torch.enable_grad():
            fit = fitter.fit(keypoints, boxes, init)
        pose = torch.cat([fit.global_orient, fit.body_pose], 1).cpu().double()
        rot = rodrigues(pose.view(len(pose), -1, 3)).numpy()
        return Fitted(rot_mats=rot, betas=fit.betas.cpu().numpy().astype(np.float64),
                      cam=fit.camera.cpu().numpy().astype(np.float64), keypoints2d=fit.keypoints2d.cpu().numpy(),
                      loss=fit.loss.cpu().numpy().astype(np.float64),
                      start=fit.learned_start.cpu().numpy().astype(np.int64))


def draw_people(frame, poser, overlay, rot_mats, betas, cam, boxes, colors) -> None:
    """Every mesh drawn into `frame` in one z-buffer pass, far to near."""
    _, _, vertices_px = poser(rot_mats, betas, cam, boxes)
    order = depth_order(np.asarray(cam), np.asarray(boxes))
    overlay.meshes(frame, vertices_px[order], [colors[i] for i in order])


def person_rows(detections, boxes, rot_mats, betas, cam, keypoints_fit, loss) -> list:
    """One npz row per person (ROW_FIELDS)."""
    pose = rotmat_to_axis_angle(np.asarray(rot_mats)).reshape(len(detections), -1)
    return [{"box": np.asarray(d.box, dtype=np.float64), "score": float(d.score),
             "keypoints2d": np.asarray(d.keypoints, dtype=np.float64), "keypoints2d_fit": keypoints_fit[i],
             "betas": betas[i], "body_pose": pose[i, 3:], "global_orient": pose[i, :3], "camera": cam[i],
             "crop_box": boxes[i], "loss": float(loss[i])} for i, d in enumerate(detections)]
