"""Backbones for HMR on the CPU: crops/s at B = 8, parameters and packed checkpoint size.

    python benchmarks/bench_backbones.py --out benchmarks/results/backbones_cpu_2026-12-07.json
    python benchmarks/bench_backbones.py --threads 1 --out benchmarks/results/backbones_cpu_1thread_2026-12-07.json

Models: HMR with MoveNet's backbone (`model.backbone: movenet`, its weights where installed,
else random: the timing does not depend on them) at 128, 160, 192 and 256 px crops; the
shipped demo checkpoint (resnet18, 64 px) at 64 and 128 px. Each is written as a checkpoint,
packed (`hmr-fast pack`: float16, deflated) and run as the Predictor runs it (the torch
backend: encoder + IEF + SMPL with vertices on preprocessed crops), eval mode, --threads
torch threads (2: the whole machine). Per case: the median of --rounds timed calls after
2 warm-up calls, of the whole model and of the encoder alone. The load average is recorded
before and after: the 2-core machine is shared, so figures move with the other load.
Writes the JSON and a markdown table beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hmr_fast.errors import HmrFastError
from hmr_fast.infer.backends import make_backend
from hmr_fast.infer.demo import DEMO_CHECKPOINT
from hmr_fast.model import HMR, read_checkpoint, save_checkpoint
from hmr_fast.model.checkpoint import pack_checkpoint

MOVENET_SIZES = (128, 160, 192, 256)
BATCH = 8


def movenet_checkpoint(path: Path, size: int) -> tuple:
    """An HMR checkpoint with MoveNet's backbone (its weights when installed) at `size` px."""
    pretrained = "movenet"
    try:
        model = HMR(backbone="movenet", img_size=size, pretrained=pretrained)
    except HmrFastError:
        pretrained = None
        model = HMR(backbone="movenet", img_size=size)
    config = {"model": dict(backbone="movenet", pretrained=pretrained, pose_repr="axis_angle", ief_iters=3,
                            img_size=size, joint_set="hmr19", dropout=0.5, smpl_model=None)}
    save_checkpoint(path, model, config)
    return path, pretrained is not None


def median_seconds(fn, rounds: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(checkpoint: Path, size: int, rounds: int, workdir: Path) -> dict:
    packed = pack_checkpoint(checkpoint, workdir / f"{checkpoint.stem}_{size}_packed.pt")
    backend = make_backend(packed, "torch", "cpu", "auto", with_vertices=True, max_batch=BATCH)
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    encoder = backend.model.encoder
    state = read_checkpoint(packed)["model"]
    whole = median_seconds(lambda: backend.run(images), rounds)
    with torch.inference_mode():
        alone = median_seconds(lambda: encoder(images), rounds)
    return {"crops_per_s": round(BATCH / whole, 1), "encoder_crops_per_s": round(BATCH / alone, 1),
            "ms_per_batch": round(1000 * whole, 1),
            "params_M": round(sum(v.numel() for v in state.values() if v.is_floating_point()) / 1e6, 2),
            "encoder_params_M": round(sum(v.numel() for k, v in state.items() if k.startswith("encoder.")) / 1e6, 2),
            "packed_MB": round(packed.stat().st_size / 1e6, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON to write (and a .md beside it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [("resnet18 (demo checkpoint)", Path(DEMO_CHECKPOINT), 64, True),
                 ("resnet18 (demo checkpoint)", Path(DEMO_CHECKPOINT), 128, True)]
        for size in MOVENET_SIZES:
            path, real = movenet_checkpoint(work / f"movenet_{size}.pt", size)
            cases.append(("movenet", path, size, real))
        for name, path, size, real in cases:
            row = {"backbone": name, "size": size, "batch": BATCH, "real_weights": real,
                   **measure(path, size, args.rounds, work), "loadavg_1min": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    threads = f" --threads {args.threads}" if args.threads != 2 else ""
    result = {"command": f"python benchmarks/bench_backbones.py{threads} --out {args.out}", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
              "threads": args.threads, "rounds": args.rounds, "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "rows": rows}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    def load(avg):
        return " / ".join(f"{a:.2f}" for a in avg)

    lines = [f"# Backbones on the CPU ({result['date']}, {result['machine']}, torch {result['torch']}, "
             f"torch threads {result['threads']}, B = {BATCH})", "",
             f"`{result['command']}`; load average (1 / 5 / 15 min; it counts this run too) before "
             f"{load(result['loadavg_before'])}, after {load(result['loadavg_after'])}. The median of "
             f"{result['rounds']} calls; whole model: encoder + IEF + SMPL with vertices (the torch backend).", "",
             "| backbone | crop px | crops/s (whole model) | crops/s (encoder) | params M (encoder) "
             "| packed checkpoint MB |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['backbone']} | {r['size']} | {r['crops_per_s']} | {r['encoder_crops_per_s']} | {r['params_M']} "
              f"({r['encoder_params_M']}) | {r['packed_MB']} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
