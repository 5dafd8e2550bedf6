"""`hmr-fast video INPUT --people all`: every person found, tracked, meshed and fitted.

    hmr-fast video crowd.mp4 --people all --out overlay.mp4 --save-params people.npz

Per frame:
1. people and their 17 COCO keypoints from a learned detector (MoveNet MultiPose,
   detector.py; --detector PATH takes a local copy of its weights), on tiles chosen from the
   frame's size and the people found (--tiles auto), each person found then looked at again
   alone for their keypoints (--second-look on, or auto: on a scene's first frame; off by
   default); with
   --detect-every N (auto: from
   the model calls of the last detection) it runs on every N-th frame and the people it found are followed by optical flow
   in between (`DetectEvery`);
2. identities across frames (norfair's tracker on the keypoints, tracking.py), a person
   reported from the first frame they are found in;
3. every freshly detected person's crop (the detection's box, with the training crops'
   margin) through HMR and SMPL in one batch (the fused kernels on CUDA), with --batch N
   the people of N frames in one call; a followed person starts from their own previous
   frame instead;
4. each track's HMR parameters smoothed over time (One-Euro, one filter per track);
5. --refine N iterations of the batched SMPLify fit (hmr_fast.fit) to the keypoints, all
   people at once, each from the better of HMR's pose (or their previous frame's) and the
   learned start from their keypoints, with their track's shape (stages.PeopleFit);
6. every mesh drawn in one z-buffer, far to near, one colour per track, with a simplified
   mesh of --mesh-faces faces (a crowd's people are small; the full mesh with 0).

The params npz has one row per (frame, person): frame, track_id, box (x1, y1, x2, y2), score,
keypoints2d (17, 3: detected, pixels + confidence, COCO order), keypoints2d_fit (17, 2: the
fitted model's COCO keypoints, pixels), betas (10), body_pose (69), global_orient (3),
camera (3: weak perspective s, tx, ty in the crop box), crop_box (3: cx, cy, size pixels),
loss (the fit's objective), followed (1 where the keypoints were carried by optical flow, not
detected in this frame); every key is there, with zero rows, when nobody is found.
Like the single-person mode, the video and the npz are complete when the run is interrupted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from hmr_fast.devices import cpu_threads, resolve_device, torch_threads
from ..frames import FrameReader
from ..overlay import draw_keypoints
from ..predictor import Predictor
from ..smoothing import ParameterSmoother
from ..pipeline import (StopSignals, Timer, check_run_limits, close_run, frame_chunks, frame_written, progress_bar,
                        timing_summary)
from ..writer import ParamsRecorder, VideoSink
from .stages import (MIN_KEYPOINT_SCORE, ROW_FIELDS, START_CHOICES, Fitted, PeopleFit, crop_boxes,
                     detected_keypoints, draw_people, frame_fit_settings, hmr_parameters, people_count, person_rows,
                     scene, track_color)

# the npz's keys: every person's row, and the frame and track it belongs to
VIDEO_FIELDS = {"frame": ((), np.int64), "track_id": ((), np.int64), **ROW_FIELDS, "followed": ((), np.int64)}
FORGET_AFTER_S = 3.0  # a track unseen this long loses its filters and its last fit
STAGES = ("detect", "hmr", "fit", "mesh_and_draw")  # the summary's stage_ms: mean ms per frame of each


@dataclass
class PeopleConfig:
    input: str
    out: str
    checkpoint: str
    save_params: Optional[str] = None
    detector: Optional[str] = None  # None: MoveNet from the installed weights; or a path to them
    backend: str = "auto"
    device: Optional[str] = None
    precision: str = "auto"
    max_frames: Optional[int] = None
    batch: int = 1  # frames whose people share one HMR call
    refine: int = 10  # fit iterations per frame (0: HMR only)
    min_score: float = 0.2  # people the detector is less sure of are left out
    tiles: object = "auto"  # detector tiles (rows, cols) besides the whole frame, for crowds; or "auto"
    detector_size: int = 256  # the longer side of each detector input (192: 40% less time on tiles)
    detect_every: object = "auto"  # the detector on every N-th frame (optical flow between); or "auto"
    # each person looked at again alone for their keypoints: True, "auto" (a scene's first frame) or False
    # (default: on the rendered 720p crowd of 24, "auto" gave 40 identity switches against 17, True 30)
    second_look: object = False
    start: str = "auto"  # the fit's start: "auto" (HMR's or the learned one, the better), "hmr", "learned"
    mesh_faces: int = 3000  # faces of the drawn (simplified) mesh; 0: the model's own
    smooth: bool = True
    fps: Optional[float] = None
    draw_keypoints: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.refine < 0:
            raise ValueError(f"--refine must be >= 0, got {self.refine}")
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")
        check_run_limits(self.max_frames, self.fps)
        if not 0 <= self.min_score < 1:
            raise ValueError(f"--min-score must be in [0, 1), got {self.min_score}")
        if not 32 <= self.detector_size <= 1024:
            raise ValueError(f"--detector-size must be 32..1024 pixels, got {self.detector_size}")
        if self.detect_every != "auto" and self.detect_every < 1:
            raise ValueError(f"--detect-every must be >= 1 or auto, got {self.detect_every}")
        if self.start not in START_CHOICES:
            raise ValueError(f"--fit-start must be one of {', '.join(START_CHOICES)}, got {self.start!r}")
        if self.mesh_faces < 0:
            raise ValueError(f"--mesh-faces must be >= 0 (0: the full mesh), got {self.mesh_faces}")


class TrackFits:
    """The per-frame fit (`stages.PeopleFit`, --refine iterations) of every person of a
    frame, each from the better of HMR's (smoothed) pose and camera of this frame (or their
    previous frame's, when followed) and the learned start from their keypoints, and from
    the shape their track's earlier fits found (a person's shape does not change; their pose
    does, faster than a few iterations from the last frame's fit follow)."""

    def __init__(self, smpl, iters: int, start: str = "auto"):
        self.fit = PeopleFit(smpl, frame_fit_settings(iters), start)
        self.betas: dict = {}  # track id -> the betas of its last fit

    def __call__(self, track_ids, keypoints, boxes, rot_mats, betas, cam) -> Fitted:
        if self.fit.settings.iters:  # with no iterations, HMR's own shape (HMR alone)
            betas = np.array([self.betas.get(tid, b) for tid, b in zip(track_ids, betas)], dtype=np.float64)
        out = self.fit(keypoints, boxes, rot_mats, betas, cam)
        if self.fit.settings.iters:
            self.betas.update(zip(track_ids, out.betas))
        return out

    def forget(self, track_ids) -> None:
        for tid in track_ids:
            self.betas.pop(tid, None)


def run_people(cfg: PeopleConfig, predictor: Optional[Predictor] = None, detector=None, log=print) -> dict:
    """The multi-person pipeline (see the module docstring); returns a summary dict."""
    cfg.validate()
    on_cpu = (predictor.device if predictor is not None else resolve_device(cfg.device)).type == "cpu"
    threads = cpu_threads() if on_cpu else None
    stop = StopSignals()
    with torch_threads(threads), stop.installed():
        return _run_people(cfg, predictor, detector, log, threads, stop)


def _run_people(cfg, predictor, detector, log, threads, stop) -> dict:
    from .detector import DetectEvery, MoveNetMultiPose
    from .tracking import PeopleTracker

    reader = FrameReader(cfg.input, cfg.max_frames, queue_size=max(8, 2 * cfg.batch), fps=cfg.fps)
    sink = recorder = None
    timer = Timer()
    t_start = time.perf_counter()
    summary = {"input": cfg.input, "out": cfg.out, "params": cfg.save_params, "frames": 0, "people_rows": 0,
               "interrupted": False}
    stages = dict.fromkeys(STAGES, 0.0)  # seconds spent in each step, over the run
    seen_tracks: set = set()
    try:
        info = reader.info
        if detector is None:
            detector = MoveNetMultiPose(cfg.detector, threads=threads, min_score=cfg.min_score, tiles=cfg.tiles,
                                        input_size=cfg.detector_size, second_look=cfg.second_look)
        if cfg.detect_every != 1:
            detector = DetectEvery(detector, cfg.detect_every)
        if predictor is None:
            predictor = Predictor(cfg.checkpoint, cfg.backend, cfg.device, cfg.precision, max_batch=32,
                                  with_vertices=False, threads=threads)
        poser, overlay = scene(predictor, cfg.mesh_faces)
        # with --refine 0 the "fit" only measures HMR's start (its loss, its keypoints)
        refiner = TrackFits(poser.smpl, cfg.refine, cfg.start)
        # tracks confirmed from their second frame (on the rendered crowds, 24 people,
        # benchmarks/people_video.py, 5-7 points more recall than from the fourth, as
        # precise) and reported from their first
        tracker = PeopleTracker((info.height, info.width), initialization_delay=1, report_new=True)
        sink = VideoSink(cfg.out, info.fps, info.width, info.height)
        recorder = ParamsRecorder(cfg.save_params, VIDEO_FIELDS) if cfg.save_params else None
        log(f"{cfg.input}: {info.width}x{info.height} at {info.fps:.1f} fps; every person: {type(detector).__name__}, "
            f"HMR on {predictor.backend_name} ({predictor.device}), "
            + (f"{cfg.refine} fit iterations per frame" if cfg.refine else "no fit"))
        smoothers: dict = {}
        last_seen: dict = {}
        last_params: dict = {}  # track id -> its (rot_mats, betas, cam) in the last frame it was in
        bar = progress_bar(info.frame_count, cfg.max_frames, cfg.progress)
        t_start = time.perf_counter()
        for chunk in frame_chunks(reader, cfg.batch):
            t0 = time.perf_counter()
            tracked = []
            for index, frame in chunk:
                t_detect = time.perf_counter()
                found = detector(frame)
                stages["detect"] += time.perf_counter() - t_detect
                tracked.append(tracker.update(found, index, frame))
            hmr = _hmr_fresh(chunk, tracked, predictor, last_params, stages)  # one call for the chunk's people
            for (index, frame), people, fresh in zip(chunk, tracked, hmr):
                t = index / info.fps
                rows = _mesh_people(people, frame, t, fresh, poser, overlay, refiner, smoothers, last_params, cfg,
                                    stages)
                for tid, _ in people:
                    last_seen[tid] = t
                    seen_tracks.add(tid)
                with frame_written(frame, people_count(len(people)), t0, timer, predictor, sink, stop):
                    if recorder is not None:
                        for row in rows:
                            recorder.add(frame=index, **row)
                    summary["frames"] += 1
                    summary["people_rows"] += len(rows)
                bar.update(1)
            # between chunks, so a track's last frame stays known through the chunk it was
            # planned in (_hmr_fresh)
            stale = [tid for tid, seen in last_seen.items() if chunk[-1][0] / info.fps - seen > FORGET_AFTER_S]
            for tid in stale:
                last_seen.pop(tid)
                smoothers.pop(tid, None)
                last_params.pop(tid, None)
                refiner.forget([tid])
        bar.close()
    except KeyboardInterrupt:
        summary["interrupted"] = True
    finally:
        close_run(summary, stop, reader, sink)
        if recorder is not None:
            recorder.save(index_key="frame", fps=reader.info.fps, input=str(cfg.input),
                          interrupted=summary["interrupted"])
    summary["tracks"] = len(seen_tracks)  # interrupted runs too
    done = max(summary["frames"], 1)
    summary["stage_ms"] = {k: round(1000 * v / done, 1) for k, v in stages.items()}
    return timing_summary(summary, timer, t_start)


def _hmr_fresh(chunk, tracked, predictor, last_params, stages) -> list:
    """HMR in one call for the people of these frames who need it: the detected ones, and
    the followed ones with no earlier frame to start from. Per frame, {track id: (rot_mats,
    betas, cam)} as HMR predicted them (not yet smoothed)."""
    t0 = time.perf_counter()
    known = set(last_params)
    todo, where = [], []
    for k, ((_, frame), people) in enumerate(zip(chunk, tracked)):
        fresh = [(tid, box) for (tid, det), box in zip(people, crop_boxes([d for _, d in people]))
                 if not (det.followed and tid in known)]
        known.update(tid for tid, _ in fresh)
        todo.append((frame, [box for _, box in fresh]))
        where += [(k, tid) for tid, _ in fresh]
    out = [{} for _ in chunk]
    for (k, tid), *params in zip(where, *hmr_parameters(predictor, todo)):
        out[k][tid] = tuple(params)
    stages["hmr"] += time.perf_counter() - t0
    return out


def _mesh_people(people, frame, t, fresh, poser, overlay, refiner, smoothers, last_params, cfg, stages) -> list:
    """This frame's people: HMR's parameters (`fresh`, smoothed here) for the detected ones,
    their previous frame's for the followed ones, the fit for all, every mesh drawn far to
    near; returns the npz rows."""
    if not people:
        return []
    ids = [tid for tid, _ in people]
    dets = [det for _, det in people]
    t1 = time.perf_counter()
    boxes = crop_boxes(dets)
    params = []
    for tid, det in people:
        if tid in fresh:
            p = fresh[tid]
            params.append(smoothers.setdefault(tid, ParameterSmoother())(*p, t) if cfg.smooth else p)
        else:  # followed: from the track's previous frame
            params.append(last_params[tid])
    rot, betas, cam = (np.stack(column) for column in zip(*params))
    keypoints = detected_keypoints(dets)
    fitted = refiner(ids, keypoints, boxes, rot, betas, cam)
    rot, betas, cam = fitted.rot_mats, fitted.betas, fitted.cam
    last_params.update((tid, (rot[i], betas[i], cam[i])) for i, tid in enumerate(ids))
    t2 = time.perf_counter()
    stages["fit"] += t2 - t1
    draw_people(frame, poser, overlay, rot, betas, cam, boxes, [track_color(i) for i in ids])
    if cfg.draw_keypoints:
        for d in dets:
            draw_keypoints(frame, d.keypoints[:, :2][d.keypoints[:, 2] >= MIN_KEYPOINT_SCORE])
    stages["mesh_and_draw"] += time.perf_counter() - t2
    rows = person_rows(dets, boxes, rot, betas, cam, fitted.keypoints2d, fitted.loss)
    for row, tid, d in zip(rows, ids, dets):
        row.update(track_id=tid, followed=int(d.followed))
    return rows
