"""What both video pipelines (`hmr-fast video`, one person or every person) share: the
shipped model, the body posed from smoothed parameters, frame timing, progress, the input's
problems, and stopping on Ctrl-C / SIGTERM without cutting a frame in half."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from hmr_fast import camera
from hmr_fast.body import SMPL
from hmr_fast.camera import vertices_to_pixels

from .frames import UNREADABLE_NAMED, FrameReader
from .overlay import draw_hud

DETECTION_EXPAND = 1.2  # a detector's tight box -> the training crops' 1.2x margin
# The model `hmr-fast video` and `demo` run without --checkpoint (assets/README.md: how it was made)
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "demo_resnet18.pt"


def check_run_limits(max_frames, fps) -> None:
    """The options both video commands share: --max-frames >= 1, --fps in (0, 1000]."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    if fps is not None and not 0 < fps <= 1000:
        raise ValueError(f"--fps must be in (0, 1000], got {fps}")


def frame_chunks(reader, size: int):
    """Lists of up to `size` (index, frame) pairs: the frames that share one model call."""
    chunk = []
    for item in reader:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class BodyPoser:
    """The body model posed from (smoothed) parameters: joints, keypoints and the mesh in pixels."""

    def __init__(self, smpl_model, joint_set: str, device):
        self.device = torch.device(device)
        self.smpl = SMPL(smpl_model, joint_set=joint_set).to(self.device)
        self.faces = self.smpl.faces

    @torch.inference_mode()
    def __call__(self, rot_mats, betas, cam, boxes):
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        rot = as_t(rot_mats)
        out = self.smpl(betas=as_t(betas), global_orient=rot[:, :1], body_pose=rot[:, 1:], pose2rot=False,
                        return_verts=True)
        joints = out.joints.cpu().numpy().astype(np.float64)
        vertices = out.vertices.cpu().numpy().astype(np.float64)
        cam = np.asarray(cam)
        keypoints_px = camera.to_pixels(camera.project_weak_perspective(joints, cam), boxes)
        return joints, keypoints_px, vertices_to_pixels(vertices, cam, boxes)


class Timer:
    """Rolling FPS over the last frames and per-frame latencies."""

    def __init__(self, window: int = 30):
        self.stamps: list = []
        self.latencies: list = []
        self.window = window

    def frame_done(self, latency_s: float) -> None:
        self.stamps.append(time.perf_counter())
        self.stamps = self.stamps[-self.window:]
        self.latencies.append(latency_s)

    @property
    def fps(self) -> float:
        if len(self.stamps) < 2:
            return 0.0
        return (len(self.stamps) - 1) / max(self.stamps[-1] - self.stamps[0], 1e-9)


@contextlib.contextmanager
def frame_written(frame, detail: str, t0: float, timer: Timer, predictor, sink, stop: StopSignals):
    """The HUD (FPS, this frame's ms since `t0`, `detail`, the backend), then the frame
    written; the caller records the frame's rows inside the `with`, so a stop signal never
    falls between the video and the npz."""
    latency = time.perf_counter() - t0
    draw_hud(frame, [f"{timer.fps:5.1f} FPS  {1000 * latency:6.1f} ms/frame  {detail}",
                     f"{predictor.backend_name} on {predictor.device}"])
    with stop.frame():
        sink.write(frame)
        timer.frame_done(latency)
        yield


def close_run(summary: dict, stop, reader: FrameReader, sink) -> None:
    """What both pipelines do last, interrupted or not: close the input and the video (the
    frames written so far), noting the input's problems in `summary`."""
    stop.hold()  # a second Ctrl-C must not cut the files short while they are closed
    reader.close()
    summary["skipped_frames"] = reader.skipped
    input_problems(summary, reader)
    if sink is not None:
        summary["frames_written"] = sink.close()


def timing_summary(summary: dict, timer: Timer, t_start: float) -> dict:
    """The run's seconds, FPS and latency (mean, p95 in ms) from the first frame on, into `summary`."""
    done = summary["frames"]
    seconds = time.perf_counter() - t_start if done else 0.0
    lat = np.array(timer.latencies) * 1000 if done else np.zeros(1)
    summary.update(seconds=round(seconds, 3), fps=round(done / seconds, 2) if seconds else 0.0,
                   latency_ms_mean=round(float(lat.mean()), 2), latency_ms_p95=round(float(np.percentile(lat, 95)), 2))
    return summary


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the same cleanup runs."""


class StopSignals:
    """Ctrl-C and SIGTERM stop the run, but never between writing a frame to the video and
    recording its row: inside `frame()` a signal waits until the frame is done, so the video
    and the npz always hold the same frames."""

    def __init__(self):
        self.inside = False
        self.pending = False

    def handler(self, signum, frame):
        if self.inside:
            self.pending = True
        else:
            raise _Interrupted()

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach only the main thread; nothing to install
            return
        previous = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def hold(self) -> None:
        """From now on a signal only marks itself pending (the run is ending anyway)."""
        self.inside = True

    @contextlib.contextmanager
    def frame(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
        if self.pending:
            self.pending = False
            raise _Interrupted()


def input_problems(summary: dict, reader: FrameReader) -> None:
    """What was wrong with the input, in the summary: a video that ended before the frame count
    its file declares (`ended_early`: read, declared), an image folder's unreadable files
    (`unreadable_files`: the first few names; `unreadable_count`), and each as a sentence in
    `warnings` (the report prints them)."""
    warnings_ = []
    if reader.ended_early is not None:
        read, declared = reader.ended_early
        summary["ended_early"] = {"read": read, "declared": declared}
        warnings_.append(f"input ended early: read {read} of the {declared} frames the file declares "
                         "(a truncated or damaged file?)")
    unreadable = reader.unreadable
    if unreadable:
        names = [p.name for p in unreadable[:UNREADABLE_NAMED]]
        summary["unreadable_files"] = names
        summary["unreadable_count"] = len(unreadable)
        more = f" and {len(unreadable) - len(names)} more" if len(unreadable) > len(names) else ""
        warnings_.append(f"{len(unreadable)} unreadable image file(s) skipped: {', '.join(names)}{more}")
    summary["warnings"] = warnings_


def progress_bar(frame_count, max_frames, enabled: bool):
    """A tqdm bar over the frames the run will read (the fewer of the input's declared count
    and --max-frames, where either is known), or one that shows nothing."""
    known = [x for x in (frame_count, max_frames) if x]
    total = min(known) if known else None
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="frame", desc="video", dynamic_ncols=True)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass
