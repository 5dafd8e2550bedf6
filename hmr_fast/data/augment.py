"""Training's random augmentations: scale, in-plane rotation, left/right flip, colour.

The scale, rotation and flip are part of the crop's one 2x3 affine matrix
(hmr_fast.camera.crop_matrix); keypoints go through the same matrix, so image and labels can
never disagree. The flip there is x -> S-1-x in crop pixels (x -> -x in normalised
coordinates); what the matrix cannot do, swapping left and right labels and mirroring 3D
joints and SMPL poses, the flip_* functions here do. The colour gains are applied with the
normalisation (hmr_fast.camera.normalise_images).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from hmr_fast.camera import rotation_2d

from .keypoints import SMPL24_FLIP


@dataclass(frozen=True)
class Augmentation:
    """One sample's augmentation: box scale factor, rotation (degrees), flip, RGB gains
    (the gains are applied with the normalisation, `normalise_images`)."""

    scale: float = 1.0
    rotation: float = 0.0
    flip: bool = False
    color: tuple = (1.0, 1.0, 1.0)


IDENTITY = Augmentation()


def sample_augmentation(rng: np.random.Generator, scale_factor=0.25, rotation_factor=30.0,
                        rotation_prob=0.6, flip_prob=0.5, color_noise=0.4) -> Augmentation:
    """SPIN's recipe: box scale 1 + N(0, sf) clipped to +-sf; rotation N(0, rf) clipped to
    +-2 rf with probability rotation_prob; flip with flip_prob; per-channel gains U(1 +- c)."""
    scale = float(np.clip(1 + rng.normal() * scale_factor, 1 - scale_factor, 1 + scale_factor))
    rotation = float(np.clip(rng.normal() * rotation_factor, -2 * rotation_factor, 2 * rotation_factor))
    rotation = rotation if rng.random() < rotation_prob else 0.0
    flip = bool(rng.random() < flip_prob)
    color = tuple(float(g) for g in rng.uniform(1 - color_noise, 1 + color_noise, 3))
    return Augmentation(scale, rotation, flip, color)


def flip_keypoints(keypoints: np.ndarray, flip_perm) -> np.ndarray:
    """Mirror (J, C>=2) normalised keypoints: swap left/right, x -> -x."""
    out = keypoints[..., list(flip_perm), :].copy()
    out[..., 0] = -out[..., 0]
    return out


def flip_joints3d(joints: np.ndarray, flip_perm) -> np.ndarray:
    """Mirror (J, C>=3) camera-frame 3D joints: swap left/right, x -> -x."""
    return flip_keypoints(joints, flip_perm)


def flip_pose(pose: np.ndarray) -> np.ndarray:
    """Mirror SMPL poses (..., 72) axis-angle across the body's x = 0 plane.

    With M = diag(-1, 1, 1), a mirrored rotation is M R M, whose axis-angle is (ax, -ay, -az);
    each joint also trades places with its mirror joint (the root stays).
    """
    pose = np.asarray(pose)
    out = pose.reshape(*pose.shape[:-1], 24, 3)[..., list(SMPL24_FLIP), :].copy()
    out[..., 1:] = -out[..., 1:]
    return out.reshape(pose.shape)


def rotate_joints3d(joints: np.ndarray, degrees: float) -> np.ndarray:
    """Turn camera-frame 3D joints about the camera axis as the crop turns the image."""
    out = joints.copy()
    out[..., :2] = joints[..., :2] @ rotation_2d(degrees).T
    return out


def rotate_global_orient(pose: np.ndarray, degrees) -> np.ndarray:
    """SMPL poses (..., 72) with their roots turned about the camera axis by the crop
    rotation (degrees: one number, or one per pose)."""
    pose = np.asarray(pose)
    flat = pose.reshape(-1, 72).astype(np.float64)
    degrees = np.broadcast_to(np.asarray(degrees, dtype=np.float64), pose.shape[:-1]).reshape(-1)
    R = np.zeros((len(degrees), 3, 3))
    R[:, :2, :2] = np.moveaxis(rotation_2d(degrees), -1, 0)  # the crop's in-plane turn, one per pose
    R[:, 2, 2] = 1.0
    out = flat.copy()
    out[:, :3] = (Rotation.from_matrix(R) * Rotation.from_rotvec(flat[:, :3])).as_rotvec()
    return out.reshape(pose.shape).astype(pose.dtype)


def augment_poses(poses: np.ndarray, rotation, flip) -> np.ndarray:
    """SMPL poses (B, 72) of the samples' own frames seen through their crops: rotation
    (B,) degrees, then flip (B,) bool, as augment_labels does one sample."""
    out = rotate_global_orient(poses, rotation)
    return np.where(np.asarray(flip, dtype=bool)[:, None], flip_pose(out), out)


def unaugment_poses(poses: np.ndarray, rotation, flip) -> np.ndarray:
    """The inverse of augment_poses: poses seen through the crops, back in the samples' frames."""
    out = np.where(np.asarray(flip, dtype=bool)[:, None], flip_pose(poses), poses)
    return rotate_global_orient(out, -np.asarray(rotation, dtype=np.float64))


def augment_labels(aug: Augmentation, joints3d=None, pose=None, flip_perm=None):
    """Apply the rotation then the flip to 3D joints (J, 4) and an SMPL pose (72,)."""
    if joints3d is not None:
        joints3d = rotate_joints3d(joints3d, aug.rotation) if aug.rotation else joints3d
        joints3d = flip_joints3d(joints3d, flip_perm) if aug.flip else joints3d
    if pose is not None:
        pose = rotate_global_orient(pose, aug.rotation) if aug.rotation else pose
        pose = flip_pose(pose) if aug.flip else pose
    return joints3d, pose
