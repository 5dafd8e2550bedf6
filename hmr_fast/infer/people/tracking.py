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
position and size; so it needs initialization_delay >= 1).

Appearance (DeepSORT's and BoT-SORT's motion + appearance): with the frame passed to
`update(detections, frame_index, frame)`, each detection gets an embedding
(`appearance_embedding`): colour histograms (hue x saturation, plus dark and grey levels)
of the torso (shoulders-hips quad and a band down the spine) and of the legs (bands along
hip-knee-ankle), located from the keypoints so that little of the background inside the
box counts; hue and saturation do not change when a person is lit more or less. A track
keeps a running mean of its embeddings, updated only from detections that another
detection does not cover much (`appearance_overlap`), whose colours are the person's own.
The match cost is the keypoint distance + `appearance_weight` x the appearance distance
(1 - histogram intersection, 0..1), and a pair whose colours differ by more than
`appearance_threshold` does not match at all (unless the detection overlaps another one,
when its colours may be partly the other person's: then they only add to the cost). The
re-identification cost adds the colours the same way, so someone else turning up where a
lost person was expected does not take over their id. About 0.3 ms per person. Without
frames, the tracker works on keypoints alone, as before.

Known limit: norfair matches confirmed tracks before new ones, so when two people cross and
the detector misses one of them in that frame, a person next to it can take over its
track. On keypoints alone, measured on the crowd clip's ground-truth keypoints (2 px
noise, 10% of frames and 5% of people dropped, 40 random runs each): no identity change at
a real walking pace (90 frames 640x360); some identity change in 3 of 40 runs at twice
that pace (45 frames) and in 5 of 40 at three times (30 frames; or a detector run on every
3rd frame). With MoveNet's detections on two rendered 90-frame crowd clips (4 people,
`hmr_fast.infer.clips`, seeds 0 and 5), 5 and 4 identity changes on keypoints alone, 2 and 0
with the frames; the 2 left come from one detection whose keypoints are half on each of two
overlapping people (and whose colours are the other person's).

Detections are duck-typed: anything with `.box` (4,) x1, y1, x2, y2 px, `.score` and
`.keypoints` (17, 3) x, y px + confidence in COCO's order (`hmr_fast.infer.people`'s
`PersonDetection`, or your own). Ids are ints from 0, in the order tracks are confirmed.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from hmr_fast.camera import box_areas, box_intersections

_INSTALL_HINT = 'PeopleTracker needs norfair (norfair-enough): pip install "hmr_fast[people]"'


def _import_norfair():
    try:
        import norfair
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return norfair


# -- appearance ------------------------------------------------------------------------
# Colour histograms of two body regions located from the keypoints: the torso (the shoulders
# and hips quad, and a band along the spine so a side-on torso counts too) and the legs
# (bands along hip-knee-ankle, not down to the shoes), so little of the background inside the
# box counts. Bins: hue x saturation for coloured pixels (a shading change scales V and
# leaves H and S alone, so these bins do not move with the lighting), and a dark bin and
# three grey levels for the pixels whose hue means nothing.
_HUE_BINS, _SAT_BINS, _VAL_BINS = 12, 4, 4  # OpenCV's histogram; S and V bin 0 are grey / dark
_CHROMA_BINS = _HUE_BINS * (_SAT_BINS - 1)
EMBEDDING_BINS = _CHROMA_BINS + _VAL_BINS  # coloured bins, then dark, then 3 greys
_MAX_SIDE = 96  # px: taller people are shrunk to about this height first
_MIN_PIXELS = 12  # a region with fewer pixels (after shrinking) has no histogram
_LEGS = ((11, 13), (13, 15), (12, 14), (14, 16))
_LEG_WIDTH, _SPINE_WIDTH, _QUAD_SHRINK = 0.12, 0.3, 0.7  # of the torso's length; of the quad


def _binning() -> np.ndarray:
    """(H x S x V bins, EMBEDDING_BINS): OpenCV's 3-d HSV histogram -> our bins, with each hue
    bin spread over its two neighbours (a colour on a bin edge lands on both sides)."""
    out = np.zeros((_HUE_BINS, _SAT_BINS, _VAL_BINS, EMBEDDING_BINS))
    for h in range(_HUE_BINS):
        for s in range(_SAT_BINS):
            for v in range(_VAL_BINS):
                if v == 0:
                    out[h, s, v, _CHROMA_BINS] = 1.0  # dark
                elif s == 0:
                    out[h, s, v, _CHROMA_BINS + v] = 1.0  # grey, by its level
                else:
                    for dh, share in ((0, 0.5), (-1, 0.25), (1, 0.25)):
                        out[h, s, v, ((h + dh) % _HUE_BINS) * (_SAT_BINS - 1) + s - 1] += share
    return out.reshape(-1, EMBEDDING_BINS)


_BINNING = _binning()


def appearance_embedding(frame: np.ndarray, box, keypoints, keypoint_threshold: float = 0.2):
    """A person's appearance: (2, EMBEDDING_BINS) colour histograms of the torso and the legs
    (each sums to 1, or is all zeros where that region is not seen), from a BGR uint8 frame,
    the person's box (x1, y1, x2, y2 px) and COCO keypoints (17, 3). None if neither region
    is seen. Positions are only used relative to the person, so the embedding does not
    depend on where the person is; shading changes move it little (see the bins above)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    ok = np.isfinite(kp).all(1) & (kp[:, 2] > keypoint_threshold)
    with_torso = (ok[5] or ok[6]) and (ok[11] or ok[12])
    if not with_torso and not (ok[[11, 12]] & ok[[13, 14]]).any():
        return None
    height, width = frame.shape[:2]
    box = np.asarray(box, dtype=np.float64).reshape(4)
    seen = kp[ok, :2]
    lo = np.maximum(np.floor(np.minimum(box[:2], seen.min(0))), 0).astype(int)
    hi = np.minimum(np.ceil(np.maximum(box[2:], seen.max(0))) + 1, [width, height]).astype(int)
    size = hi - lo
    if size.min() < 2:
        return None
    crop = frame[lo[1]:hi[1], lo[0]:hi[0]]
    if size[1] > _MAX_SIDE:
        size = np.maximum(np.rint(size * (_MAX_SIDE / size[1])), 2).astype(int)
        crop = cv2.resize(crop, (int(size[0]), int(size[1])), interpolation=cv2.INTER_NEAREST)
    pts = (kp[:, :2] - lo) * (size / (hi - lo))  # keypoints in the crop
    scale = 0.0  # of the bands: the torso's length, else a third of the crop's height
    if with_torso:
        neck, pelvis = pts[[5, 6]][ok[[5, 6]]].mean(0), pts[[11, 12]][ok[[11, 12]]].mean(0)
        scale = float(np.hypot(*(neck - pelvis)))
    if scale < 2:
        scale = size[1] / 3.0
    # One label image: 2 on the legs, 1 on the torso (drawn last, so it wins where they meet).
    label = np.zeros((int(size[1]), int(size[0])), np.uint8)
    thickness = max(1, int(round(_LEG_WIDTH * scale)))
    for a, b in _LEGS:
        if ok[a] and ok[b]:
            reach = 0.8 if b >= 15 else 1.0
            ends = np.rint([pts[a] + 0.1 * (pts[b] - pts[a]), pts[a] + reach * (pts[b] - pts[a])]).astype(int)
            cv2.line(label, tuple(ends[0].tolist()), tuple(ends[1].tolist()), 2, thickness)
    if with_torso:
        if ok[[5, 6, 12, 11]].all():
            corners = pts[[5, 6, 12, 11]]
            corners = corners.mean(0) + _QUAD_SHRINK * (corners - corners.mean(0))  # keep off the outline
            cv2.fillConvexPoly(label, np.rint(corners).astype(np.int32), 1)
        # a band down the spine, from a little below the neck to a little above the pelvis
        ends = np.rint([neck + 0.15 * (pelvis - neck), pelvis - 0.1 * (pelvis - neck)]).astype(int)
        cv2.line(label, tuple(ends[0].tolist()), tuple(ends[1].tolist()), 1, max(1, int(round(_SPINE_WIDTH * scale))))
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
    counts = np.stack([cv2.calcHist([hsv], [0, 1, 2], (label == region).view(np.uint8),
                                    [_HUE_BINS, _SAT_BINS, _VAL_BINS], [0, 180, 0, 256, 0, 256]).ravel()
                       for region in (1, 2)])
    totals = counts.sum(1, keepdims=True)
    out = np.where(totals >= _MIN_PIXELS, (counts @ _BINNING) / np.maximum(totals, 1), 0.0)
    return out if out.any() else None


def appearance_distance(a, b):
    """1 - histogram intersection (0 same colours .. 1 no colour in common) of two
    embeddings, averaged over the regions seen in both; None where there is no such region."""
    if a is None or b is None:
        return None
    both = (a.sum(1) > 0) & (b.sum(1) > 0)
    if not both.any():
        return None
    return float(1.0 - np.minimum(a[both], b[both]).sum(1).mean())


def _covered(boxes: np.ndarray) -> np.ndarray:
    """(N,) the largest fraction of each box (N, 4) that another box covers."""
    inter = box_intersections(boxes, boxes)
    np.fill_diagonal(inter, 0)
    return (inter / np.maximum(box_areas(boxes), 1e-9)[:, None]).max(1)


class _AllPairs:
    """norfair's Distance interface over PeopleTracker._distances."""

    def __init__(self, tracker):
        self.tracker = tracker

    def get_distances(self, objects, candidates) -> np.ndarray:
        return self.tracker._distances(list(objects), list(candidates or []))


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
    appearance_weight: weight of the appearance distance (0..1) in the match cost, next to
        the keypoint distance (used when update() is given the frame).
    appearance_threshold: largest appearance distance that still matches (for detections
        that no other detection covers by more than appearance_overlap).
    appearance_rate: how fast a track's mean appearance follows its new detections (after
        the first 1/appearance_rate, which are averaged evenly).
    appearance_overlap: a detection with more than this fraction of its box covered by
        another detection's does not update its track's appearance, and is not held to
        appearance_threshold.
    """

    def __init__(self, frame_size, distance_threshold: float = 0.3, hit_counter_max: int = 10,
                 initialization_delay: int = 3, reid: bool = True, reid_max_frames: int = 60,
                 reid_distance_threshold: float = 0.6, keypoint_threshold: float = 0.2, min_keypoints: int = 3,
                 appearance_weight: float = 0.3, appearance_threshold: float = 0.5, appearance_rate: float = 0.1,
                 appearance_overlap: float = 0.25, report_new: bool = False):
        norfair = _import_norfair()
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        if not 0 <= initialization_delay < hit_counter_max:
            raise ValueError(f"initialization_delay must be in [0, hit_counter_max={hit_counter_max}), "
                             f"got {initialization_delay}")
        self.keypoint_threshold = float(keypoint_threshold)
        self.min_keypoints = int(min_keypoints)
        self.distance_threshold = float(distance_threshold)
        self.reid_distance_threshold = float(reid_distance_threshold)
        self.appearance_weight = float(appearance_weight)
        self.appearance_threshold = float(appearance_threshold)
        self.appearance_rate = float(appearance_rate)
        self.appearance_overlap = float(appearance_overlap)
        # Gating is done here (a pair too far apart in keypoints or in colours gets inf), so
        # norfair's own thresholds only need to let through every gated-in cost.
        slack = self.appearance_weight * 1.0 + 1e-6
        options = {}
        if reid:
            options = dict(reid_distance_function=self._reid_distance,
                           reid_distance_threshold=self.reid_distance_threshold + slack,
                           reid_hit_counter_max=max(1, int(reid_max_frames) - int(hit_counter_max)))
        # norfair's constructor takes a distance's name or a per-pair function (called once per
        # (detection, track): hundreds of calls a frame in a crowd); the tracker takes any
        # object with get_distances in its place, so the name only stands in until ours, the
        # cost of all pairs at once, replaces it
        self._tracker = norfair.Tracker(
            distance_function="euclidean", distance_threshold=self.distance_threshold + slack,
            hit_counter_max=int(hit_counter_max), initialization_delay=int(initialization_delay),
            detection_threshold=self.keypoint_threshold, filter_factory=norfair.OptimizedKalmanFilterFactory(
                R=4.0, Q=1.0, vel_variance=300.0), **options)
        self._tracker.distance_function = _AllPairs(self)
        self._Detection = norfair.Detection
        self.report_new = bool(report_new)
        self.reid = bool(reid)
        self._ids: dict = {}  # norfair's id -> ours
        self._new: dict = {}  # norfair's initializing_id -> ours, for tracks shown before confirmation
        self._next_id = 0
        self._appearance: dict = {}  # norfair's initializing_id -> (running mean embedding, updates)
        self._last_frame = None

    # -- distances ---------------------------------------------------------------------
    def _track_appearance(self, tracked):
        """A track's running mean embedding (trusted), else its last detection's (trusted if
        that detection was clear of the others); None without frames."""
        kept = self._appearance.get(tracked.initializing_id)
        if kept is not None:
            return kept[0], True
        last = tracked.last_detection
        return last.embedding, last.data["clean"]

    def _with_appearance(self, distance: float, threshold: float, mine, theirs, trusted: bool) -> float:
        """distance (gated at threshold) + appearance_weight x the appearance distance, gated
        at appearance_threshold where both appearances are trusted: a detection that overlaps
        another one may show some of the other person's colours, so then colours only weigh
        in; where either side has no appearance, half appearance_threshold."""
        if not distance < threshold:
            return np.inf
        colours = appearance_distance(mine, theirs)
        if colours is None:
            colours = 0.5 * self.appearance_threshold
        elif trusted and colours > self.appearance_threshold:
            return np.inf
        return distance + self.appearance_weight * colours

    def _distances(self, tracks, detections) -> np.ndarray:
        """(detections, tracks) match costs: the confidence-weighted mean keypoint distance
        (over the keypoints the track has seen) in box diagonals (the larger of the two), inf
        where no keypoint counts, + appearance_weight x the colour distance (_with_appearance).
        The keypoint distances of all pairs at once; colours only where those are near enough
        to match."""
        out = np.full((len(detections), len(tracks)), np.inf)
        if not len(detections) or not len(tracks):
            return out
        points = np.stack([d.points for d in detections])  # (D, 17, 2)
        scores = np.stack([d.scores for d in detections])
        seen = np.stack([t.detected_at_least_once_points for t in tracks])  # (T, 17)
        weight = np.where((scores[:, None] > self.keypoint_threshold) & seen[None], scores[:, None], 0.0)
        error = np.linalg.norm(points[:, None] - np.stack([t.estimate for t in tracks])[None], axis=-1)
        total = weight.sum(-1)
        diagonals = np.array([d.data["diagonal"] for d in detections])
        scale = np.maximum(np.maximum(diagonals[:, None], [t.last_detection.data["diagonal"] for t in tracks]), 1.0)
        keypoints = np.where(total > 0, (weight * error).sum(-1) / np.where(total > 0, total, 1.0) / scale, np.inf)
        for d, t in zip(*np.nonzero(keypoints < self.distance_threshold)):
            theirs, trusted = self._track_appearance(tracks[t])
            out[d, t] = self._with_appearance(keypoints[d, t], self.distance_threshold, detections[d].embedding,
                                              theirs, trusted and detections[d].data["clean"])
        return out

    def _reid_position_distance(self, new, old) -> float:
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

    def _reid_distance(self, new, old) -> float:
        """Position and size distance (see _reid_position_distance) + appearance, as _distances."""
        (mine, trusted), (theirs, sure) = self._track_appearance(new), self._track_appearance(old)
        return self._with_appearance(self._reid_position_distance(new, old), self.reid_distance_threshold,
                                     mine, theirs, trusted and sure)

    def _remember_appearance(self, frame_index: int) -> None:
        """Fold this frame's embeddings into the running means of the tracks they matched,
        where the detection was not much covered by another one (then the colours are the
        person's own); forget the tracks norfair dropped."""
        alive = set()
        for obj in self._tracker.tracked_objects:
            alive.add(obj.initializing_id)
            det = obj.last_detection
            if det.data["frame"] != frame_index or det.embedding is None or not det.data["clean"]:
                continue
            kept = self._appearance.get(obj.initializing_id)
            if kept is None:
                self._appearance[obj.initializing_id] = (det.embedding.copy(), 1)
                continue
            mean, count = kept
            rate = max(1.0 / (count + 1), self.appearance_rate)
            seen, known = det.embedding.sum(1) > 0, mean.sum(1) > 0
            mean = mean.copy()
            both = seen & known
            mean[both] = (1 - rate) * mean[both] + rate * det.embedding[both]
            mean[seen & ~known] = det.embedding[seen & ~known]
            self._appearance[obj.initializing_id] = (mean, count + 1)
        for key in set(self._appearance) - alive:
            del self._appearance[key]

    # -- tracking ----------------------------------------------------------------------
    def update(self, detections: Sequence, frame_index: int, frame: np.ndarray | None = None) -> list:
        """This frame's detections -> [(track id, detection)] of the confirmed tracks matched
        in this frame, by id. Frames must come in increasing order; frames skipped since the
        last call count as frames without detections. With `frame` (the BGR uint8 image the
        detections are from), people are told apart by their colours too."""
        frame_index = int(frame_index)
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frames must come in increasing order: {frame_index} after {self._last_frame}")
        if frame is not None:
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frame must be a BGR uint8 image (H, W, 3), got {frame.dtype} {frame.shape}")
            frame = np.ascontiguousarray(frame)
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
            embedding = None
            if frame is not None:
                embedding = appearance_embedding(frame, box, keypoints, self.keypoint_threshold)
            candidates.append(self._Detection(
                np.nan_to_num(keypoints[:, :2]), scores=scores, embedding=embedding,
                data={"frame": frame_index, "box": box, "diagonal": _diagonal(box), "detection": det,
                      "clean": True}))
        if len(candidates) > 1:
            boxes = np.stack([c.data["box"] for c in candidates])
            for c, covered in zip(candidates, _covered(boxes)):
                c.data["clean"] = bool(covered < self.appearance_overlap)
        if self._last_frame is not None:
            for _ in range(frame_index - self._last_frame - 1):
                self._tracker.update(None)
        self._last_frame = frame_index
        tracked = self._tracker.update(candidates)
        self._remember_appearance(frame_index)
        if self.report_new:
            tracked = [o for o in self._tracker.tracked_objects if o.hit_counter_is_positive]
        seen = [o for o in tracked if o.last_detection.data["frame"] == frame_index]
        out = [(self._our_id(o), o.last_detection.data["detection"]) for o in seen if o.id is not None]
        # new tracks, shown before confirmation; not those of detections carried from an earlier
        # frame (`followed`: those people were found before, their track lost them)
        for obj in (o for o in seen if o.id is None and not getattr(o.last_detection.data["detection"], "followed",
                                                                     False)):
            out.append((self._new_id(obj, frame_index, {i for i, _ in out}), obj.last_detection.data["detection"]))
        return sorted(out, key=lambda pair: pair[0])

    def _fresh_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _our_id(self, obj) -> int:
        """Ours for a confirmed norfair track: ints from 0 in the order tracks are first
        reported; one reported while being confirmed keeps that id (unless another track
        holds it by now)."""
        if obj.id not in self._ids:
            early = self._new.pop(obj.initializing_id, None)
            self._ids[obj.id] = early if early is not None and early not in self._ids.values() else self._fresh_id()
        return self._ids[obj.id]

    def _new_id(self, obj, frame_index: int, taken: set) -> int:
        """Ours for a track still being confirmed: the id it was first shown under, else a
        lost track's that re-identification picks (not one shown in this frame), else a new one."""
        if obj.initializing_id not in self._new:
            lost = self._lost_match(obj, frame_index, taken) if self.reid else None
            self._new[obj.initializing_id] = lost if lost is not None else self._fresh_id()
        return self._new[obj.initializing_id]

    def _lost_match(self, new, frame_index: int, taken: set):
        """Our id of the confirmed track not seen in this frame nearest to `new` by the
        re-identification distance, below its threshold; or None."""
        best, best_distance = None, self.reid_distance_threshold
        for old in self._tracker.tracked_objects:
            if old.id is None or old.id not in self._ids or self._ids[old.id] in taken \
                    or old.last_detection.data["frame"] == frame_index:
                continue
            distance = self._reid_distance(new, old)
            if distance < best_distance:
                best, best_distance = self._ids[old.id], distance
        return best
