"""`hmr-fast fit`: SMPL fitted to the people of a keypoint file, in batches.

    hmr-fast fit --keypoints PATH --out OUT.npz [--images DIR] [--checkpoint C] [--iters N]
                 [--device D] [--render DIR] [--format F] [--batch B]

PATH: an OpenPose BODY_25 json or a folder of them, a COCO person-keypoints json, a
SPIN-style npz (`part`) or a plain npz (`keypoints` (N, K, 3)); see hmr_fast.fit.formats.
Each person is fitted with HMR's weak-perspective camera in a box around their keypoints
(or the annotation's box). COCO-17 keypoints start from a guess learned from keypoints
(hmr_fast.fit.initializer); with --checkpoint (and --images) each person starts from the
better of it and HMR's prediction on the box's crop (--start chooses otherwise; other
formats start from HMR's prediction or the mean body). OUT.npz gets one row per person:
betas (N, NB), body_pose (N, 69), global_orient (N, 3), camera (N, 3) = (s, tx, ty) in the
box, boxes (N, 3) = (cx, cy, size) pixels, keypoints2d (N, K, 2) (the fitted model's
keypoints in the input's pixels, order and count; NaN where SMPL has no such point),
joints3d (N, K, 3), loss (N,), learned_start (N,: 1 where the learned guess was the
start), ids (N,) and images (N,). --render DIR draws every fitted
mesh over its image.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch

from hmr_fast.atomic import atomic_path
from hmr_fast.body import SMPL
from hmr_fast.camera import vertices_to_pixels
from hmr_fast.devices import DEVICES, cpu_threads, resolve_device, torch_threads
from hmr_fast.errors import DataError, UsageError
from hmr_fast.fit import FitSettings, KeypointFitter, people_boxes, read_keypoints
from hmr_fast.fit.formats import FORMATS
from hmr_fast.render import render_mesh

from .predictor import Predictor


def add_arguments(parser) -> None:
    parser.add_argument("--keypoints", required=True, help="OpenPose json (or a folder of them), COCO json, SPIN or plain npz")
    parser.add_argument("--out", required=True, help="the .npz of fitted parameters to write")
    parser.add_argument("--images", help="the images folder (for --checkpoint and --render)")
    parser.add_argument("--checkpoint", help="start each fit from this HMR checkpoint's prediction (needs --images)")
    parser.add_argument("--iters", type=int, default=FitSettings.iters, help="Adam iterations of the whole-body stage")
    parser.add_argument("--format", choices=sorted(FORMATS), help="the keypoint format of a plain npz (default: by count)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default: cuda when available")
    parser.add_argument("--batch", type=int, default=512, help="people fitted in one batch")
    parser.add_argument("--no-flip", action="store_true", help="do not also try each body turned around")
    parser.add_argument("--start", choices=("best", "learned", "mean"), default=None,
                        help="COCO-17 keypoints: start from the better of HMR's prediction and the learned guess "
                             "from the keypoints (best, the default with --checkpoint), from the learned guess "
                             "(learned, the default without), or from the mean body (mean)")
    parser.add_argument("--render", metavar="DIR", help="draw the fitted meshes over their images into DIR")


def run(args) -> int:
    device = resolve_device(args.device)
    with torch_threads(cpu_threads() if device.type == "cpu" else None):
        return _run(args, device)


def _run(args, device) -> int:
    from tqdm import tqdm

    if args.iters < 1 or args.batch < 1:
        raise UsageError("--iters and --batch must be >= 1")
    if (args.checkpoint or args.render) and not args.images:
        raise UsageError("--checkpoint and --render read the images: give --images DIR")
    people = read_keypoints(args.keypoints, args.format)
    if not len(people.keypoints):
        raise DataError(f"{args.keypoints}: no person with labelled keypoints")
    smpl = SMPL(joint_set=people.format.joint_set).to(device)
    start = args.start or ("best" if args.checkpoint else "learned")
    fitter = KeypointFitter(smpl, people.format, FitSettings(iters=args.iters, try_flip=not args.no_flip, start=start))
    predictor = Predictor(args.checkpoint, device=device) if args.checkpoint else None
    kp_all = torch.as_tensor(people.keypoints, dtype=torch.float32)
    boxes_all = people_boxes(kp_all, people.boxes)
    results = []
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(kp_all), args.batch), desc="fit", unit="batch"):
        index = slice(start, start + args.batch)
        boxes = boxes_all[index]
        init = hmr_start(predictor, args.images, people.images[index], boxes.cpu().numpy()) if predictor else None
        results.append(fitter.fit(kp_all[index], boxes, init))
    seconds = time.perf_counter() - t0
    out = {k: torch.cat([getattr(r, k) for r in results]).cpu().numpy()
           for k in ("betas", "body_pose", "global_orient", "camera", "boxes", "keypoints2d", "joints3d", "loss",
                     "learned_start")}
    out["ids"] = np.asarray(people.ids)
    out["images"] = np.asarray([n or "" for n in people.images])
    out["format"] = np.asarray(people.format.name)
    with atomic_path(args.out, suffix=".npz") as tmp:
        np.savez(tmp, **out)
    if args.render:
        _render(smpl, out, people, Path(args.images), Path(args.render))
    conf = people.keypoints[..., 2] > 0
    err = np.linalg.norm(out["keypoints2d"] - people.keypoints[..., :2], axis=-1)[conf]
    err = err[np.isfinite(err)]
    print(f"fitted {len(kp_all)} people: mean reprojection error {err.mean():.2f} px, "
          f"{len(kp_all) / seconds:.1f} fits/s; wrote {args.out}")
    return 0


def hmr_start(predictor, images_dir, names, boxes) -> dict:
    """HMR's prediction for each person, in the fitter's parameters: names (B,) the image each
    person is in, boxes (B, 3) the fitter's square boxes (cx, cy, size), so the weak camera
    means the same in both. Each image is read once; the predictor batches all the crops."""
    rows = _rows_by_image(names)
    frames = [_read_image(images_dir, name, "--checkpoint") for name in rows]
    boxes = np.asarray(boxes, dtype=np.float64)
    xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
    pred = predictor.predict(frames, [xyxy[r] for r in rows.values()], return_vertices=False)
    person = np.argsort(np.concatenate(list(rows.values())))  # predictions come image by image
    return {"global_orient": pred.pose[person, :3], "body_pose": pred.pose[person, 3:],
            "betas": pred.betas[person], "cam": pred.cam[person]}


def _rows_by_image(names) -> dict:
    rows = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    return rows


def _read_image(images_dir, name, needed_by: str) -> np.ndarray:
    image = cv2.imread(str(Path(images_dir) / name)) if name else None
    if image is None:
        raise DataError(f"{Path(images_dir) / (name or '?')}: image not found or unreadable (needed by {needed_by})")
    return image


def _render(smpl, out, people, images_dir: Path, render_dir: Path) -> None:
    render_dir.mkdir(parents=True, exist_ok=True)
    device = smpl.v_template.device
    for name, rows in _rows_by_image(people.images).items():
        image = _read_image(images_dir, name, "--render")
        as_t = lambda key: torch.as_tensor(out[key][rows], device=device)  # noqa: E731
        with torch.no_grad():
            body = smpl(betas=as_t("betas"), global_orient=as_t("global_orient"), body_pose=as_t("body_pose"))
        px = vertices_to_pixels(body.vertices.cpu().numpy().astype(np.float64), out["camera"][rows], out["boxes"][rows])
        for k in np.argsort(-px[..., 2].mean(1)):  # far to near
            render_mesh(image, px[k], smpl.faces)
        cv2.imwrite(str(render_dir / Path(name).name), image)
