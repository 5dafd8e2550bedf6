"""`hmr-fast demo [--out DIR]`: the whole video job on built-in material, nothing downloaded.

1. Renders a short clip of the built-in mannequin walking and turning in front of a still
   camera (a background, clothes colours and lighting like `hmr-fast synth`'s), with its
   ground truth (3D joints in the camera frame, 2D keypoints): DIR/clip.mp4, DIR/clip_gt.npz.
2. Runs `hmr-fast video` on it with the demo checkpoint that ships with the package
   (hmr_fast/assets/demo_resnet18.pt: resnet18, 64 px crops, trained by `hmr-fast train` on
   synthetic renders; assets/README.md records how): DIR/overlay.mp4, DIR/params.npz.
3. Prints the pipeline's FPS and the errors against the clip's ground truth: MPJPE and
   PA-MPJPE over LSP's 14 joints (pelvis-aligned, mm), and PCK of the 2D keypoints.
4. Every person: renders four mannequins crossing each other's paths (DIR/crowd.mp4,
   DIR/crowd_gt.npz; infer/clips.py) and runs `hmr-fast video --people all` on it
   (MoveNet from the installed weights, the tracker, HMR, the fit): DIR/crowd_overlay.mp4,
   DIR/people.npz; prints the people found, identity switches and the errors against the
   truth beside FPS. Without MoveNet's weights or the [people] extra it says how to get
   them and skips this part (`--people one` skips it too).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from hmr_fast import metrics
from hmr_fast.body import SMPL
from hmr_fast.camera import project_pinhole
from hmr_fast.data.keypoints import NUM_LSP
from hmr_fast.data.synth import BodyPalette, random_background
from hmr_fast.render import render_mesh

from .clips import upright_root, walk_cycle
from .video import SHIPPED_CHECKPOINT as DEMO_CHECKPOINT, VideoConfig, run_video


def render_clip(out_dir: Path, num_frames: int = 90, width: int = 320, height: int = 240, fps: float = 30.0,
                seed: int = 0) -> dict:
    """Write DIR/clip.mp4 and DIR/clip_gt.npz (see the module docstring); returns the ground truth."""
    if width < 64 or height < 64:
        raise ValueError(f"--size must be at least 64x64, got {width}x{height}")
    rng = np.random.default_rng(seed)
    smpl = SMPL(joint_set="hmr19")
    rot = walk_cycle(num_frames, fps)
    # The root: upright in the image (pi about x), turning slowly from a three-quarter view
    # through facing the camera and back.
    yaw = 0.9 * np.sin(2 * np.pi * np.arange(num_frames) / num_frames) + 0.3
    rot[:, 0] = upright_root(yaw)
    betas = np.clip(rng.normal(0, 0.7, 10), -2, 2)
    with torch.no_grad():
        r = torch.as_tensor(rot, dtype=torch.float32)
        out = smpl(betas=torch.as_tensor(np.tile(betas, (num_frames, 1)), dtype=torch.float32),
                   global_orient=r[:, :1], body_pose=r[:, 1:], pose2rot=False)
    verts, joints = out.vertices.numpy().astype(np.float64), out.joints.numpy().astype(np.float64)
    # A still camera; the body drifts sideways across the frame and back.
    focal = 4.0 * height
    height_m = float((verts[0].max(0) - verts[0].min(0))[1])
    depth = focal * height_m / (0.7 * height)
    drift = 0.25 * width / focal * depth * np.sin(2 * np.pi * np.arange(num_frames) / num_frames * 0.5)
    transl = np.stack([drift, np.full(num_frames, 0.0), np.full(num_frames, depth)], 1)
    transl[:, 1] -= (verts[0].min(0) + verts[0].max(0))[1] / 2
    background = random_background(rng, max(width, height))[:height, :width]
    colors = BodyPalette(smpl).colors(rng)
    light = np.array([-0.5, -0.7, -1.0])
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = out_dir / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {clip}")
    keypoints = np.zeros((num_frames, joints.shape[1], 2))
    try:
        for i in range(num_frames):
            v_cam = verts[i] + transl[i]
            image = np.clip(background + rng.normal(0, 2.0, background.shape), 0, 255).astype(np.uint8)
            z_px = v_cam[:, 2] * focal / depth
            render_mesh(image, np.c_[project_pinhole(v_cam, focal, width, height), z_px], smpl.faces, colors,
                        light=light, ambient=0.4)
            writer.write(image)
            keypoints[i] = project_pinhole(joints[i] + transl[i], focal, width, height)
    finally:
        writer.release()
    gt = {"joints3d": joints + transl[:, None], "keypoints2d": keypoints, "rot_mats": rot,
          "betas": np.tile(betas, (num_frames, 1)), "transl": transl, "focal": focal, "fps": fps}
    np.savez(out_dir / "clip_gt.npz", **gt)
    return gt


def evaluate(params_path: Path, gt: dict) -> dict:
    """MPJPE / PA-MPJPE (LSP 14 joints, mm) and PCK (2D, fraction within 5% / 10% of the box side)."""
    p = np.load(params_path)
    idx = p["frame_index"].astype(int)
    pred3d = torch.as_tensor(p["joints3d"][:, :NUM_LSP])
    gt3d = torch.as_tensor(gt["joints3d"][idx, :NUM_LSP])
    pred3d, gt3d = metrics.align_by_pelvis(pred3d), metrics.align_by_pelvis(gt3d)
    kp, gt_kp, side = p["keypoints2d"], gt["keypoints2d"][idx], p["boxes"][:, 2]
    return {"frames": int(len(idx)),
            "mpjpe_mm": float(1000 * metrics.mpjpe(pred3d, gt3d).mean()),
            "pa_mpjpe_mm": float(1000 * metrics.pa_mpjpe(pred3d, gt3d).mean()),
            "pck@0.05": float(metrics.pck(kp, gt_kp, None, 0.05, side).mean()),
            "pck@0.1": float(metrics.pck(kp, gt_kp, None, 0.1, side).mean())}


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="hmr_fast_demo", help="output folder (default ./hmr_fast_demo)")
    parser.add_argument("--checkpoint", default=None, help="default: the demo checkpoint shipped in the package")
    parser.add_argument("--frames", type=int, default=90, help="clip length (default 90 = 3 s at 30 fps)")
    parser.add_argument("--size", default="320x240", help="clip size WxH (default 320x240)")
    parser.add_argument("--backend", default="auto", help="inference backend (see hmr-fast video --help); auto = "
                        "compiled on CUDA, torch on the CPU")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clip's body, background and walk")
    parser.add_argument("--people", default="both", choices=("one", "all", "both"),
                        help="one: the one-person clip; all: the crowd clip with every person found, tracked, "
                             "meshed and fitted (needs MoveNet's weights); both (default)")


def run_people_demo(out_dir, checkpoint, num_frames: int = 90, device=None, seed: int = 0, log=print) -> dict:
    """Step 4 of the module docstring; returns {"video": summary, "tracking": ..., "accuracy": ...}."""
    from .clips import render_crowd_clip
    from .people.metrics import people_errors, tracking_report
    from .people.video import PeopleConfig, run_people

    out_dir = Path(out_dir)
    log(f"rendering a {num_frames}-frame 640x360 clip of four mannequins -> {out_dir / 'crowd.mp4'}")
    gt = render_crowd_clip(out_dir, num_people=4, num_frames=num_frames, width=640, height=360, seed=seed)
    cfg = PeopleConfig(input=str(out_dir / "crowd.mp4"), out=str(out_dir / "crowd_overlay.mp4"),
                       checkpoint=str(checkpoint), save_params=str(out_dir / "people.npz"), device=device,
                       progress=False)
    summary = run_people(cfg, log=log)
    params = dict(np.load(out_dir / "people.npz"))
    report = tracking_report(gt, params)
    tracking = {k: report[k] for k in ("recall", "precision", "id_switches", "gt_rows", "matched")}
    tracking["people"] = int(len(np.unique(gt["person"])))
    return {"video": summary, "tracking": tracking, "accuracy": people_errors(gt, params, report)}


def people_unavailable() -> str:
    """Why `--people all` cannot run here ('' when it can): the [people] extra or MoveNet's weights."""
    from hmr_fast.errors import HmrFastError

    for module in ("ai_edge_litert", "norfair"):
        try:
            __import__(module)
        except ImportError:
            return f'{module} is not installed (pip install "hmr_fast[people]")'
    from hmr_fast.model.movenet_weights import movenet_weights

    try:
        movenet_weights()
    except HmrFastError as exc:
        return str(exc)
    return ""


def run_demo(out_dir, checkpoint=None, num_frames: int = 90, width: int = 320, height: int = 240,
             backend: str = "auto", device=None, seed: int = 0, log=print, people: str = "one") -> dict:
    checkpoint = Path(checkpoint) if checkpoint else DEMO_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"demo checkpoint {checkpoint} not found (it ships in hmr_fast/assets; "
                                "reinstall the package, or pass --checkpoint)")
    out_dir = Path(out_dir)
    result = {"checkpoint": str(checkpoint)}
    if people in ("one", "both"):
        log(f"rendering a {num_frames}-frame {width}x{height} clip of the mannequin -> {out_dir / 'clip.mp4'}")
        gt = render_clip(out_dir, num_frames, width, height, seed=seed)
        cfg = VideoConfig(input=str(out_dir / "clip.mp4"), checkpoint=str(checkpoint),
                          out=str(out_dir / "overlay.mp4"), save_params=str(out_dir / "params.npz"), backend=backend,
                          device=device, progress=False)
        summary = run_video(cfg, log=log)
        result.update(video=summary, accuracy=evaluate(out_dir / "params.npz", gt))
    if people in ("all", "both"):
        missing = people_unavailable()
        if missing:
            if people == "all":
                raise RuntimeError(f"--people all: {missing}")
            result["people_skipped"] = missing
        else:
            result["people"] = run_people_demo(out_dir, checkpoint, num_frames, device, seed, log)
    (out_dir / "demo.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def run(args) -> int:
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"hmr-fast demo: --size must be WxH, e.g. 320x240; got {args.size!r}", file=sys.stderr)
        return 2
    try:
        result = run_demo(args.out, args.checkpoint, args.frames, width, height, args.backend, args.device, args.seed,
                          people=args.people)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"hmr-fast demo: {exc}", file=sys.stderr)
        return 2
    if "video" in result:
        v, a = result["video"], result["accuracy"]
        print(f"one person: {v['frames']} frames, {v['fps']:.1f} FPS (latency mean {v['latency_ms_mean']:.1f} ms) "
              f"on {v['backend']} / {v['device']}")
        print(f"  against the clip's ground truth: MPJPE {a['mpjpe_mm']:.1f} mm, PA-MPJPE {a['pa_mpjpe_mm']:.1f} mm, "
              f"PCK@0.1 {a['pck@0.1']:.3f}")
        print(f"  wrote {args.out}/overlay.mp4, params.npz, clip.mp4, clip_gt.npz")
    if "people" in result:
        v, t, a = result["people"]["video"], result["people"]["tracking"], result["people"]["accuracy"]
        print(f"every person: {v['frames']} frames, {v['fps']:.1f} FPS; {v['tracks']} people found of {t['people']}, "
              f"{t['id_switches']} identity switches, recall {t['recall']:.3f}, precision {t['precision']:.3f}")
        print(f"  against the clip's ground truth: MPJPE {a['mpjpe_mm']:.1f} mm, PA-MPJPE {a['pa_mpjpe_mm']:.1f} mm, "
              f"PCK@0.1 {a['pck@0.1']:.3f} of the fitted keypoints")
        print(f"  wrote {args.out}/crowd_overlay.mp4, people.npz, crowd.mp4, crowd_gt.npz")
    elif "people_skipped" in result:
        print(f"every person: skipped: {result['people_skipped']}")
    print(f"wrote {args.out}/demo.json")
    return 0
