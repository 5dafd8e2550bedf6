"""Person boxes and crops: frames + boxes in, model-sized crops out, and back to pixels.

A box is square, (cx, cy, size) in frame pixels, the way the training crops are made
(hmr_fast.data.augment: centre + side, `crop_matrix`). The model's keypoints are normalised
crop coordinates u in [-1, 1] whose outer edges are the box's edges, so in frame pixels
    p = centre + u * size / 2.
Crops that reach past the frame are padded with black, as the training crops are.
"""
from __future__ import annotations

import numpy as np

from hmr_fast.data.augment import crop_image, crop_matrix


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


def full_frame_box(height: int, width: int) -> np.ndarray:
    """The square box around the whole frame (the long side; the short side is padded)."""
    return np.array([(width - 1) / 2, (height - 1) / 2, float(max(height, width))])


def centre_box(height: int, width: int, fraction: float = 0.8) -> np.ndarray:
    """A square box in the middle of the frame, `fraction` of the short side."""
    return np.array([(width - 1) / 2, (height - 1) / 2, fraction * min(height, width)])


def crop(frame: np.ndarray, box, img_size: int) -> np.ndarray:
    """(img_size, img_size, 3) uint8 crop of `frame` (H, W, 3) inside box (cx, cy, size)."""
    cx, cy, size = box
    return crop_image(frame, crop_matrix((cx, cy), size, img_size), img_size)


def to_pixels(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Normalised crop coordinates (B, N, >=2) -> frame pixels (B, N, 2) for boxes (B, 3)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    centre, half = boxes[:, None, :2], boxes[:, None, 2:3] / 2
    return centre + points[..., :2] * half


def keypoint_box(keypoints_px: np.ndarray, valid=None, expand: float = 1.4, min_size: float = 16.0):
    """The square box (cx, cy, size) around keypoints (N, 2), `expand` times their extent,
    or None when fewer than 2 keypoints are valid."""
    pts = np.asarray(keypoints_px, dtype=np.float64)
    mask = np.isfinite(pts).all(1) if valid is None else (np.asarray(valid, bool) & np.isfinite(pts).all(1))
    if mask.sum() < 2:
        return None
    lo, hi = pts[mask].min(0), pts[mask].max(0)
    return np.array([*(lo + hi) / 2, max(float((hi - lo).max()) * expand, min_size)])
