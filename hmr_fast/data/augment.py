"""Crop and augmentation: scale, in-plane rotation, left/right flip, colour.

One 2x3 affine matrix takes the source image to the crop; keypoints go through the same
matrix, so image and labels can never disagree. The flip is part of that matrix (x -> S-1-x
in crop pixels, i.e. x -> -x in normalised coordinates); what the matrix cannot do, swapping
left and right labels and mirroring 3D joints and SMPL poses, the flip_* functions do.

Crop coordinates: pixel centres at integers 0..S-1; normalised = (2 p + 1) / S - 1, so the
crop's outer edges are -1 and 1 and its centre is 0 (HMR's keypoint convention). Camera
frame for 3D: x right, y down, z forward, the same axes as the image.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from .keypoints import SMPL24_FLIP

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


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


def rotation_2d(degrees: float) -> np.ndarray:
    """2x2 rotation in image axes (x right, y down): positive turns the content clockwise."""
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def crop_matrix(center, box_size: float, img_size: int, rotation: float = 0.0, flip: bool = False) -> np.ndarray:
    """2x3 affine: source pixels -> crop pixels of a box of box_size around center.

    p_crop = F (S / box) R (p - center) + (S - 1) / 2, with F = diag(-1, 1) when flipping.
    """
    A = (img_size / box_size) * rotation_2d(rotation)
    if flip:
        A = np.diag([-1.0, 1.0]) @ A
    half = (img_size - 1) / 2
    b = half - A @ np.asarray(center, dtype=np.float64)
    return np.concatenate([A, b[:, None]], axis=1)


def crop_image(image: np.ndarray, matrix: np.ndarray, img_size: int) -> np.ndarray:
    return cv2.warpAffine(image, matrix, (img_size, img_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def to_normalised(points_px: np.ndarray, img_size: int) -> np.ndarray:
    return (2 * points_px + 1) / img_size - 1


def from_normalised(points: np.ndarray, img_size: int) -> np.ndarray:
    return ((points + 1) * img_size - 1) / 2


def transform_keypoints(keypoints: np.ndarray, matrix: np.ndarray, img_size: int) -> np.ndarray:
    """(J, 3) source pixels + visibility -> (J, 3) normalised crop coordinates + visibility.

    Only positions move; left/right labels are swapped separately (`flip_keypoints`).
    """
    out = keypoints.astype(np.float64).copy()
    out[:, :2] = to_normalised(keypoints[:, :2] @ matrix[:, :2].T + matrix[:, 2], img_size)
    out[:, :2] *= out[:, 2:3] > 0  # invisible keypoints carry no position
    return out


def flip_keypoints(keypoints: np.ndarray, flip_perm) -> np.ndarray:
    """Mirror (J, C>=2) normalised keypoints: swap left/right, x -> -x."""
    out = keypoints[..., list(flip_perm), :].copy()
    out[..., 0] = -out[..., 0]
    return out


def flip_joints3d(joints: np.ndarray, flip_perm) -> np.ndarray:
    """Mirror (J, C>=3) camera-frame 3D joints: swap left/right, x -> -x."""
    return flip_keypoints(joints, flip_perm)


def flip_pose(pose: np.ndarray) -> np.ndarray:
    """Mirror an SMPL pose (72,) axis-angle across the body's x = 0 plane.

    With M = diag(-1, 1, 1), a mirrored rotation is M R M, whose axis-angle is (ax, -ay, -az);
    each joint also trades places with its mirror joint (the root stays).
    """
    out = pose.reshape(24, 3)[list(SMPL24_FLIP)].copy()
    out[:, 1:] = -out[:, 1:]
    return out.reshape(-1)


def rotate_joints3d(joints: np.ndarray, degrees: float) -> np.ndarray:
    """Turn camera-frame 3D joints about the camera axis as the crop turns the image."""
    out = joints.copy()
    out[..., :2] = joints[..., :2] @ rotation_2d(degrees).T
    return out


def rotate_global_orient(pose: np.ndarray, degrees: float) -> np.ndarray:
    """The SMPL pose (72,) with its root turned about the camera axis by the crop rotation."""
    R = np.eye(3)
    R[:2, :2] = rotation_2d(degrees)
    out = pose.copy()
    out[:3] = (Rotation.from_matrix(R) * Rotation.from_rotvec(pose[:3])).as_rotvec()
    return out


def augment_labels(aug: Augmentation, joints3d=None, pose=None, flip_perm=None):
    """Apply the rotation then the flip to 3D joints (J, 4) and an SMPL pose (72,)."""
    if joints3d is not None:
        joints3d = rotate_joints3d(joints3d, aug.rotation) if aug.rotation else joints3d
        joints3d = flip_joints3d(joints3d, flip_perm) if aug.flip else joints3d
    if pose is not None:
        pose = rotate_global_orient(pose, aug.rotation) if aug.rotation else pose
        pose = flip_pose(pose) if aug.flip else pose
    return joints3d, pose


def normalise_image(rgb: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> (3, S, S) float32 with ImageNet's mean and std (torchvision's)."""
    x = (rgb.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def normalise_images(images, gains=None):
    """A batch of uint8 crops (B, 3, S, S) -> float32 normalised with ImageNet's statistics,
    on the images' device; gains (B, 3) are the colour augmentation's per-channel factors
    (the result clipped to 255 before normalising, as SPIN does). Datasets return uint8 so
    the workers and the host-to-device copy move a quarter of the bytes; this runs on the GPU.
    """
    x = images.float()
    if gains is not None:
        x = (x * gains.to(x.device, x.dtype)[:, :, None, None]).clamp_(max=255.0)
    mean, std = _imagenet_stats(x.device)
    return (x - mean) / std


@functools.lru_cache(maxsize=None)
def _imagenet_stats(device):
    """ImageNet's mean and std (3, 1, 1) in 0..255 units on `device`, made once per device:
    a tensor from host memory is a blocking copy, too slow for the video loop."""
    import torch

    return (torch.as_tensor(IMAGENET_MEAN, device=device)[:, None, None] * 255.0,
            torch.as_tensor(IMAGENET_STD, device=device)[:, None, None] * 255.0)
