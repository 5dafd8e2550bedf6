"""Accuracy of `hmr_fast.fit` on held-out synthetic renders, where the 3D truth is known.

    python benchmarks/fit_accuracy.py --out benchmarks/results/fit_accuracy.json [--num 256]

Renders `--num` images of the mannequin with `hmr-fast synth` (seed 2026: none of them was
seen by the shipped demo checkpoint, trained on seeds 7, 8, 11 and 12), then fits SMPL to
their 2D keypoints (HMR's 19, from the render's ground truth) in four settings:
  - ground-truth keypoints, from the mean pose;
  - ground-truth keypoints, from the shipped HMR checkpoint's prediction on each crop;
  - noisy keypoints (Gaussian, 2% of the box side) with 15% of them missing, from the mean;
  - the same noisy keypoints, from HMR's prediction;
and the same two keypoint sets as COCO's 17 (HMR's 19 less the neck and head top), the
format the learned start reads, from the mean pose, the learned start, HMR's prediction,
and per person the better of HMR's and the learned one (`FitSettings(start="best")`, what
`hmr-fast fit --checkpoint` does); and reports PA-MPJPE (mm, LSP's 14 joints,
similarity-aligned per person) against the render's 3D joints for HMR alone and for each
fit, the reprojection error, and fits/s.
Also written: a markdown table beside the JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hmr_fast import metrics
from hmr_fast.body import SMPL
from hmr_fast.data.synth import synthesize
from hmr_fast.devices import cpu_threads, torch_threads
from hmr_fast.fit import FitSettings, KeypointFitter, keypoint_format, read_keypoints
from hmr_fast.infer import Predictor
from hmr_fast.infer.demo import DEMO_CHECKPOINT
from hmr_fast.infer.fitting import hmr_start


def pa_mpjpe(smpl, fit_or_pred, truth):
    with torch.no_grad():
        J = smpl(betas=torch.as_tensor(fit_or_pred["betas"], dtype=torch.float32),
                 global_orient=torch.as_tensor(fit_or_pred["global_orient"], dtype=torch.float32),
                 body_pose=torch.as_tensor(fit_or_pred["body_pose"], dtype=torch.float32),
                 joint_set="hmr19", return_verts=False).joints[:, :14]
    return 1000 * metrics.pa_mpjpe(J, torch.as_tensor(truth[:, :14, :3]), truth[:, :14, 3]).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=256)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, torch_threads(cpu_threads()):
        data = Path(tmp)
        synthesize(data, num_images=args.num + 1, num_val=args.num, num_prior=100, img_size=224, seed=2026)
        z = np.load(data / "val.npz")
        people = read_keypoints(data / "val.npz")
        truth = z["S"][:, list(range(14))]
        boxes = np.c_[z["center"], z["scale"] * 200]
        rng = np.random.default_rng(0)
        noisy = people.keypoints.copy()
        noisy[..., :2] += rng.normal(0, 0.02 * boxes[:, None, 2:], noisy[..., :2].shape)
        noisy[rng.random(noisy.shape[:2]) < 0.15] = 0.0
        smpl = SMPL(joint_set="hmr19")
        fitter = KeypointFitter(smpl, people.format, FitSettings())
        predictor = Predictor(str(DEMO_CHECKPOINT), "torch", "cpu")
        hmr = hmr_start(predictor, data, list(z["imgname"]), boxes)
        report = {"renders": args.num, "seed": 2026, "img_size": 224, "checkpoint": DEMO_CHECKPOINT.name,
                  "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                  "settings": FitSettings().__dict__, "results": {}}
        hmr_pred = {"betas": hmr["betas"], "global_orient": hmr["global_orient"], "body_pose": hmr["body_pose"]}
        pa = pa_mpjpe(smpl, hmr_pred, truth)
        report["results"]["HMR alone (demo checkpoint)"] = {"pa_mpjpe_mm_mean": float(pa.mean()),
                                                            "pa_mpjpe_mm_median": float(np.median(pa))}
        coco = keypoint_format("coco17")
        as_coco = list(coco.rows)  # COCO's 17 are rows of HMR's 19
        fitters = {start: KeypointFitter(smpl, coco, FitSettings(start=start)) for start in ("mean", "learned", "best")}
        runs = [("fit to ground-truth 2D, from the mean pose", people.keypoints, None, fitter),
                ("fit to ground-truth 2D, from HMR", people.keypoints, hmr, fitter),
                ("fit to noisy 2D (2% noise, 15% missing), from the mean pose", noisy, None, fitter),
                ("fit to noisy 2D (2% noise, 15% missing), from HMR", noisy, hmr, fitter)]
        for label, kp in (("ground-truth", people.keypoints), ("noisy", noisy)):
            runs += [(f"COCO-17, {label} 2D, from the mean pose", kp[:, as_coco], None, fitters["mean"]),
                     (f"COCO-17, {label} 2D, from the learned start", kp[:, as_coco], None, fitters["learned"]),
                     (f"COCO-17, {label} 2D, from HMR", kp[:, as_coco], hmr, fitters["learned"]),
                     (f"COCO-17, {label} 2D, the better of HMR and the learned start", kp[:, as_coco], hmr,
                      fitters["best"])]
        for name, kp, init, fitter in runs:
            t0 = time.perf_counter()
            r = fitter.fit(kp, boxes, init)
            seconds = time.perf_counter() - t0
            fitted = {"betas": r.betas, "global_orient": r.global_orient, "body_pose": r.body_pose}
            pa = pa_mpjpe(smpl, fitted, truth)
            true_kp = people.keypoints[:, as_coco] if kp.shape[1] == len(as_coco) else people.keypoints
            seen = true_kp[..., 2] > 0
            err = np.linalg.norm(r.keypoints2d.numpy() - true_kp[..., :2], axis=-1)[seen]
            report["results"][name] = {"pa_mpjpe_mm_mean": float(pa.mean()), "pa_mpjpe_mm_median": float(np.median(pa)),
                                       "pa_mpjpe_mm_p90": float(np.percentile(pa, 90)),
                                       "reprojection_px_mean": float(np.nanmean(err)), "fits_per_s": args.num / seconds,
                                       "turned_around": float(r.flipped.float().mean()),
                                       "learned_start": float(r.learned_start.float().mean())}
            print(name, json.dumps(report["results"][name]))
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Fit accuracy ({out.name})", "", f"{args.num} held-out 224 px renders of the mannequin (hmr-fast synth, "
             f"seed 2026); 3D truth from the renders; PA-MPJPE over LSP's 14 joints. Fit settings: the defaults "
             f"(100 iterations, torso stage, both orientations tried). CPU, {cpu_threads()} torch thread(s).", "",
             "| setting | PA-MPJPE mean (mm) | median | p90 | reprojection (px) | fits/s |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['pa_mpjpe_mm_mean']:.1f} | {r['pa_mpjpe_mm_median']:.1f} | "
                     f"{r.get('pa_mpjpe_mm_p90', float('nan')):.1f} | {r.get('reprojection_px_mean', float('nan')):.2f} | "
                     f"{r.get('fits_per_s', float('nan')):.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
