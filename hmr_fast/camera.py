"""Crops and HMR's camera: from frame pixels to the model's input, and from its output back.

A person box is square, (cx, cy, size) in frame pixels. One 2x3 affine matrix
(`crop_matrix`) takes the frame to an S x S crop of that box; training adds a scale,
rotation and flip to it (hmr_fast.data.augment), inference uses it plain.

Crop coordinates: pixel centres at integers 0..S-1; normalised = (2 p + 1) / S - 1, so the
crop's outer edges are -1 and 1 and its centre is 0 (HMR's keypoint convention). In frame
pixels a normalised point u of box (cx, cy, size) is p = centre + u * size / 2.
Camera frame for 3D: x right, y down, z forward, the same axes as the image.

HMR's weak-perspective camera (s, tx, ty) maps a model-frame point X to normalised crop
coordinates: x2d = s * (X[:2] + [tx, ty]).

The model's input is RGB, normalised with ImageNet's mean and std (torchvision's).
Functions here take numpy arrays unless they say torch; `project_weak_perspective` takes either.
"""
from __future__ import annotations

import functools

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ---------------------------------------------------------------------------- the camera
def project_weak_perspective(points, cam):
    """HMR's camera: x2d = s * (X[..., :2] + [tx, ty]); points (B, J, 3), cam (B, 3) = (s, tx, ty).
    Torch tensors or numpy arrays."""
    return cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:])


def fit_weak_perspective(points, keypoints, weights):
    """The weak camera (B, 3) = (s, tx, ty) that best maps points (B, J, 3) onto keypoints
    (B, J, 2) in weighted least squares (weights (B, J)): x = s X + s t is linear in s and
    s t, so it has a closed form (torch). s is kept above 1e-3."""
    import torch

    w = weights[..., None]
    total = w.sum(1).clamp(min=1e-9)
    X, x = points[..., :2], keypoints
    X_mean, x_mean = (w * X).sum(1) / total, (w * x).sum(1) / total
    dX, dx = X - X_mean[:, None], x - x_mean[:, None]
    s = ((w * dX * dx).sum((1, 2)) / (w * dX * dX).sum((1, 2)).clamp(min=1e-9)).clamp(min=1e-3)
    return torch.cat([s[:, None], x_mean / s[:, None] - X_mean], dim=1)


def project_pinhole(points, focal: float, width: int, height: int) -> np.ndarray:
    """Camera-frame points (..., 3) to pixels (..., 2) through a pinhole camera whose
    principal point is the image centre (pixel centres at integer coordinates)."""
    points = np.asarray(points)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    return focal * points[..., :2] / points[..., 2:3] + centre


def vertices_to_pixels(vertices: np.ndarray, cam: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(B, V, 3) model-frame points -> x, y frame pixels and z depth in the same pixel scale,
    through the weak perspective and the crop boxes (B, 3)."""
    cam = np.asarray(cam)
    xy = to_pixels(project_weak_perspective(vertices, cam), boxes)
    z = vertices[..., 2:3] * cam[:, None, :1] * (np.asarray(boxes)[:, None, 2:3] / 2)
    return np.concatenate([xy, z], axis=-1)


# ------------------------------------------------------------------------- crop matrices
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
    """The (img_size, img_size) crop `matrix` cuts from `image`; outside the image is black."""
    import cv2  # here, so `import hmr_fast` stays free of OpenCV

    return cv2.warpAffine(image, matrix, (img_size, img_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def to_normalised(points_px: np.ndarray, img_size: int) -> np.ndarray:
    """Crop pixels -> normalised crop coordinates [-1, 1]."""
    return (2 * points_px + 1) / img_size - 1


def transform_keypoints(keypoints: np.ndarray, matrix: np.ndarray, img_size: int) -> np.ndarray:
    """(J, 3) source pixels + visibility -> (J, 3) normalised crop coordinates + visibility.

    Only positions move; left/right labels are swapped separately (augment.flip_keypoints).
    """
    out = keypoints.astype(np.float64).copy()
    out[:, :2] = to_normalised(keypoints[:, :2] @ matrix[:, :2].T + matrix[:, 2], img_size)
    out[:, :2] *= out[:, 2:3] > 0  # invisible keypoints carry no position
    return out


# --------------------------------------------------------------------------------- boxes
def as_box(box) -> np.ndarray:
    """One box as (cx, cy, size) float64 from (x1, y1, x2, y2); the square around it."""
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ValueError(f"box must be 4 finite numbers (x1, y1, x2, y2), got {box.tolist()}")
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box must have x2 > x1 and y2 > y1, got {box.tolist()}")
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)])


def box_to_xyxy(box) -> np.ndarray:
    """(cx, cy, size) -> (x1, y1, x2, y2)."""
    cx, cy, size = np.asarray(box, dtype=np.float64)
    half = size / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def box_intersections(a, b) -> np.ndarray:
    """(N, M) areas where boxes a (N, 4) and b (M, 4) overlap, both x1, y1, x2, y2."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(hi - lo, 0, None), axis=2)


def box_areas(boxes) -> np.ndarray:
    """(N,) areas of boxes (N, 4) x1, y1, x2, y2 (0 for empty ones)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)


def box_iou(a, b) -> np.ndarray:
    """IoU (N, M) of boxes a (N, 4) and b (M, 4), x1, y1, x2, y2 (0 where both are empty)."""
    inter = box_intersections(a, b)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def full_frame_box(height: int, width: int) -> np.ndarray:
    """The square box around the whole frame (the long side; the short side is padded)."""
    return np.array([(width - 1) / 2, (height - 1) / 2, float(max(height, width))])


def centre_box(height: int, width: int, fraction: float = 0.8) -> np.ndarray:
    """A square box in the middle of the frame, `fraction` of the short side."""
    return np.array([(width - 1) / 2, (height - 1) / 2, fraction * min(height, width)])


def keypoint_box(keypoints_px: np.ndarray, valid=None, expand: float = 1.4, min_size: float = 16.0):
    """The square box (cx, cy, size) around keypoints (N, 2), `expand` times their extent,
    or None when fewer than 2 keypoints are valid."""
    pts = np.asarray(keypoints_px, dtype=np.float64)
    mask = np.isfinite(pts).all(1) if valid is None else (np.asarray(valid, bool) & np.isfinite(pts).all(1))
    if mask.sum() < 2:
        return None
    lo, hi = pts[mask].min(0), pts[mask].max(0)
    return np.array([*(lo + hi) / 2, max(float((hi - lo).max()) * expand, min_size)])


def crop(frame: np.ndarray, box, img_size: int) -> np.ndarray:
    """(img_size, img_size, 3) uint8 crop of `frame` (H, W, 3) inside box (cx, cy, size)."""
    cx, cy, size = box
    return crop_image(frame, crop_matrix((cx, cy), size, img_size), img_size)


def to_pixels(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Normalised crop coordinates (B, N, >=2) -> frame pixels (B, N, 2) for boxes (B, 3)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    centre, half = boxes[:, None, :2], boxes[:, None, 2:3] / 2
    return centre + points[..., :2] * half


# ------------------------------------------------------------------ the model's input
def normalise_image(rgb: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> (3, S, S) float32 with ImageNet's mean and std (torchvision's)."""
    x = (rgb.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def normalise_images(images, gains=None):
    """A torch batch of uint8 crops (B, 3, S, S) -> float32 normalised with ImageNet's
    statistics, on the images' device; gains (B, 3) are the colour augmentation's
    per-channel factors (the result clipped to 255 before normalising, as SPIN does).
    Datasets return uint8 so the workers and the host-to-device copy move a quarter of the
    bytes; this runs on the GPU.
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
