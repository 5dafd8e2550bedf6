"""Who is who from frame to frame: people's identities over a video, from their keypoints.

`PeopleTracker` follows every detected person with norfair's tracker (the maintained fork
`norfair-enough`, BSD-3; `pip install "hmr_fast[people]"`): a Kalman filter per track on the
17 COCO keypoints (velocities start free, variance 300 px^2, so a walker's speed is learnt
from its first two frames), and a match between detections and tracks by a keypoint
distance that is weighted by the keypoints' confidences and divided by the person's box
diagonal, so a near person and a far one are held to the same standard. A new track is
confirmed after it is matched in a few frames (`initialization_delay`); one that goes
unmatched lingers for `hit_counter_max` frames. With `reid`, a lost track (occluded, out of
the frame) is kept for `reid_max_frames` frames in all, and a new track that starts where
the lost one was last seen, or where its motion would have carried it, with a similar box
height, takes over the lost track's id while it is being confirmed (re-identification by
position and size, no appearance; so it needs initialization_delay >= 1).

Known limit: norfair matches confirmed tracks before new ones, so when two people cross and
the detector misses one of them in that frame, a newly (re)appeared person next to it can
take over its track. Measured on the crowd clip's ground-truth keypoints (2 px noise, 10% of
frames and 5% of people dropped, 40 random runs each): no identity change at a real walking
pace (90 frames 640x360); some identity change in 3 of 40 runs at twice that pace (45 frames)
and in 5 of 40 at three times (30 frames; or a detector run on every 3rd frame).

Detections are duck-typed: anything with `.box` (4,) x1, y1, x2, y2 px, `.score` and
`.keypoints` (17, 3) x, y px + confidence in COCO's order (`hmr_fast.infer.people`'s
`PersonDetection`, or your own). Ids are ints from 0, in the order tracks are confirmed.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

_INSTALL_HINT = 'PeopleTracker needs norfair (norfair-enough): pip install "hmr_fast[people]"'


def _import_norfair():
    try:
        import norfair
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return norfair


def _diagonal(box) -> float:
    box = np.asarray(box, dtype=np.float64)
    return float(np.hypot(box[2] - box[0], box[3] - box[1]))


class PeopleTracker:
    """Track ids of the people in a video (see the module docstring).

    frame_size: (height, width) px of the frames, to clip boxes to.
    distance_threshold: largest keypoint distance, in box diagonals, that still matches.
    hit_counter_max: frames a track survives unmatched before it counts as lost.
    initialization_delay: how established a new track must be before it is reported
        (about twice the number of frames it must be matched in); below hit_counter_max.
    reid: give a lost person their old id back when they reappear (see the docstring).
    reid_max_frames: how long a lost track can still be taken over, in frames in all.
    reid_distance_threshold: largest re-identification distance (box diagonals of offset
        plus the log of the box-height ratio).
    keypoint_threshold: keypoints at or below this confidence are ignored.
    min_keypoints: detections with fewer confident keypoints are not tracked.
    """

    def __init__(self, frame_size, distance_threshold: float = 0.3, hit_counter_max: int = 10,
                 initialization_delay: int = 3, reid: bool = True, reid_max_frames: int = 60,
                 reid_distance_threshold: float = 0.6, keypoint_threshold: float = 0.2, min_keypoints: int = 3):
        norfair = _import_norfair()
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        if not 0 <= initialization_delay < hit_counter_max:
            raise ValueError(f"initialization_delay must be in [0, hit_counter_max={hit_counter_max}), "
                             f"got {initialization_delay}")
        self.keypoint_threshold = float(keypoint_threshold)
        self.min_keypoints = int(min_keypoints)
        options = {}
        if reid:
            options = dict(reid_distance_function=self._reid_distance,
                           reid_distance_threshold=float(reid_distance_threshold),
                           reid_hit_counter_max=max(1, int(reid_max_frames) - int(hit_counter_max)))
        # norfair warns that a per-pair distance is slower than a vectorised one; with a few
        # people per frame the per-pair cost is nothing next to the detector's.
        log = logging.getLogger("norfair.tracker")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            self._tracker = norfair.Tracker(
                distance_function=self._distance, distance_threshold=float(distance_threshold),
                hit_counter_max=int(hit_counter_max), initialization_delay=int(initialization_delay),
                detection_threshold=self.keypoint_threshold, filter_factory=norfair.OptimizedKalmanFilterFactory(
                    R=4.0, Q=1.0, vel_variance=300.0), **options)
        finally:
            log.setLevel(level)
        self._Detection = norfair.Detection
        self._ids: dict = {}  # norfair's id -> ours
        self._last_frame = None

    # -- distances ---------------------------------------------------------------------
    def _distance(self, detection, tracked) -> float:
        """Confidence-weighted mean keypoint distance / box diagonal, detection to track."""
        weight = np.where((detection.scores > self.keypoint_threshold) & tracked.detected_at_least_once_points,
                          detection.scores, 0.0)
        if weight.sum() <= 0:
            return np.inf
        error = np.linalg.norm(detection.points - tracked.estimate, axis=1)
        scale = max(detection.data["diagonal"], tracked.last_detection.data["diagonal"], 1.0)
        return float((weight * error).sum() / weight.sum() / scale)

    def _reid_distance(self, new, old) -> float:
        """A new track against a lost one: the offset of the new box's centre from where the
        lost one was last seen or from where its Kalman motion would have carried it,
        whichever is nearer, in box diagonals, plus |log| of the ratio of box heights."""
        new_box, old_box = new.last_detection.data["box"], old.last_detection.data["box"]
        centre = (new_box[:2] + new_box[2:]) / 2
        last = (old_box[:2] + old_box[2:]) / 2
        seen = old.detected_at_least_once_points
        drift = (old.estimate[seen] - old.last_detection.points[seen]).mean(0) if seen.any() else np.zeros(2)
        offset = min(np.linalg.norm(centre - last), np.linalg.norm(centre - last - drift))
        scale = max(new.last_detection.data["diagonal"], old.last_detection.data["diagonal"], 1.0)
        heights = max(new_box[3] - new_box[1], 1.0), max(old_box[3] - old_box[1], 1.0)
        return float(offset / scale + abs(np.log(heights[0] / heights[1])))

    # -- tracking ----------------------------------------------------------------------
    def update(self, detections: Sequence, frame_index: int) -> list:
        """This frame's detections -> [(track id, detection)] of the confirmed tracks matched
        in this frame, by id. Frames must come in increasing order; frames skipped since the
        last call count as frames without detections."""
        frame_index = int(frame_index)
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frames must come in increasing order: {frame_index} after {self._last_frame}")
        height, width = self.frame_size
        candidates = []
        for det in detections:
            keypoints = np.asarray(det.keypoints, dtype=np.float64)
            if keypoints.shape != (17, 3):
                raise ValueError(f"a detection's keypoints must be (17, 3), got {keypoints.shape}")
            scores = np.where(np.isfinite(keypoints).all(1), keypoints[:, 2], 0.0)
            if (scores > self.keypoint_threshold).sum() < self.min_keypoints:
                continue
            box = np.clip(np.asarray(det.box, dtype=np.float64).reshape(4), 0, [width, height, width, height])
            candidates.append(self._Detection(
                np.nan_to_num(keypoints[:, :2]), scores=scores,
                data={"frame": frame_index, "box": box, "diagonal": _diagonal(box), "detection": det}))
        if self._last_frame is not None:
            for _ in range(frame_index - self._last_frame - 1):
                self._tracker.update(None)
        self._last_frame = frame_index
        tracked = self._tracker.update(candidates)
        out = []
        for obj in tracked:
            data = obj.last_detection.data
            if data["frame"] != frame_index:
                continue  # not seen in this frame
            if obj.id not in self._ids:
                self._ids[obj.id] = len(self._ids)
            out.append((self._ids[obj.id], data["detection"]))
        return sorted(out, key=lambda pair: pair[0])
