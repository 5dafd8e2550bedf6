"""Every person on real material with default flags: held-out photographs and a real crowd.

    python benchmarks/real_people_runs.py --photos /work/realdata/photos --crowd /work/realdata/crowd/CLIP.mp4 \
        --out benchmarks/results/real_people_2026-12-07.json

The material is not in the repository (benchmarks/real/MANIFEST.md: where each file comes
from, its licence, and gather.py, which rebuilds the folder from the source snapshots); it is
never used for training or tuning. Runs, each scored by benchmarks/real_people.py (recall at
box IoU >= 0.5 over people with >= 5 visible keypoints; PCK@0.1 / 0.05 of the box's longer
side over their visible keypoints):
  1. `hmr-fast images PHOTOS --out DIR` (default flags), and with --refine 0 (HMR alone),
     --fit-start hmr (the fit from HMR's prediction, not the learned start) and
     --second-look off (each person's keypoints from the detector's first look);
  2. `hmr-fast video PHOTOS --people all` (default flags: the photos as a video's frames);
  3. `hmr-fast video CROWD --people all` (default flags): people per frame from the first
     frame on, track continuity (the share of a frame's tracks also in the next frame), FPS.
Writes the JSON and a markdown table beside it, with the default run split by source.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_people  # noqa: E402  (the evaluator beside this file)

from hmr_fast.infer.people.images import ImagesConfig, run_images  # noqa: E402
from hmr_fast.infer.people.video import PeopleConfig, run_people  # noqa: E402
from hmr_fast.infer.pipeline import SHIPPED_CHECKPOINT  # noqa: E402


def score(annotations, npz, video: bool) -> dict:
    images, people, ignored = real_people.load_annotations(annotations)
    dets, _, _ = real_people.load_results(npz, video, images, 0.0)
    result = real_people.evaluate(images, people, ignored, dets)
    return {**result["overall"], "by_source": result["by_source"]}


def continuity(npz) -> dict:
    z = np.load(npz)
    frame, track = z["frame"], z["track_id"]
    frames = sorted(set(frame.tolist()))
    per_frame = [int((frame == f).sum()) for f in frames]
    share = [len(set(track[frame == a]) & set(track[frame == b])) / max(len(set(track[frame == a])), 1)
             for a, b in zip(frames, frames[1:])]
    return {"people_per_frame": per_frame, "first_frame_people": per_frame[0] if per_frame else 0,
            "continuity_mean": float(np.mean(share)) if share else float("nan"),
            "continuity_min": float(np.min(share)) if share else float("nan")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", required=True, help="the folder with the photos and annotations.json")
    parser.add_argument("--crowd", default=None, help="a real crowd video (none: the photos only)")
    parser.add_argument("--checkpoint", default=None, help="the HMR checkpoint (default: the shipped one)")
    parser.add_argument("--out", default="benchmarks/results/real_people_2026-12-07.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="real_people_"))
    annotations = Path(args.photos) / "annotations.json"
    checkpoint = args.checkpoint or str(SHIPPED_CHECKPOINT)
    report = {"machine": platform.platform(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "checkpoint": checkpoint,
              "load_average_at_start": os.getloadavg()[0], "photos": {}, "command": " ".join(sys.argv)}
    for name, options in (("images, default flags", {}), ("images --refine 0 (HMR alone)", {"refine": 0}),
                          ("images --fit-start hmr", {"start": "hmr"}),
                          ("images --second-look off", {"second_look": False})):
        out = work / name.split(",")[0].replace(" ", "_").replace("-", "").replace("(", "").replace(")", "")
        t0 = time.perf_counter()
        summary = run_images(ImagesConfig(inputs=[args.photos], out=str(out), progress=False,
                                          checkpoint=args.checkpoint, **options))
        entry = {**score(annotations, out / "people.npz", False), "seconds": round(time.perf_counter() - t0, 1),
                 "images": summary["images"]}
        report["photos"][name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if k != "by_source"}), flush=True)
    npz = work / "video_photos.npz"
    summary = run_people(PeopleConfig(input=args.photos, out=str(work / "video_photos.mp4"), save_params=str(npz),
                                      checkpoint=checkpoint, progress=False), log=lambda *a: None)
    entry = {**score(annotations, npz, True), "fps": summary["fps"], "stage_ms": summary["stage_ms"]}
    report["photos"]["video --people all, default flags"] = entry
    print("video", json.dumps({k: v for k, v in entry.items() if k != "by_source"}), flush=True)
    if args.crowd:
        npz = work / "crowd.npz"
        summary = run_people(PeopleConfig(input=args.crowd, out=str(work / "crowd.mp4"), save_params=str(npz),
                                          checkpoint=checkpoint, progress=False), log=lambda *a: None)
        report["crowd"] = {"input": Path(args.crowd).name, "frames": summary["frames"], "fps": summary["fps"],
                           "stage_ms": summary["stage_ms"], "tracks": summary["tracks"], **continuity(npz)}
        print("crowd", json.dumps(report["crowd"]), flush=True)
    report["load_average_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Every person on real material, default flags ({report['machine']}, torch {report['torch']}; "
             f"load average {report['load_average_at_start']:.2f} at the start, "
             f"checkpoint {Path(checkpoint).name}, "
             f"{report['load_average_at_end']:.2f} at the end)", "", f"`{report['command']}`", "",
             "Held-out photographs (benchmarks/real/MANIFEST.md); recall over people with >= 5 visible keypoints "
             "(box IoU >= 0.5), PCK of the box's longer side over their visible keypoints.", "",
             "| run | recall | precision | PCK@0.1 detector | PCK@0.05 detector | PCK@0.1 fit | PCK@0.05 fit |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["photos"].items():
        lines.append(f"| {name} | {r['recall']:.3f} ({r['matched']}/{r['people']}) | {r['precision']:.3f} | "
                     f"{r['pck@0.1_keypoints2d']:.3f} | {r['pck@0.05_keypoints2d']:.3f} | "
                     f"{r['pck@0.1_keypoints2d_fit']:.3f} | {r['pck@0.05_keypoints2d_fit']:.3f} |")
    lines += ["", "The default `images` run by source (benchmarks/real/MANIFEST.md):", "",
              "| source | people | recall | PCK@0.1 detector | PCK@0.05 detector | PCK@0.1 fit | PCK@0.05 fit |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for source, r in report["photos"]["images, default flags"]["by_source"].items():
        lines.append(f"| {source} | {r['people']} | {r['recall']:.3f} | {r['pck@0.1_keypoints2d']:.3f} | "
                     f"{r['pck@0.05_keypoints2d']:.3f} | {r['pck@0.1_keypoints2d_fit']:.3f} | "
                     f"{r['pck@0.05_keypoints2d_fit']:.3f} |")
    c = report.get("crowd")
    lines += [] if c is None else ["", f"A real crowd ({c['input']}, {c['frames']} frames): people per frame {c['people_per_frame']} "
              f"({c['first_frame_people']} in the first frame), track continuity between consecutive frames "
              f"{c['continuity_mean']:.2f} mean ({c['continuity_min']:.2f} lowest), {c['tracks']} tracks, "
              f"{c['fps']:.1f} FPS; ms per frame: " + ", ".join(f"{k} {v:.0f}" for k, v in c["stage_ms"].items())]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("wrote", out, "and", out.with_suffix(".md"))


if __name__ == "__main__":
    main()
