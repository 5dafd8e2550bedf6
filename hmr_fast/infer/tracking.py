"""Where to crop the next frame: a user box, a detector, or the previous frame's keypoints.

`KeypointTracker` keeps one person: the next crop is the square box around this frame's
predicted keypoints (those that landed inside the crop), `expand` times their extent,
smoothed with a One-Euro filter so the crop does not jitter. When the prediction does not
look like a person in the crop (too few keypoints inside it, or a body a few pixels tall)
the track is lost and the crop falls back to where it started: the whole frame, the
centre, or the user's box. With a detector, the detection that overlaps the track most
(or, with no track, the largest and most confident one) is followed; videos with many
people therefore follow one of them, and the run says so.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from hmr_fast import camera
from hmr_fast.camera import as_box, centre_box, full_frame_box, keypoint_box

from .smoothing import OneEuroFilter

STARTS = ("full", "centre")


def box_iou(a, b) -> float:
    """IoU of two square boxes (cx, cy, size)."""
    return float(camera.box_iou(camera.box_to_xyxy(a), camera.box_to_xyxy(b))[0, 0])


class KeypointTracker:
    """One person's crop box, frame to frame (see the module docstring).

    start: "full" (the whole frame), "centre", or a box (cx, cy, size) to start from and
    fall back to. min_inside: keypoints that must land inside the crop for the track to
    hold. min_size: smallest plausible body, as a fraction of the crop side.
    expand: the crop side over the keypoints' extent. Training crops are 1.2x the mesh's
    extent, about 1.4x the keypoints', but a regressor's keypoints shrink toward the mean
    pose (the demo model predicts 0.9x the true extent in a 1.4x crop), so at 1.4 each
    crop is smaller than the last and the track collapses onto the torso; at 1.6 the
    box settles (next box / box = expand x predicted / true extent crosses 1 from above).
    """

    def __init__(self, frame_shape, start="full", expand: float = 1.6, min_inside: int = 8,
                 min_size: float = 0.15, smooth_cutoff: float = 2.0, smooth_beta: float = 0.02):
        h, w = frame_shape[:2]
        if isinstance(start, str):
            if start not in STARTS:
                raise ValueError(f"start must be one of {STARTS} or a box, got {start!r}")
            self.start_box = full_frame_box(h, w) if start == "full" else centre_box(h, w)
        else:
            self.start_box = np.asarray(start, dtype=np.float64).reshape(3)
        if expand <= 1.0:
            raise ValueError(f"expand must be > 1, got {expand}")
        self.frame_shape = (h, w)
        self.expand, self.min_inside, self.min_size = float(expand), int(min_inside), float(min_size)
        self.filter = OneEuroFilter(smooth_cutoff, smooth_beta)
        self.current = self.start_box.copy()
        self.lost_frames = 0
        self.tracking = False

    def box(self) -> np.ndarray:
        return self.current.copy()

    def update(self, keypoints_norm: np.ndarray, crop_box: np.ndarray, t: float) -> bool:
        """Take one frame's prediction (normalised keypoints (J, 2) in crop_box) and set the
        next box; returns whether the person is still tracked."""
        inside = (np.abs(keypoints_norm) <= 1.0).all(1)
        extent = float((keypoints_norm[inside].max(0) - keypoints_norm[inside].min(0)).max()) / 2 if inside.any() else 0
        if inside.sum() < self.min_inside or extent < self.min_size:
            self._lose()
            return False
        cx, cy, size = crop_box
        pixels = np.asarray([cx, cy]) + keypoints_norm * size / 2
        target = self._rate_limit(keypoint_box(pixels, inside, self.expand))
        self.current = self._limit(self.filter(target, t))
        self.tracking = True
        self.lost_frames = 0
        return True

    def follow(self, box, t: float) -> None:
        """Move to a detection: smoothed when it continues the track, a jump when it does not."""
        box = np.asarray(box, dtype=np.float64)
        if box_iou(box, self.current) < 0.3:
            self.reset_to(box, t)
        else:
            self.current = self._limit(self.filter(box, t))
        self.tracking = True
        self.lost_frames = 0

    def _rate_limit(self, target) -> np.ndarray:
        """One frame moves the box at most a quarter of its side and scales it by 0.85..1.2:
        a single bad prediction cannot throw the crop off the person."""
        cx, cy, size = self.current
        step = np.clip(target[:2] - (cx, cy), -0.25 * size, 0.25 * size)
        return np.array([cx + step[0], cy + step[1], float(np.clip(target[2], 0.85 * size, 1.2 * size))])

    def reset_to(self, box, t: Optional[float] = None) -> None:
        """Jump to a box without smoothing across the jump."""
        self.filter.reset()
        self.current = self._limit(np.asarray(box, dtype=np.float64))
        if t is not None:
            self.filter(self.current, t)

    def _lose(self) -> None:
        self.lost_frames += 1
        self.tracking = False
        self.filter.reset()
        self.current = self.start_box.copy()

    def _limit(self, box) -> np.ndarray:
        """Keep the box's centre on the frame and its size between 16 px and 2x the frame."""
        h, w = self.frame_shape
        cx, cy, size = box
        return np.array([np.clip(cx, 0, w - 1), np.clip(cy, 0, h - 1), np.clip(size, 16.0, 2.0 * max(h, w))])


def pick_detection(detections: np.ndarray, previous=None) -> Optional[np.ndarray]:
    """One box (cx, cy, size) from detections (K, 5) = x1, y1, x2, y2, score: the best overlap
    with `previous` when there is one, else the largest x score."""
    if detections is None or len(detections) == 0:
        return None
    boxes = [as_box(d[:4]) for d in detections]
    scores = np.asarray([d[4] if len(d) > 4 else 1.0 for d in detections], float)
    if previous is not None:
        ious = np.array([box_iou(b, previous) for b in boxes])
        if ious.max() > 0.1:
            return boxes[int(ious.argmax())]
    return boxes[int(np.argmax([b[2] ** 2 * s for b, s in zip(boxes, scores)]))]


class MotionDetector:
    """A person detector for a still camera with no learned weights: OpenCV's MOG2
    background subtraction, the largest moving blob with a person-like aspect ratio.
    (opencv-python-headless 5.0 ships no HOG people detector.) Returns (K, 5) boxes."""

    def __init__(self, min_area_fraction: float = 0.01, history: int = 100):
        import cv2

        self.cv2 = cv2
        self.subtractor = cv2.createBackgroundSubtractorMOG2(history=history, detectShadows=False)
        self.min_area_fraction = float(min_area_fraction)
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        cv2 = self.cv2
        mask = self.subtractor.apply(frame)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel)
        mask = cv2.dilate(mask, self.kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_area = self.min_area_fraction * frame.shape[0] * frame.shape[1]
        out = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            if w * h >= min_area and 0.15 < w / max(h, 1) < 2.5:
                out.append([x, y, x + w, y + h, min(1.0, cv2.contourArea(c) / (w * h))])
        return np.asarray(out, dtype=np.float64).reshape(-1, 5)

