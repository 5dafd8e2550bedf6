"""The keypoint initializer (hmr_fast.fit.initializer): its accuracy alone and as the fit's
start, beside the mean-pose start, and its speed on one CPU thread.

    python benchmarks/initializer.py --out benchmarks/results/initializer_2026-12-07.json [--num 1024]

Held-out synthetic people (seed 2026; training drew from seed 0 and its held-out set from
1000003), made by the training's own simulator (`initializer_training.synthetic_people`):
pose sampler poses (no mixture samples here), any heading, random weak cameras, COCO-17 keypoints of
the mannequin seen by a simulated detector. Two sets:
  - "detector": the training's noise ranges (box margins, up to 4% keypoint noise, outliers,
    low and zero scores, frame-edge truncation, left-right swaps, a fifth without a box);
  - "clean": the true keypoints (score 1) in a detector box (margins only).
For each: PA-MPJPE (mm, LSP's 14 joints of HMR19, similarity-aligned per person) of
  (a) the initializer alone, (b) + the default video refinement (10 iterations with a
  frame's settings, `hmr_fast.infer.people.stages.frame_fit_settings`: no torso stage, no
  turned-around try, lr 0.01), (c) the mean start alone, (d) the mean start + the same 10
  iterations; besides, (b) at lr 0.05, the video's setting before the learned start (from a
  start this close, Adam's first steps, about lr on every parameter whatever its gradient,
  move the body away from it);
and the median keypoint error of each in % of the box side; and how often the guessed
orientation is nearer the truth turned around than the truth (the front/back ambiguity).
Also the default photo fit (FitSettings(): 30 torso iterations, 100 whole-body ones, both
orientations tried) from each start. Speed: people/s at B = 64 on
one thread, of the network alone, of `KeypointInitializer.start` (+ 6D -> axis-angle) and
of `initialize` (+ the boxes). Writes the JSON and a markdown table beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hmr_fast import metrics
from hmr_fast.body import SMPL
from hmr_fast.fit import FitSettings, KeypointFitter, keypoint_format
from hmr_fast.fit.initializer import default_initializer, initialize
from hmr_fast.fit.initializer_training import DetectorNoise, synthetic_people
from hmr_fast.infer.people.stages import frame_fit_settings
from hmr_fast.rotations import rodrigues

COMMAND = "python benchmarks/initializer.py --out benchmarks/results/initializer_2026-12-07.json"
VIDEO_REFINE = frame_fit_settings(10)  # `hmr-fast video --people all`'s default per-frame fit
CLEAN = DetectorNoise(noise=0.0, outlier=0.0, missing=0.0, low_score=0.0, swap=0.0, truncate=0.0, no_box=0.0)


def pa_mpjpe_mm(smpl, fit, truth_joints):
    with torch.no_grad():
        J = smpl(betas=torch.as_tensor(fit["betas"]), global_orient=torch.as_tensor(fit["global_orient"]),
                 body_pose=torch.as_tensor(fit["body_pose"]), joint_set="hmr19", return_verts=False).joints
    return 1000 * metrics.pa_mpjpe(J[:, :14], truth_joints[:, :14]).numpy()


def keypoint_error(fit, people):
    """Median distance (% of the square box side) of the fitted COCO-17 keypoints to the true ones."""
    rows = list(keypoint_format("coco17").rows)
    true_px = people["square"][:, None, :2] + people["keypoints2d"][:, rows] * people["square"][:, None, 2:] / 2
    err = (fit.keypoints2d - true_px).norm(dim=-1) / people["square"][:, None, 2]
    return 100 * float(err.median())


def turned_around_pct(start, people) -> float:
    """% of people whose guessed global orientation is nearer the truth turned around (pi about
    the camera's vertical) than the truth: the front/back ambiguity of 2D keypoints."""
    R = rodrigues(torch.as_tensor(start["global_orient"]))
    truth = rodrigues(people["pose"][:, :3])
    turned = torch.diag(torch.tensor([-1.0, 1.0, -1.0])) @ truth
    return 100 * float(((R - turned).norm(dim=(1, 2)) < (R - truth).norm(dim=(1, 2))).float().mean())


def accuracy(smpl, people) -> dict:
    kp, boxes = people["keypoints"], people["boxes"]
    learned = initialize(kp, boxes)
    rows = {"turned_around_pct": round(turned_around_pct(learned, people), 1)}
    for name, settings, init in (
            ("initializer alone", FitSettings(iters=0, torso_iters=0, try_flip=False), learned),
            ("initializer + the default video refinement (10 iterations, lr 0.01)", VIDEO_REFINE, learned),
            ("initializer + 10 iterations at lr 0.05 (the video's lr before)", replace(VIDEO_REFINE, lr=0.05),
             learned),
            ("mean start alone", FitSettings(iters=0, torso_iters=0, try_flip=False, start="mean"), None),
            ("mean start + the default video refinement", replace(VIDEO_REFINE, start="mean"), None),
            ("the default fit (FitSettings(): 30 torso + 100 iterations, both orientations), learned start",
             FitSettings(), None),
            ("the default fit, mean start", FitSettings(start="mean"), None)):
        t0 = time.perf_counter()
        fit = KeypointFitter(smpl, keypoint_format("coco17"), settings).fit(kp, boxes, init)
        seconds = time.perf_counter() - t0
        pa = pa_mpjpe_mm(smpl, fit.__dict__, people["joints"])
        rows[name] = {"pa_mpjpe_mm": round(float(pa.mean()), 1), "median": round(float(np.median(pa)), 1),
                      "p90": round(float(np.percentile(pa, 90)), 1),
                      "keypoint_error_pct": round(keypoint_error(fit, people), 2), "seconds": round(seconds, 2)}
    return rows


def speed(people, batch: int = 64, rounds: int = 7, calls: int = 100) -> dict:
    """people/s at `batch` on one thread: the fastest of `rounds` rounds (the machine is
    shared: the fastest round is the one least disturbed) and the median round."""
    model = default_initializer()
    kp, boxes = people["keypoints"][:batch], people["boxes"][:batch]
    square = people["square"][:batch]

    def rate(fn):
        for _ in range(10):
            fn()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append(time.perf_counter() - t0)
        return {"best": round(batch * calls / min(times)), "median": round(batch * calls / float(np.median(times)))}

    with torch.no_grad():
        return {"network": rate(lambda: model(kp, square)), "start": rate(lambda: model.start(kp, square)),
                "initialize": rate(lambda: initialize(kp, boxes))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    smpl = SMPL(joint_set="hmr19", backend="reference")
    sets = {"detector": synthetic_people(smpl, np.random.default_rng(args.seed), args.num),
            "clean": synthetic_people(smpl, np.random.default_rng(args.seed), args.num, CLEAN)}
    result = {"command": COMMAND, "num": args.num, "seed": args.seed, "threads": 1, "machine": platform.processor()
              or platform.machine(), "torch": torch.__version__, "asset_meta": default_initializer().meta,
              "accuracy": {name: accuracy(smpl, people) for name, people in sets.items()},
              "people_per_s_b64": speed(sets["detector"]), "load_average": round(os.getloadavg()[0], 2)}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r) -> str:
    lines = [f"# The keypoint initializer ({Path(r['command'].split('--out ')[1]).name})", "",
             f"`{r['command']}`", "",
             f"{r['num']} held-out synthetic people per set (seed {r['seed']}), the mannequin; PA-MPJPE over LSP's "
             f"14 joints (mm); keypoint error: median distance of the fitted COCO-17 keypoints to the true ones, "
             f"% of the box side. CPU, {r['threads']} torch thread, torch {r['torch']}.", ""]
    for name, rows in r["accuracy"].items():
        lines += [f"## {name} keypoints", "", "| start | PA-MPJPE mean | median | p90 | keypoint error (%) | s |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['pa_mpjpe_mm']} | {v['median']} | {v['p90']} | {v['keypoint_error_pct']} | "
                  f"{v['seconds']} |" for k, v in rows.items() if isinstance(v, dict)]
        lines += ["", f"The initializer's global orientation is nearer the truth turned around than the truth for "
                  f"{rows['turned_around_pct']}% of the people.", ""]
    s = r["people_per_s_b64"]
    lines += ["## Speed, B = 64, one thread (people/s; fastest / median of 7 rounds of 100 calls)", "",
              "| | best | median |", "|---|---:|---:|"]
    lines += [f"| {name} | {s[key]['best']} | {s[key]['median']} |" for key, name in (
        ("network", "the network"), ("start", "`KeypointInitializer.start` (+ 6D to axis-angle)"),
        ("initialize", "`initialize` (+ the boxes)"))]
    lines += ["", f"Load average when measured: {r['load_average']} (2 cores, shared).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
