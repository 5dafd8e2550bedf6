"""Training on one GPU: fused SMPL vs smplx's layer, GPU memory and utilisation, SMPL's
share of a step, held-out PA-MPJPE at start and end (issue "HMR model and full adversarial
training", section 7). Each phase fits in a 10-minute command and can be re-run:

    python benchmarks/train_gpu.py synth   --work W                       # ~1-2 min, 16 cores
    python benchmarks/train_gpu.py train   --work W --backend fused --minutes 9
    python benchmarks/train_gpu.py train   --work W --backend fused --minutes 9   # resumes: 10+ min total
    python benchmarks/train_gpu.py train   --work W --backend smplx --minutes 3 [--smplx-path DIR]
    python benchmarks/train_gpu.py profile --work W                       # SMPL share at batch 64
    python benchmarks/train_gpu.py report  --work W                       # benchmarks/results/train_gpu_*.{json,md}

`train` runs training/configs/synthetic.yaml (key=value overrides after the options),
evaluates the untrained model first (PA-MPJPE at start), samples GPU utilisation and memory
with nvidia-smi every 0.5 s, and writes W/result_<backend>.json. Backends: fused (the
Triton kernels, config smpl_backend=auto), reference (hmr_fast's pure-torch SMPL on the
GPU), smplx (smplx's SMPL layer; where smplx is not installed, --smplx-path adds a folder
holding the smplx package to the end of sys.path).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "synthetic.yaml"
RESULTS = REPO / "benchmarks" / "results"
BACKENDS = {"fused": "auto", "reference": "reference", "smplx": "smplx"}


class GPUSampler:
    """nvidia-smi utilisation.gpu (%) and memory.used (MiB) every interval, in a thread."""

    def __init__(self, interval_ms: int = 500, enabled: bool = True):
        self.interval_ms = interval_ms
        self.enabled = enabled
        self.samples = []
        self._proc = None
        self._thread = None

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"-lms={self.interval_ms}", "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except FileNotFoundError:
            print("nvidia-smi not found: no utilisation samples", file=sys.stderr)
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.strip().split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def summary(self, since: float = 0.0) -> dict:
        samples = [s for s in self.samples if s[0] >= since]
        if not samples:
            return {}
        util = [s[1] for s in samples]
        return {"gpu_util_mean": statistics.mean(util), "gpu_util_median": statistics.median(util),
                "gpu_util_p10": sorted(util)[len(util) // 10], "nvidia_smi_mem_mib_max": max(s[2] for s in samples),
                "util_samples": len(util)}


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"


def phase_synth(args) -> None:
    from hmr_fast.data.synth import synthesize

    summary = synthesize(Path(args.work) / "data", args.num_images, num_prior=args.num_prior, workers=args.workers,
                         seed=args.seed, img_size=args.img_size)
    print(json.dumps(summary))


def phase_train(args) -> None:
    from hmr_fast.training.config import load_config
    from hmr_fast.training.train import CHECKPOINT, Trainer

    if args.smplx_path:
        sys.path.append(os.path.abspath(args.smplx_path))
    work = Path(args.work)
    out = work / f"run_{args.backend}"
    overrides = [f"model.smpl_backend={BACKENDS[args.backend]}", f"train.time_limit_minutes={args.minutes}",
                 *args.overrides]
    config = load_config(CONFIG, overrides)
    resume = (out / CHECKPOINT).is_file()
    trainer = Trainer(config, work / "data", out, resume=resume)
    result_path = work / f"result_{args.backend}.json"
    result = json.loads(result_path.read_text()) if resume and result_path.is_file() else {}
    if not resume:
        result["start"] = trainer.evaluate()  # the untrained model on the held-out renders
        print("start:", json.dumps(result["start"]))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with GPUSampler(enabled=cuda) as sampler:
        t0 = time.time()
        last = trainer.fit()
        seconds = time.time() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if "images_per_s" in r][3:]  # skip the warm-up logs of this call
    session = {
        "seconds": seconds, "steps_end": trainer.step, "last": last,
        "images_per_s_median": statistics.median(r["images_per_s"] for r in steady) if steady else None,
        "data_wait_frac_median": statistics.median(r["data_wait_frac"] for r in steady) if steady else None,
        "torch_max_allocated_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "torch_max_reserved_gb": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        **sampler.summary(since=t0 + 30),  # after the first 30 s (worker start-up, compilation)
    }
    result.setdefault("sessions", []).append(session)
    resolve = getattr(trainer.smpl, "_resolve_backend", None)  # SMPL chooses; smplx's layer has no fused path
    result["fused_smpl_active"] = resolve is not None and resolve(trainer.device) == "triton"
    result.update(backend=args.backend, config=str(CONFIG.relative_to(REPO)), overrides=overrides,
                  device=device_name(), torch=torch.__version__, end={k: v for k, v in last.items() if k.startswith("eval/")})
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(session, indent=1))


def phase_profile(args) -> None:
    """SMPL's share of a training step at batch 64: (a) the SMPL forward + backward alone,
    timed with CUDA events, over the measured step time; (b) a torch.profiler table of a few
    real training steps (the "hmr.smpl" range is the forward)."""
    from torch.profiler import ProfilerActivity, profile

    from hmr_fast.rotations import rodrigues
    from hmr_fast.model import build_smpl
    from hmr_fast.training.config import load_config
    from hmr_fast.training.train import Trainer

    if args.smplx_path:
        sys.path.append(os.path.abspath(args.smplx_path))
    if not torch.cuda.is_available():
        raise SystemExit("profile needs a CUDA device")
    work = Path(args.work)
    report = {"device": device_name(), "batch": 64}
    for backend in args.backends:
        smpl = build_smpl({"smpl_backend": BACKENDS[backend], "joint_set": "hmr19"}, device="cuda")
        gen = torch.Generator(device="cuda").manual_seed(0)
        betas = torch.randn(64, 10, device="cuda", generator=gen).requires_grad_()
        rot = rodrigues(0.3 * torch.randn(64, 24, 3, device="cuda", generator=gen)).requires_grad_()
        cam = torch.tensor([[0.9, 0.0, 0.0]], device="cuda").repeat(64, 1).requires_grad_()

        def step():
            joints, kp = smpl.joints_projected(betas, rot, cam, "hmr19")
            (joints.square().sum() + kp.abs().sum()).backward()

        for _ in range(20):
            step()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(200):
            step()
        end.record()
        torch.cuda.synchronize()
        report[f"smpl_fwd_bwd_ms_{backend}"] = start.elapsed_time(end) / 200

        # Real training steps under the profiler (a throwaway run folder).
        config = load_config(CONFIG, [f"model.smpl_backend={BACKENDS[backend]}", "data.num_workers=8",
                                      "train.eval_every=1000000", "train.checkpoint_every=1000000"])
        trainer = Trainer(config, work / "data", work / f"profile_{backend}_{int(time.time())}")
        batches = [next(trainer.batches) for _ in range(30)]
        for b in batches[:10]:
            trainer.train_step(b)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in batches[10:]:
            trainer.train_step(b)
        torch.cuda.synchronize()
        step_ms = (time.perf_counter() - t0) / 20 * 1000
        report[f"train_step_ms_{backend}"] = step_ms  # batches already in memory: compute only
        report[f"smpl_share_{backend}"] = report[f"smpl_fwd_bwd_ms_{backend}"] / step_ms
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for b in batches[10:20]:
                trainer.train_step(b)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
        (work / f"profile_{backend}.txt").write_text(table)
        prof.export_chrome_trace(str(work / f"profile_{backend}.json"))
        print(f"{backend}: SMPL fwd+bwd {report[f'smpl_fwd_bwd_ms_{backend}']:.3f} ms, "
              f"train step {step_ms:.1f} ms, share {100 * report[f'smpl_share_{backend}']:.2f}%")
    (work / "profile.json").write_text(json.dumps(report, indent=1) + "\n")


def _median(values):
    """Median of the values that were measured (a session too short to log has None)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def phase_report(args) -> None:
    work = Path(args.work)
    results = {b: json.loads((work / f"result_{b}.json").read_text()) for b in BACKENDS
               if (work / f"result_{b}.json").is_file()}
    profile = json.loads((work / "profile.json").read_text()) if (work / "profile.json").is_file() else {}
    summary = {"device": next(iter(results.values()))["device"] if results else device_name(),
               "profile": profile, "runs": {}}
    for backend, r in results.items():
        sessions = r["sessions"]
        summary["runs"][backend] = {
            "train_seconds": sum(s["seconds"] for s in sessions), "steps": sessions[-1]["steps_end"],
            "images_per_s_median": _median(s["images_per_s_median"] for s in sessions),
            "data_wait_frac_median": _median(s["data_wait_frac_median"] for s in sessions),
            "gpu_util_mean": statistics.mean(s["gpu_util_mean"] for s in sessions if "gpu_util_mean" in s)
            if any("gpu_util_mean" in s for s in sessions) else None,
            "torch_max_allocated_gb": max((s["torch_max_allocated_gb"] or 0) for s in sessions),
            "fused_smpl_active": r.get("fused_smpl_active"),
            "pa_mpjpe_mm_start": r.get("start", {}).get("eval/pa_mpjpe_mm"),
            "pa_mpjpe_mm_end": r.get("end", {}).get("eval/pa_mpjpe_mm"),
            "mpjpe_mm_end": r.get("end", {}).get("eval/mpjpe_mm"),
        }
    runs = summary["runs"]
    fused, smplx = (runs.get(b, {}).get("images_per_s_median") for b in ("fused", "smplx"))
    if fused and smplx:
        summary["speedup_fused_vs_smplx"] = fused / smplx
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = summary["device"].replace(" ", "_").replace("/", "_")
    (RESULTS / f"train_gpu_{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# HMR training on {summary['device']} (training/configs/synthetic.yaml)", "",
             "| SMPL | images/s | data wait | GPU util % | max alloc GB | PA-MPJPE start -> end (mm) | steps | s |",
             "|---|---|---|---|---|---|---|---|"]
    for backend, r in runs.items():
        fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {backend} | {fmt(r['images_per_s_median'], '.0f')} | {fmt(r['data_wait_frac_median'], '.3f')} | "
                     f"{fmt(r['gpu_util_mean'], '.0f')} | {fmt(r['torch_max_allocated_gb'], '.2f')} | "
                     f"{fmt(r['pa_mpjpe_mm_start'], '.1f')} -> {fmt(r['pa_mpjpe_mm_end'], '.1f')} | {r['steps']} | "
                     f"{r['train_seconds']:.0f} |")
    if "speedup_fused_vs_smplx" in summary:
        lines += ["", f"Throughput fused / smplx: {summary['speedup_fused_vs_smplx']:.2f}x (target >= 1.2x)."]
    for key, value in profile.items():
        if key.startswith("smpl_share_"):
            lines.append(f"SMPL share of a batch-64 step ({key[11:]}): {100 * value:.2f}% (target <= 3%).")
    (RESULTS / f"train_gpu_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="phase", required=True)
    p = sub.add_parser("synth")
    p.add_argument("--work", required=True)
    p.add_argument("--num-images", type=int, default=50000)
    p.add_argument("--num-prior", type=int, default=20000)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-size", type=int, default=224)
    p = sub.add_parser("train")
    p.add_argument("--work", required=True)
    p.add_argument("--backend", choices=sorted(BACKENDS), default="fused")
    p.add_argument("--minutes", type=float, default=9.0, help="stop (eval + checkpoint) after this long")
    p.add_argument("--smplx-path", help="folder holding the smplx package, appended to sys.path")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p = sub.add_parser("profile")
    p.add_argument("--work", required=True)
    p.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=["fused", "smplx"])
    p.add_argument("--smplx-path")
    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    {"synth": phase_synth, "train": phase_train, "profile": phase_profile, "report": phase_report}[args.phase](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
