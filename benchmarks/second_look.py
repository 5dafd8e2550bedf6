#!/usr/bin/env python
"""The detector's second look (MoveNetMultiPose.look_again) on rendered crowds with known truth.

    python benchmarks/second_look.py --out benchmarks/results/second_look.json

Three rendered clips (hmr_fast.infer.clips.render_crowd_clip; mannequins, not real people,
so this is the development set for the choice, never the held-out real photos): a 1280x720
crowd of 24 people 18-38% of the frame tall, a 640x360 clip of 4 people 42-58% tall, and a
1280x720 crowd of 12 small people 9-16% tall. Every 5th frame of 31, MoveNet with the
automatic tiles (photos=True: the finest grid on each) with and without the second look:
recall over people at least half visible (box IoU >= 0.5) and PCK@0.1 / @0.05 of the box's
longer side over the renderer's visible COCO keypoints of matched people, the ms per frame
and the model calls per frame. A markdown table is written beside the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from hmr_fast.infer.clips import render_crowd_clip
from hmr_fast.infer.people.detector import MoveNetMultiPose
from hmr_fast.infer.people.metrics import match_people

CLIPS = {"crowd 1280x720, 24 people 18-38% tall": dict(num_people=24, width=1280, height=720, heights=(0.18, 0.38),
                                                        seed=3),
         "4 people 640x360, 42-58% tall": dict(num_people=4, width=640, height=360, seed=5),
         "crowd 1280x720, 12 people 9-16% tall": dict(num_people=12, width=1280, height=720, heights=(0.09, 0.16),
                                                       seed=7)}
FRAMES, STEP = 31, 5


def frames_of(path: Path) -> list:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def score(detector, frames, gt) -> dict:
    hits, seen, found, total, seconds, calls, used = {0.1: 0, 0.05: 0}, 0, 0, 0, 0.0, 0, 0
    for f in range(0, len(frames), STEP):
        t0 = time.perf_counter()
        people = detector(frames[f])
        seconds += time.perf_counter() - t0
        calls += detector.last_calls
        used += 1
        rows = np.flatnonzero((gt["frame"] == f) & (gt["visible"] >= 0.5))
        total += len(rows)
        boxes = np.array([p.box for p in people]).reshape(-1, 4)
        for i, j in match_people(gt["box"][rows], boxes):
            found += 1
            r = rows[i]
            truth = gt["keypoints_coco"][r]
            visible = truth[:, 2] > 0
            size = max(gt["box"][r, 2] - gt["box"][r, 0], gt["box"][r, 3] - gt["box"][r, 1])
            dist = np.linalg.norm(people[j].keypoints[visible, :2] - truth[visible, :2], axis=1)
            seen += int(visible.sum())
            for a in hits:
                hits[a] += int((dist <= a * size).sum())
    return {"recall": found / max(total, 1), "people": total, "pck@0.1": hits[0.1] / max(seen, 1),
            "pck@0.05": hits[0.05] / max(seen, 1), "ms_per_frame": 1000 * seconds / used, "calls_per_frame": calls / used}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    report = {"machine": platform.platform(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "load_average_at_start": os.getloadavg()[0], "clips": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in CLIPS.items():
            folder = Path(tmp) / str(len(report["clips"]))
            folder.mkdir()
            gt = render_crowd_clip(folder, num_frames=FRAMES, **kw)
            frames = frames_of(folder / "crowd.mp4")
            report["clips"][name] = {
                look: score(MoveNetMultiPose(threads=args.threads, photos=True, second_look=look == "second look"),
                            frames, gt)
                for look in ("one look", "second look")}
    report["load_average_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2))
    lines = [f"# The detector's second look on rendered crowds ({report['machine']}, torch {report['torch']}; "
             f"load average {report['load_average_at_start']:.2f} at the start, {report['load_average_at_end']:.2f} "
             "at the end)", "", f"`python benchmarks/second_look.py --out {args.out}`", "",
             "| clip | look | recall | PCK@0.1 | PCK@0.05 | ms / frame | model calls / frame |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, looks in report["clips"].items():
        for look, r in looks.items():
            lines.append(f"| {name} | {look} | {r['recall']:.3f} ({r['people']} people) | {r['pck@0.1']:.3f} | "
                         f"{r['pck@0.05']:.3f} | {r['ms_per_frame']:.0f} | {r['calls_per_frame']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
