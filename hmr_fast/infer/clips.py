"""Rendered clips of walking mannequins with ground truth: `walk_cycle` (the walk the demo's
one-person clip and the crowd share) and the crowd.

`render_crowd_clip(DIR)` writes DIR/crowd.mp4 and DIR/crowd_gt.npz: the material to measure
multi-person detection, tracking and mesh recovery on, with known identities. Each person
has its own shape (betas), clothes (`BodyPalette`), walk phase (`walk_cycle`) and depth
(mannequins 42-58% of the frame height by default), and walks across the frame on a
straight line; neighbours walk in opposite directions, so their paths cross and the nearer
one passes in front of the farther one. The third person enters late from the left; the
fourth walks out on the right, turns and comes back; any further ones stroll a fifth to a
third of the frame's width from anywhere on it (a crowd spread over the frame). People are
drawn far to near (painter's order by depth) with `hmr_fast.render.render_mesh`, so
occlusion between people is right.

The ground truth has one row per (frame, person) whose mesh reaches into the frame:
- frame (R,), person (R,): the true identity (0 .. num_people-1);
- box (R, 4): x1, y1, x2, y2 px, the projected vertices' extent clipped to the frame;
- visible (R,): the fraction of the person's silhouette that is in the frame and not
  behind a nearer person;
- keypoints_coco (R, 17, 3): COCO's 17 keypoints in px and a visibility column: 0 where the
  keypoint is off-frame or behind a nearer person's silhouette (self-occlusion is not
  tested), 1 otherwise;
- joints3d (R, 14, 3): LSP's 14 joints in the camera frame (metres);
- per person: palette (P, 6, 3) its clothes and skin colours (BGR, before shading), betas (P, 10);
- fps, focal (px), width, height; the principal point is the image centre.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from hmr_fast.body import SMPL
from hmr_fast.camera import project_pinhole
from hmr_fast.data.pose_sampler import CENTRE_LIMITS, SIDE_LIMITS, SIDES, clip_to_limits, parameters_to_rotmats
from hmr_fast.data.keypoints import NUM_LSP
from hmr_fast.data.synth import BodyPalette, random_background
from hmr_fast.fit.formats import FORMATS
from hmr_fast.render import mesh_mask, render_mesh


GROUND_BELOW_CAMERA = 0.85  # metres: the camera looks level from about half a person's height
_FACING = np.pi / 2 - 0.45  # yaw of a walker: side-on to the camera, turned a little toward it
_LIGHT = np.array([-0.5, -0.7, -1.0])
_PALETTE_SIZE = 6


def walk_cycle(num_frames: int, fps: float) -> np.ndarray:
    """Local rotations (T, 24, 3, 3) of a walk in place, about one stride per second."""
    t = np.arange(num_frames) / fps
    phase = 2 * np.pi * 0.9 * t
    p = {f"{s}.{k}": np.zeros(num_frames) for s in SIDES for k in SIDE_LIMITS}
    p.update({k: np.zeros(num_frames) for k in CENTRE_LIMITS})
    for side, shift in (("left", 0.0), ("right", np.pi)):
        swing = np.sin(phase + shift)
        p[f"{side}.hip_flex"] = 0.1 + 0.45 * swing
        p[f"{side}.knee_flex"] = 0.15 + 0.7 * np.clip(np.sin(phase + shift + 1.0), 0, None)
        p[f"{side}.ankle_flex"] = 0.1 * np.cos(phase + shift)
        other = "right" if side == "left" else "left"
        p[f"{other}.shoulder_flex"] = 0.4 * swing
        p[f"{side}.shoulder_abd"] = np.full(num_frames, 0.15)
        p[f"{side}.elbow_flex"] = 0.4 + 0.2 * np.sin(phase + shift)
    p["spine_flex"] = np.full(num_frames, 0.05)
    p["neck_twist"] = 0.25 * np.sin(2 * np.pi * 0.3 * t)
    return parameters_to_rotmats(clip_to_limits(p))


def upright_root(yaw: np.ndarray) -> np.ndarray:
    """Root rotations (T, 3, 3) of a body standing upright in the camera's frame (pi about x,
    y down) and turned by `yaw` (T,) about its vertical axis."""
    yaw = np.asarray(yaw, dtype=np.float64)
    turn = Rotation.from_rotvec(np.c_[np.zeros_like(yaw), yaw, np.zeros_like(yaw)])
    return (Rotation.from_rotvec([np.pi, 0, 0]) * turn).as_matrix()


def _paths(num_people: int, num_frames: int, width: int, rng: np.random.Generator):
    """Each person's image x of the body centre (P, T) in px and heading yaw (P, T)."""
    t = np.linspace(0.0, 1.0, num_frames)
    u = np.zeros((num_people, num_frames))
    yaw = np.zeros((num_people, num_frames))
    for k in range(num_people):
        direction = 1.0 if k % 2 == 0 else -1.0
        if k == 2:  # enters late from the left
            start, end = -0.45, rng.uniform(0.7, 0.85)
        elif k == 3:  # walks out on the right, turns, comes back
            u[k] = width * np.interp(t, [0.0, 0.45, 0.55, 1.0], [0.55, 1.35, 1.35, 0.45])
            yaw[k] = np.interp(t, [0.0, 0.45, 0.55, 1.0], [_FACING, _FACING, -_FACING, -_FACING])
            continue
        elif k < 4:  # across the whole frame: everyone's paths cross
            start, end = rng.uniform(0.05, 0.2), rng.uniform(0.8, 0.95)
            if direction < 0:
                start, end = 1 - start, 1 - end
        else:  # a crowd: strolls of a fifth to a third of the frame, anywhere on it
            start = rng.uniform(0.05, 0.95)
            end = start + direction * rng.uniform(0.2, 0.35)
        u[k] = width * (start + (end - start) * t)
        yaw[k] = direction * _FACING
    return u, yaw


def _pose_people(smpl, num_people: int, num_frames: int, fps: float, yaw: np.ndarray, rng):
    """Vertices (P, T, V, 3) and hmr19 joints (P, T, 19, 3) in each body's frame (upright, y down)."""
    betas = np.clip(rng.normal(0, 0.8, (num_people, 10)), -2, 2)
    rots = []
    for k in range(num_people):
        offset = int(rng.integers(0, int(round(fps))))  # a different point of the stride
        rot = walk_cycle(num_frames + offset, fps)[offset:]
        rot[:, 0] = upright_root(yaw[k])
        rots.append(rot)
    rot = torch.as_tensor(np.concatenate(rots), dtype=torch.float32)
    b = torch.as_tensor(np.repeat(betas, num_frames, axis=0), dtype=torch.float32)
    with torch.no_grad():
        out = smpl(betas=b, global_orient=rot[:, :1], body_pose=rot[:, 1:], pose2rot=False)
    verts = out.vertices.numpy().astype(np.float64).reshape(num_people, num_frames, -1, 3)
    joints = out.joints.numpy().astype(np.float64).reshape(num_people, num_frames, -1, 3)
    return verts, joints, betas


def _silhouette(verts_px: np.ndarray, faces: np.ndarray, width: int, height: int):
    """(mask in the frame (H, W) bool, area of the whole silhouette in px, frame included or not)."""
    lo = np.floor(verts_px.min(0)).astype(int) - 1
    hi = np.ceil(verts_px.max(0)).astype(int) + 2
    whole = mesh_mask((hi[1] - lo[1], hi[0] - lo[0]), verts_px - lo, faces)
    return mesh_mask((height, width), verts_px, faces), int(whole.sum())


def render_crowd_clip(out_dir: Path, num_people: int = 4, num_frames: int = 90, width: int = 640,
                      height: int = 360, fps: float = 30.0, seed: int = 0, heights=(0.42, 0.58)) -> dict:
    """Write DIR/crowd.mp4 and DIR/crowd_gt.npz (see the module docstring); returns the ground truth.
    heights: the range of the people's heights, as fractions of the frame's (a hall full of
    people farther from the camera: (0.18, 0.38), as in benchmarks/people_video.py)."""
    if num_people < 1:
        raise ValueError(f"num_people must be at least 1, got {num_people}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2, got {num_frames}")
    if width < 64 or height < 64:
        raise ValueError(f"the clip must be at least 64x64, got {width}x{height}")
    if not 0 < heights[0] <= heights[1] <= 1:
        raise ValueError(f"heights must be fractions 0 < low <= high <= 1 of the frame, got {heights}")
    rng = np.random.default_rng(seed)
    smpl = SMPL(joint_set="hmr19")
    faces = np.asarray(smpl.faces)
    u, yaw = _paths(num_people, num_frames, width, rng)
    verts, joints, betas = _pose_people(smpl, num_people, num_frames, fps, yaw, rng)

    # Depths: each body `heights` of the frame height, the nearer ones the taller in the image.
    focal = 1.6 * height
    stature = (verts[:, 0].max(1) - verts[:, 0].min(1))[:, 1]  # (P,) metres
    fraction = rng.permutation(np.linspace(heights[1], heights[0], num_people) if num_people > 1
                               else np.array([np.mean(heights)]))
    depth = focal * stature / (fraction * height)
    # On a level floor GROUND_BELOW_CAMERA under the camera (y down), centred at image x = u.
    feet = verts[:, 0, :, 1].max(1)  # the lowest point of the first frame, per person
    transl = np.zeros((num_people, num_frames, 3))
    transl[..., 0] = (u - (width - 1) / 2) * depth[:, None] / focal
    transl[..., 1] = (GROUND_BELOW_CAMERA - feet)[:, None]
    transl[..., 2] = depth[:, None]
    verts = verts + transl[:, :, None]
    joints = joints + transl[:, :, None]

    palette = BodyPalette(smpl)
    colors = [palette.colors(rng) for _ in range(num_people)]
    palettes = np.zeros((num_people, _PALETTE_SIZE, 3))
    for k, c in enumerate(colors):
        unique = np.unique(c, axis=0)
        palettes[k] = unique[np.arange(_PALETTE_SIZE) % len(unique)]

    coco_rows = np.array(FORMATS["coco17"].rows)
    background = random_background(rng, max(width, height))[:height, :width]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / "crowd.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {video}")
    rows = {k: [] for k in ("frame", "person", "box", "visible", "keypoints_coco", "joints3d")}
    try:
        for i in range(num_frames):
            image = np.clip(background + rng.normal(0, 2.0, background.shape), 0, 255).astype(np.uint8)
            label = np.full((height, width), -1, dtype=np.int32)  # the front person at each pixel
            order = np.argsort(-verts[:, i, :, 2].mean(1), kind="stable")  # far to near
            shown = []
            for k in order:
                v_px = project_pinhole(verts[k, i], focal, width, height)
                lo, hi = np.clip(v_px.min(0), 0, [width, height]), np.clip(v_px.max(0), 0, [width, height])
                if np.any(hi - lo <= 0):
                    continue  # wholly off the frame
                z_px = verts[k, i, :, 2] * focal / depth[k]
                render_mesh(image, np.c_[v_px, z_px], faces, colors[k], light=_LIGHT, ambient=0.4)
                mask, area = _silhouette(v_px, faces, width, height)
                label[mask] = k
                shown.append((k, np.r_[lo, hi], area))
            writer.write(image)
            rank = {k: r for r, k in enumerate(order)}  # larger = nearer
            for k, box, area in shown:
                kp = np.zeros((17, 3))
                modelled = coco_rows >= 0
                kp[modelled, :2] = project_pinhole(joints[k, i, coco_rows[modelled]], focal, width, height)
                px = np.round(kp[:, :2]).astype(int)
                inside = modelled & (px[:, 0] >= 0) & (px[:, 0] < width) & (px[:, 1] >= 0) & (px[:, 1] < height)
                front = label[np.clip(px[:, 1], 0, height - 1), np.clip(px[:, 0], 0, width - 1)]
                nearer = np.array([f >= 0 and rank[int(f)] > rank[k] for f in front])
                kp[:, 2] = inside & ~nearer
                rows["frame"].append(i)
                rows["person"].append(k)
                rows["box"].append(box)
                rows["visible"].append(float((label == k).sum()) / max(area, 1))
                rows["keypoints_coco"].append(kp)
                rows["joints3d"].append(joints[k, i, :NUM_LSP])
    finally:
        writer.release()
    order = np.lexsort((rows["person"], rows["frame"]))
    gt = {k: np.asarray(v)[order] for k, v in rows.items()}
    gt["frame"], gt["person"] = gt["frame"].astype(np.int64), gt["person"].astype(np.int64)
    gt.update(palette=palettes, betas=betas, fps=float(fps), focal=float(focal), width=int(width),
              height=int(height), num_frames=int(num_frames), num_people=int(num_people))
    np.savez(out_dir / "crowd_gt.npz", **gt)
    return gt
