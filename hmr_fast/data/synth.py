"""`hmr-fast synth`: a synthetic training set of the mannequin, nothing downloaded.

Each image shows the body in a pose from the pose sampler (human activities within joint
limits), with a random shape, seen from any side by a perspective camera, lit from a
random direction, dressed in random colours (shirt, trousers, shoes, skin, hair: the face
and the back of the head differ, so front and back can be told apart) over a procedural
background. Written:
  DIR/images/NNNNNN.jpg   square JPEGs (--img-size, 224 by default)
  DIR/train.npz, DIR/val.npz   SPIN layout (spin_npz.py): imgname, center, scale, part
                (N, 24, 3), S (N, 24, 4), pose (N, 72), shape (N, 10), has_smpl
  DIR/prior.npz  held-out poses (a separate random stream) in AMASS layout: poses (T, 156),
                betas (T, 16) (per frame, so the shape prior varies; real AMASS stores one
                (16,) per subject and the loader takes both), trans, mocap_framerate
Camera-frame conventions: x right, y down, z forward; `pose`'s root rotation and `S` are in
that frame, so SMPL(pose, shape) joints + a translation are S.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from hmr_fast.body import SMPL
from hmr_fast.camera import project_pinhole
from hmr_fast.render import render_mesh

from .keypoints import hmr19_to_spin24
from .pose_sampler import sample_betas, sample_poses

CHUNK = 32  # images posed in one SMPL batch
# SPIN's slots without an HMR keypoint, filled from SMPL's chain joints (the H36M-regressed
# joints when the model has J_regressor_h36m): pelvis, thorax, spine, head (H36M). The jaw
# (17) stays invisible.
SPIN_EXTRA_FROM_SMPL = {14: 0, 15: 12, 16: 6, 18: 15}
SPIN_EXTRA_FROM_H36M = {14: 0, 15: 8, 16: 7, 17: 9, 18: 10}


# ---------------------------------------------------------------------------------------
# Scene pieces
# ---------------------------------------------------------------------------------------
def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural BGR background: a two-colour gradient, a floor band, random shapes, noise."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    image = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    if rng.random() < 0.5:  # a floor: the lower part in another colour
        horizon = int(rng.uniform(0.5, 0.9) * size)
        image[horizon:] = (0.5 * image[horizon:] + 0.5 * rng.uniform(0, 255, 3)).astype(np.uint8)
    for _ in range(rng.integers(2, 12)):
        color = tuple(int(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        p = rng.integers(-size // 4, size + size // 4, 2)
        if kind == 0:
            cv2.circle(image, tuple(int(v) for v in p), int(rng.integers(4, size // 3)), color, -1)
        elif kind == 1:
            q = p + rng.integers(8, size // 2, 2)
            cv2.rectangle(image, tuple(int(v) for v in p), tuple(int(v) for v in q), color, -1)
        else:
            q = rng.integers(0, size, 2)
            cv2.line(image, tuple(int(v) for v in p), tuple(int(v) for v in q), color, int(rng.integers(1, 8)))
    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 3.0)))
    noise = rng.normal(0, rng.uniform(2, 10), image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


# Body regions by the SMPL joint that moves a vertex most.
_REGION_OF_JOINT = {
    **dict.fromkeys((3, 6, 9, 13, 14, 16, 17), "shirt"),
    **dict.fromkeys((0, 1, 2, 4, 5), "trousers"),
    **dict.fromkeys((7, 8, 10, 11), "shoes"),
    **dict.fromkeys((12, 15, 20, 21, 22, 23), "skin"),
    **dict.fromkeys((18, 19), "sleeve"),
}
REGIONS = ("skin", "shirt", "trousers", "shoes", "sleeve")
SKIN_TONES = np.array([[60, 90, 140], [90, 130, 190], [130, 170, 220], [160, 195, 235], [40, 60, 95]], float)


class BodyPalette:
    """Per-vertex colour regions of a model (from its skinning weights and rest shape)."""

    def __init__(self, layer):
        weights = layer.lbs_weights.detach().cpu().numpy()
        part = weights.argmax(1)
        self.region = np.array([REGIONS.index(_REGION_OF_JOINT[int(j)]) for j in part])  # index into REGIONS
        v = layer.v_template.detach().cpu().numpy()
        head_joint = layer.J_template.detach().cpu().numpy()[15]
        head = (part == 15) | (part == 12)
        # Hair: the back and top of the head (behind the head joint or above the brow).
        self.hair = head & ((v[:, 2] < head_joint[2] - 0.01) | (v[:, 1] > head_joint[1] + 0.12))

    def colors(self, rng: np.random.Generator) -> np.ndarray:
        """(V, 3) BGR colours for one person."""
        skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1)
        shirt = rng.uniform(20, 240, 3)
        trousers, shoes = rng.uniform(20, 200, 3), rng.uniform(10, 120, 3)
        sleeve = shirt if rng.random() < 0.5 else skin
        colors = np.array([skin, shirt, trousers, shoes, sleeve])[self.region]  # in REGIONS' order
        colors[self.hair] = rng.uniform(10, 120) * np.array([0.6, 0.8, 1.0])
        return colors


def camera_orientation(rng: np.random.Generator, n: int) -> np.ndarray:
    """Root rotations (n, 3) axis-angle taking SMPL's frame (y up, facing +z) to the camera
    frame (y down): any yaw, a little camera pitch and roll, and the 180 degree turn about x
    that puts the body upright in the image facing the camera at yaw 0."""
    yaw = Rotation.from_rotvec(np.c_[np.zeros(n), rng.uniform(0, 2 * np.pi, n), np.zeros(n)])
    pitch = Rotation.from_rotvec(np.c_[np.clip(rng.normal(0, 0.2, n), -0.5, 0.5), np.zeros((n, 2))])
    roll = Rotation.from_rotvec(np.c_[np.zeros((n, 2)), np.clip(rng.normal(0, 0.1, n), -0.3, 0.3)])
    flip = Rotation.from_rotvec([np.pi, 0, 0])
    return (roll * pitch * flip * yaw).as_rotvec()


def place_camera(rng, vertices: np.ndarray, img_size: int):
    """(focal px, translation (3,)) framing the body at 50-80% of the image, off-centre."""
    focal = rng.uniform(2.7, 6.7) * img_size  # 8.5 to 21 degrees field of view
    lo, hi = vertices.min(0), vertices.max(0)
    extent = max(hi[0] - lo[0], hi[1] - lo[1])
    depth = focal * extent / (rng.uniform(0.5, 0.8) * img_size)
    offset = rng.uniform(-0.1, 0.1, 2) * img_size
    mid = (lo + hi) / 2
    transl = np.array([offset[0] * depth / focal - mid[0], offset[1] * depth / focal - mid[1], depth - mid[2]])
    return focal, transl


# ---------------------------------------------------------------------------------------
# Rendering a chunk
# ---------------------------------------------------------------------------------------
class SynthRenderer:
    def __init__(self, img_size: int = 224, smpl_model=None):
        self.img_size = img_size
        self.smpl = SMPL(smpl_model, joint_set="hmr19")
        self.faces = self.smpl.faces
        self.palette = BodyPalette(self.smpl)
        self.extra_set = "h36m17" if "h36m17" in self.smpl.joint_sets else "smpl24"
        self.extra_map = SPIN_EXTRA_FROM_H36M if self.extra_set == "h36m17" else SPIN_EXTRA_FROM_SMPL

    @torch.no_grad()
    def pose_chunk(self, rng, n):
        pose = sample_poses(rng, n)
        pose[:, :3] = camera_orientation(rng, n)
        betas = sample_betas(rng, n)
        args = dict(betas=torch.as_tensor(betas, dtype=torch.float32),
                    global_orient=torch.as_tensor(pose[:, :3], dtype=torch.float32),
                    body_pose=torch.as_tensor(pose[:, 3:], dtype=torch.float32))
        out = self.smpl(**args)
        extra = self.smpl(**args, return_verts=False, joint_set=self.extra_set).joints
        return pose, betas, out.vertices.numpy(), out.joints.numpy(), extra.numpy()

    def render(self, rng, vertices, joints, extra):
        """One image and its labels from a posed body (SMPL frame, camera orientation)."""
        S = self.img_size
        focal, transl = place_camera(rng, vertices, S)
        v_cam = vertices + transl
        v_px = project_pinhole(v_cam, focal, S, S)
        # Depth in pixel units at the body's distance, so normals shade correctly.
        z_px = v_cam[:, 2] * focal / transl[2]
        image = random_background(rng, S)
        light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.3), -rng.uniform(0.3, 1.5)])
        colors = self.palette.colors(rng) * rng.uniform(0.7, 1.2)
        render_mesh(image, np.c_[v_px, z_px], self.faces, colors, light=light, ambient=rng.uniform(0.25, 0.55))
        # Labels: 19 HMR keypoints + SPIN's extra slots, in pixels and camera-frame metres.
        j_cam = joints + transl
        j_px = project_pinhole(j_cam, focal, S, S)
        inside = ((j_px >= 0) & (j_px <= S - 1)).all(1)
        part = hmr19_to_spin24(np.c_[j_px, inside.astype(np.float64)])
        S3 = hmr19_to_spin24(np.c_[j_cam, np.ones(len(j_cam))])
        e_cam = extra + transl
        e_px = project_pinhole(e_cam, focal, S, S)
        for slot, row in self.extra_map.items():
            part[slot] = [*e_px[row], float(((e_px[row] >= 0) & (e_px[row] <= S - 1)).all())]
            S3[slot] = [*e_cam[row], 1.0]
        lo, hi = v_px.min(0), v_px.max(0)
        center = (lo + hi) / 2
        scale = max(hi - lo) * 1.2 / 200.0
        return image, part, S3, center, scale, transl


def render_chunks(out_dir: str, chunks, seed: int, img_size: int, quality: int, smpl_model=None) -> dict:
    """Render chunks [(start, count)], each seeded by (seed, start): {start: labels}."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    renderer = SynthRenderer(img_size, smpl_model)
    results = {}
    for start, n in chunks:
        labels = {k: [] for k in ("imgname", "center", "scale", "part", "S", "pose", "shape")}
        rng = np.random.default_rng([seed, start])
        pose, betas, verts, joints, extra = renderer.pose_chunk(rng, n)
        for i in range(n):
            image, part, S3, center, scale, _ = renderer.render(rng, verts[i], joints[i], extra[i])
            name = f"images/{start + i:06d}.jpg"
            cv2.imwrite(os.path.join(out_dir, name), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            for k, v in (("imgname", name), ("center", center), ("scale", scale), ("part", part),
                         ("S", S3), ("pose", pose[i]), ("shape", betas[i])):
                labels[k].append(v)
        results[start] = labels
    return results


def write_prior(path, rng: np.random.Generator, num: int) -> None:
    """Held-out poses and shapes in AMASS layout (see the module docstring)."""
    poses = np.zeros((num, 156))
    body = sample_poses(rng, num)
    poses[:, 3:66] = body[:, 3:66]
    poses[:, :3] = Rotation.from_rotvec(np.c_[rng.uniform(0, 2 * np.pi, num), np.zeros((num, 2))]).as_rotvec()
    betas = np.zeros((num, 16))
    betas[:, :10] = sample_betas(rng, num)
    np.savez(path, poses=poses, betas=betas, trans=np.zeros((num, 3)), mocap_framerate=np.float64(30.0),
             gender=np.array("neutral"))


def synthesize(out_dir, num_images: int, num_val: int = None, num_prior: int = 5000, img_size: int = 224,
               seed: int = 0, workers: int = 1, quality: int = 92, smpl_model=None) -> dict:
    """Write the synthetic set (see the module docstring); returns a summary dict."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    num_val = max(1, num_images // 10) if num_val is None else int(num_val)
    if not 0 <= num_val < num_images:
        raise ValueError(f"--num-val must be in [0, num_images), got {num_val} of {num_images}")
    t0 = time.perf_counter()
    # Chunks are seeded by their start index, so the images do not depend on the workers.
    chunks = [(s, min(CHUNK, num_images - s)) for s in range(0, num_images, CHUNK)]
    workers = max(1, min(int(workers), len(chunks)))
    jobs = [(str(out), chunks[w::workers], seed, img_size, quality, smpl_model) for w in range(workers)]
    results = {}
    if workers == 1:
        results.update(render_chunks(*jobs[0]))
    else:
        with ProcessPoolExecutor(workers) as pool:
            for part in pool.map(_render_job, jobs):
                results.update(part)
    labels = {k: [] for k in results[0]}
    for start in sorted(results):
        for k, v in results[start].items():
            labels[k].extend(v)
    arrays = {k: np.asarray(v) for k, v in labels.items()}
    arrays["imgname"] = arrays["imgname"].astype(str)
    arrays["has_smpl"] = np.ones(num_images)
    split = num_images - num_val
    np.savez(out / "train.npz", **{k: v[:split] for k, v in arrays.items()})
    np.savez(out / "val.npz", **{k: v[split:] for k, v in arrays.items()})
    write_prior(out / "prior.npz", np.random.default_rng([seed, 2**31]), num_prior)
    seconds = time.perf_counter() - t0
    summary = {"images": num_images, "train": split, "val": num_val, "prior": num_prior, "img_size": img_size,
               "seed": seed, "workers": workers, "seconds": round(seconds, 2),
               "images_per_second": round(num_images / seconds, 1)}
    (out / "synth.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _render_job(job):
    return render_chunks(*job)


# ---------------------------------------------------------------------------------------
# `hmr-fast synth`
# ---------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--num-images", type=int, required=True, metavar="N",
                        help="training images to render (train.npz); --num-val more go to val.npz")
    parser.add_argument("--num-val", type=int, default=None, help="held-out renders for val.npz (default N/10)")
    parser.add_argument("--num-prior", type=int, default=5000, help="poses in prior.npz")
    parser.add_argument("--img-size", type=int, default=224, help="side of the square renders in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of poses, shapes, cameras and backgrounds")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering in parallel")
    parser.add_argument("--smpl-model", default=None, help="SMPL model file (default: the built-in mannequin)")


def run(args) -> int:
    summary = synthesize(args.out, args.num_images, args.num_val, args.num_prior, args.img_size, args.seed,
                         args.workers, smpl_model=args.smpl_model)
    print(json.dumps(summary))
    return 0
