"""`hmr-fast video --people all` measured on rendered crowds of mannequins with known truth.

    python benchmarks/people_video.py --out benchmarks/results/people_video.json [--device cpu]
    GPU: HMR_FAST_BENCH_DEVICE=cuda python benchmarks/people_video.py --out benchmarks/results/people_video_h100.json

1. Accuracy, a 640x360 clip of 4 mannequins crossing each other's paths (90 frames; one
   enters late, one leaves and comes back; infer/clips.py): detection recall and
   precision (box IoU >= 0.5; also over people at least half visible), identity switches,
   PCK@0.1 (of the box's larger side) of `keypoints2d_fit` against the true COCO keypoints,
   and MPJPE / PA-MPJPE per matched person (LSP's 14 joints, mm), with HMR alone
   (--refine 0) and with the fit (--refine 10, 30; 10 also with --batch 8: the people of 8
   frames in one HMR call).
2. A crowd, 1280x720, 24 mannequins 18-38% of the frame's height strolling all over it
   (about 21 in the frame at a time, 16 of them at least half visible): FPS end to end
   (decode, detect, track, HMR, fit, draw, encode), the mean ms per frame of each stage,
   people meshed per frame, recall / precision over the people at least half visible and
   identity switches; the detector on the whole frame and 3x4 tiles (MoveNet sees at most
   6 people per call), on every frame with 10 fit iterations, and on every 4th or 5th
   frame (optical flow between) with 5, with MoveNet's input 256 or 192 px.
Everything runs the shipped demo model (it knows the mannequin); the detector is MoveNet
MultiPose from the installed weights. A markdown table is written beside the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from hmr_fast.infer.clips import render_crowd_clip
from hmr_fast.infer.people.metrics import people_errors, tracking_report
from hmr_fast.infer.people.video import PeopleConfig, run_people
from hmr_fast.infer.pipeline import SHIPPED_CHECKPOINT


def run(clip: Path, out_dir: Path, device: str, refine: int, tiles=(1, 1), every=1, batch: int = 1,
        size: int = 256) -> tuple:
    grid = "auto" if tiles == "auto" else f"{tiles[0]}x{tiles[1]}"
    name = f"r{refine}_t{grid}_e{every}_b{batch}_s{size}"
    cfg = PeopleConfig(input=str(clip), out=str(out_dir / f"overlay_{name}.mp4"), checkpoint=str(SHIPPED_CHECKPOINT),
                       save_params=str(out_dir / f"people_{name}.npz"), device=device, refine=refine, tiles=tiles,
                       detect_every=every, batch=batch, detector_size=size, progress=False)
    summary = run_people(cfg, log=lambda *a: None)
    return summary, dict(np.load(cfg.save_params))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/people_video.json")
    parser.add_argument("--device", default=os.environ.get("HMR_FAST_BENCH_DEVICE", "cpu"),
                        help="cpu or cuda (default: HMR_FAST_BENCH_DEVICE, as the other benchmarks, else cpu)")
    parser.add_argument("--work", default=None, help="folder for the clips and overlays (default: a temp folder)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="people_video_"))
    report = {"load_average_at_start": os.getloadavg()[0], "machine": platform.platform(),
              "python": platform.python_version(), "torch": torch.__version__, "device": args.device,
              "cpu_threads": torch.get_num_threads(), "accuracy": {}, "speed": {}}

    crowd = work / "crowd4"
    gt = render_crowd_clip(crowd, num_people=4, num_frames=90, width=640, height=360, seed=0)
    for refine, batch in ((0, 1), (10, 1), (10, 8), (30, 1)):
        summary, params = run(crowd / "crowd.mp4", crowd, args.device, refine, batch=batch)
        every = tracking_report(gt, params)
        half = tracking_report(gt, params, min_visible=0.5)
        entry = {"recall": every["recall"], "precision": every["precision"], "recall_half_visible": half["recall"],
                 "id_switches": every["id_switches"], "tracks": summary["tracks"], "fps": summary["fps"],
                 "stage_ms": summary["stage_ms"], **people_errors(gt, params, every)}
        report["accuracy"][f"refine {refine}" + (f", batch {batch}" if batch > 1 else "")] = entry
        print("4 people, refine", refine, "batch", batch, json.dumps(entry), flush=True)

    big = work / "crowd24"
    gt = render_crowd_clip(big, num_people=24, num_frames=60, width=1280, height=720, seed=1, heights=(0.18, 0.38))
    frames = int(gt["num_frames"])
    report["crowd"] = {"in_frame_per_frame": len(gt["frame"]) / frames,
                       "half_visible_per_frame": float((gt["visible"] >= 0.5).sum()) / frames}
    default = PeopleConfig(input="", out="", checkpoint="")
    crowd_runs = (("default flags (automatic tiles and detect-every)", default.tiles, default.detect_every,
                   default.refine, default.detector_size),
                  ("every frame", (3, 4), 1, 10, 256), ("every 4th frame", (3, 4), 4, 5, 256),
                  ("every 4th frame, 192 px", (3, 4), 4, 5, 192), ("every 5th frame, 192 px", (3, 4), 5, 5, 192))
    for name, tiles, every, refine, size in crowd_runs:
        summary, params = run(big / "crowd.mp4", big, args.device, refine, tiles, every, size=size)
        half = tracking_report(gt, params, min_visible=0.5)
        entry = {"tiles": tiles if tiles == "auto" else list(tiles), "detect_every": every, "detector_size": size, "refine": refine,
                 "fps": summary["fps"],
                 "people_per_frame": summary["people_rows"] / max(summary["frames"], 1), "tracks": summary["tracks"],
                 "recall_half_visible": half["recall"], "precision": half["precision"],
                 "id_switches": half["id_switches"], "stage_ms": summary["stage_ms"],
                 "latency_ms_mean": summary["latency_ms_mean"]}
        report["speed"][name] = entry
        print("24 people, 1280x720,", name, json.dumps(entry), flush=True)

    report["load_average_at_end"] = os.getloadavg()[0]  # the 2-core machine is shared: FPS moves with it
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# `hmr-fast video --people all` on rendered crowds ({report['machine']}, torch {report['torch']}, "
             f"{args.device}, {report['cpu_threads']} threads; load average {report['load_average_at_start']:.2f} at "
             f"the start, {report['load_average_at_end']:.2f} at the end: other jobs share this machine)", "",
             "Accuracy: 4 mannequins, 640x360, 90 frames (render_crowd_clip seed 0), MoveNet on the whole frame.", "",
             "| | recall | recall (half visible) | precision | ID switches | PCK@0.1 fit | px error (median) "
             "| MPJPE mm | PA-MPJPE mm | FPS |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["accuracy"].items():
        lines.append(f"| {name} | {r['recall']:.3f} | {r['recall_half_visible']:.3f} | {r['precision']:.3f} | "
                     f"{r['id_switches']} | {r['pck@0.1']:.3f} | {r['keypoint_error_px_median']:.1f} | "
                     f"{r['mpjpe_mm']:.1f} | {r['pa_mpjpe_mm']:.1f} | {r['fps']:.1f} |")
    crowd = report["crowd"]
    lines += ["", f"A crowd: 24 mannequins (18-38% of the frame's height), 1280x720, 60 frames (seed 1): "
              f"{crowd['in_frame_per_frame']:.1f} people in the frame on average, "
              f"{crowd['half_visible_per_frame']:.1f} at least half visible. MoveNet on the whole frame and 3x4 "
              "tiles. Recall, precision and identity switches over the people at least half visible; "
              "mean ms per frame per stage (detect includes the optical flow between detections).", "",
              "| detector runs on | fit iterations | FPS | people meshed per frame | tracks | recall | precision "
              "| ID switches | detect | HMR | fit | mesh + draw |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["speed"].items():
        s = r["stage_ms"]
        lines.append(f"| {name} | {r['refine']} | {r['fps']:.2f} | {r['people_per_frame']:.1f} | {r['tracks']} | "
                     f"{r['recall_half_visible']:.3f} | {r['precision']:.3f} | {r['id_switches']} | "
                     f"{s['detect']:.0f} | {s['hmr']:.0f} | {s['fit']:.0f} | {s['mesh_and_draw']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("wrote", out, "and", out.with_suffix(".md"))


if __name__ == "__main__":
    main()
