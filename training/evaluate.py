"""`hmr-fast eval`: MPJPE, PA-MPJPE and PCK of a checkpoint on a dataset.

    hmr-fast eval --checkpoint RUN/last.pt --data DIR            (DIR/val.npz, images in DIR)
    hmr-fast eval --checkpoint C --data some.npz --images ROOT   (any SPIN-style npz)
    hmr-fast eval --checkpoint C --data person_keypoints.json --images ROOT  (COCO: PCK only)
    hmr-fast eval --checkpoint C --dataset h36m-p1|h36m-p2|3dpw|mpi-inf-3dhp --root DIR
        [--extras SPIN_DATA] [--smpl DIR] [--flip] [--per-sample FILE]   (SPIN's evaluation: spin_eval.py)

3D errors use LSP's 14 joints (the first 14 of HMR's 19), pelvis-aligned (hip midpoint)
for MPJPE and per-sample similarity-Procrustes-aligned for PA-MPJPE, in millimetres, over
samples with 3D ground truth. PCK@a counts visible keypoints within a x the crop side.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path

import torch

from hmr_fast import metrics
from hmr_fast.camera import normalise_images
from hmr_fast.data.coco import CocoDataset
from hmr_fast.data.keypoints import NUM_LSP
from hmr_fast.data.loader import make_eval_loader
from hmr_fast.data.spin_npz import SpinDataset
from hmr_fast.devices import DEVICES, resolve_device
from hmr_fast.errors import UsageError
from hmr_fast.model import load_checkpoint

THRESHOLDS = (0.05, 0.1)


@torch.no_grad()
def evaluate_model(model, loader, device, amp: bool = False) -> dict:
    """Dataset means: mpjpe_mm, pa_mpjpe_mm (3D samples only), pck@0.05, pck@0.1, samples."""
    was_training = model.training
    model.eval()
    sums = {"mpjpe_mm": [], "pa_mpjpe_mm": [], **{f"pck@{t}": [] for t in THRESHOLDS}}
    samples = 0
    for batch in loader:
        images = normalise_images(batch["image"].to(device))  # no colour augmentation here
        cast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()
        with cast:
            out = model(images)
        kp = batch["keypoints"].to(device)
        for t in THRESHOLDS:
            sums[f"pck@{t}"].append(metrics.pck(out.keypoints2d.float(), kp[..., :2], kp[..., 2], t))
        gt3d = batch["joints3d"].to(device)[:, :NUM_LSP]
        pred3d = out.joints3d.float()[:, :NUM_LSP]
        has = batch["has_3d"].to(device) > 0
        if has.any():
            mask = gt3d[has, :, 3]
            pred, gt = metrics.align_by_pelvis(pred3d[has]), metrics.align_by_pelvis(gt3d[has, :, :3])
            sums["mpjpe_mm"].append(1000 * metrics.mpjpe(pred, gt, mask))
            sums["pa_mpjpe_mm"].append(1000 * metrics.pa_mpjpe(pred, gt, mask))
        samples += images.shape[0]
    model.train(was_training)
    result = {}
    for key, values in sums.items():
        values = torch.cat(values).double() if values else torch.empty(0)
        values = values[~torch.isnan(values)]
        result[key] = float(values.mean()) if len(values) else math.nan
    result["samples"] = samples
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by hmr-fast train")
    parser.add_argument("--data", help="a folder (reads its val.npz), a SPIN-style npz or a COCO json")
    parser.add_argument("--dataset", choices=("h36m-p1", "h36m-p2", "3dpw", "mpi-inf-3dhp"),
                        help="SPIN's evaluation of a benchmark (with --root), instead of --data")
    parser.add_argument("--root", help="--dataset: the dataset's folder (its npz image names are relative to it)")
    parser.add_argument("--extras", help="--dataset: SPIN's data/ folder (dataset_extras/, J_regressor_h36m.npy, smpl/)")
    parser.add_argument("--smpl", help="--dataset: SMPL model folder (neutral; male and female for 3dpw)")
    parser.add_argument("--flip", action="store_true", help="--dataset: average with the mirrored crop's prediction")
    parser.add_argument("--per-sample", help="--dataset: write each sample's errors here (.csv or .npz)")
    parser.add_argument("--stretch", action=argparse.BooleanOptionalAction, default=None,
                        help="--dataset: stretch each crop's contrast to 0..255 as SPIN's crops were (default: for "
                             "a checkpoint with SPIN's regressor wiring, i.e. imported SPIN weights)")
    parser.add_argument("--split", default="val.npz", help="the file read when --data is a folder")
    parser.add_argument("--images", help="image root (default: the folder of --data)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes (0: in this process)")
    parser.add_argument("--max-samples", type=int, default=0, help="evaluate only the first N (0 = all)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda when available")
    parser.add_argument("--json", help="also write the metrics to this JSON file")


def build_eval_dataset(data, split: str, images, img_size: int):
    data = Path(data)
    path = data / split if data.is_dir() else data
    root = Path(images) if images else (data if data.is_dir() else data.parent)
    if path.suffix == ".json":
        return CocoDataset(path, root, img_size)
    return SpinDataset(path, root, img_size)


def run(args) -> int:
    if (args.data is None) == (args.dataset is None):
        raise UsageError("give either --data D (a dataset in hmr_fast's layout) or --dataset NAME --root DIR "
                         "(SPIN's evaluation)")
    if args.dataset is not None and args.root is None:
        raise UsageError(f"--dataset {args.dataset} needs --root DIR, the dataset's folder")
    device = resolve_device(args.device)
    model, config = load_checkpoint(args.checkpoint, map_location=device)
    if args.dataset is not None:
        return _run_spin(args, model, device)
    dataset = build_eval_dataset(args.data, args.split, args.images, config["model"]["img_size"])
    if args.max_samples and args.max_samples < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(args.max_samples))
    loader = make_eval_loader(dataset, args.batch_size, args.workers)
    result = evaluate_model(model, loader, device, amp=device.type == "cuda")
    print(f"MPJPE     {result['mpjpe_mm']:.1f} mm")
    print(f"PA-MPJPE  {result['pa_mpjpe_mm']:.1f} mm")
    print(f"PCK@0.05  {result['pck@0.05']:.3f}")
    print(f"PCK@0.1   {result['pck@0.1']:.3f}")
    print(f"samples   {result['samples']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _run_spin(args, model, device) -> int:
    from .spin_eval import evaluate_spin_benchmark, print_summary, write_per_sample

    summary, per_sample = evaluate_spin_benchmark(
        model, args.dataset, args.root, extras=args.extras, smpl_path=args.smpl, batch_size=args.batch_size,
        workers=args.workers, flip=args.flip, device=device, max_samples=args.max_samples, stretch=args.stretch)
    print_summary(summary)
    if args.per_sample:
        print(f"per-sample errors: {write_per_sample(args.per_sample, per_sample)}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0
