"""Inference benchmarks: per backend, latency at B = 1 and throughput at B = 8, 64, 256 of the
whole model (encoder + IEF + SMPL with vertices, on preprocessed crops already on the
device), and the video command's FPS with the mesh overlay.

CPU (short: the 2-core CI machine is slow):
    pytest benchmarks/bench_inference.py --benchmark-json benchmarks/results/inference_cpu.json
    python benchmarks/bench_inference.py --summary benchmarks/results/inference_cpu.json \
        > benchmarks/results/inference_cpu.md
GPU (H100 / H200; compiled, TensorRT where installed, AOTInductor):
    HMR_FAST_BENCH_DEVICE=cuda pytest benchmarks/bench_inference.py \
        --benchmark-json benchmarks/results/inference_h100.json
Models: "demo" is the shipped demo checkpoint (resnet18, 64 px crops); "resnet50" is HMR's
configuration (resnet50, 224 px) with random weights (the timing does not depend on them).
On the CPU, resnet50 runs at B = 1 and 8 only, and AOTInductor (minutes of C++ compile)
only with HMR_FAST_BENCH_AOTI=1.
Threads: on the CPU the model gets HMR_FAST_BENCH_THREADS threads (default 1, what the
video command gives it on 2 cores): the CI machine is shared, and two OpenMP threads on a
busy 2-core machine stall each other by 10-30x, which made 2-thread figures meaningless.
Each result records its thread count and the machine's load average.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

DEVICE = torch.device(os.environ.get("HMR_FAST_BENCH_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"
BATCHES = (1, 8, 64, 256)
CPU_RESNET50_BATCHES = (1, 8)
BACKENDS = ("torch", "compiled", "onnxruntime", "tensorrt", "aoti")
THREADS = int(os.environ.get("HMR_FAST_BENCH_THREADS", "1" if not ON_GPU else "0")) or None


@pytest.fixture(scope="session", autouse=True)
def threads():
    previous = torch.get_num_threads()
    if THREADS:
        torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def _conditions() -> dict:
    return {"threads": torch.get_num_threads(), "load_avg_1min": round(os.getloadavg()[0], 2)}


def _available(backend: str) -> str:
    """'' when the backend can run here, else why not."""
    if backend == "compiled" and not ON_GPU:
        return "compiled is the CUDA backend (Inductor on the CPU takes minutes to compile)"
    if backend == "tensorrt":
        if not ON_GPU:
            return "TensorRT needs a GPU"
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed"
    if backend == "aoti" and not ON_GPU and os.environ.get("HMR_FAST_BENCH_AOTI") != "1":
        return "AOTInductor on the CPU compiles for minutes; set HMR_FAST_BENCH_AOTI=1"
    if backend == "onnxruntime" and ON_GPU:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime here has no CUDA execution provider"
    return ""


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench_inference")


@pytest.fixture(scope="session")
def checkpoints(workdir):
    from hmr_fast.infer.demo import DEMO_CHECKPOINT
    from random_checkpoint import make_checkpoint

    demo = str(DEMO_CHECKPOINT) if DEMO_CHECKPOINT.is_file() else make_checkpoint(workdir / "demo.pt", "resnet18", 64)
    return {"demo": demo, "resnet50": make_checkpoint(workdir / "resnet50.pt", "resnet50", 224)}


_BACKEND_CACHE = {}


def _backend(name: str, model: str, checkpoints, workdir):
    """Build (export first where needed) and cache one backend for one model."""
    from hmr_fast.infer.backends import make_backend

    key = (name, model)
    if key in _BACKEND_CACHE:
        return _BACKEND_CACHE[key]
    ckpt = checkpoints[model]
    path = ckpt
    if name == "onnxruntime":
        from hmr_fast.export.onnx import export_onnx

        path = export_onnx(ckpt, workdir / f"{model}.onnx")
    elif name == "tensorrt":
        from hmr_fast.export.tensorrt import build_engine

        path = workdir / f"{model}.engine"
        build_engine(ckpt, path, "fp16", max_batch=max(BATCHES), opt_batch=8)
    elif name == "aoti":
        from hmr_fast.export.aoti import export_aoti

        path = export_aoti(ckpt, workdir / f"{model}.pt2", DEVICE, max_batch=max(BATCHES),
                           precision="bf16" if ON_GPU else "fp32")
    backend = make_backend(path, name, DEVICE, "auto", with_vertices=True, max_batch=max(BATCHES), threads=THREADS)
    if name == "compiled":
        backend.warmup(BATCHES)  # the sizes measured (each compiles and captures once)
    _BACKEND_CACHE[key] = backend
    return backend


def _sync():
    if ON_GPU:
        torch.cuda.synchronize(DEVICE)


def _cases():
    for model in ("demo", "resnet50"):
        for backend in BACKENDS:
            for batch in BATCHES:
                if model == "resnet50" and not ON_GPU and batch not in CPU_RESNET50_BATCHES:
                    continue
                yield pytest.param(model, backend, batch, id=f"{model}-{backend}-B{batch}")


@pytest.mark.parametrize("model, backend_name, batch", list(_cases()))
def test_model(benchmark, checkpoints, workdir, model, backend_name, batch):
    why = _available(backend_name)
    if why:
        pytest.skip(why)
    backend = _backend(backend_name, model, checkpoints, workdir)
    size = backend.img_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    benchmark.group = f"{model} B={batch}"
    benchmark.extra_info.update(impl=backend_name, mode=f"model {model} {size}px", batch=batch, device=str(DEVICE),
                                model=model)

    def call():
        out = backend.run(images)
        _sync()
        return out

    call()  # warm up (CUDA graphs, allocator, onnxruntime's first run)
    work = batch * (4.1 if model == "resnet50" else 0.15)  # ~GFLOP of the encoder per call
    rounds = max(3, min(200, int((2000 if ON_GPU else 20) / work)))
    out = benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)
    assert out["vertices"].shape == (batch, 6890, 3)
    benchmark.extra_info.update(images_per_s=batch / benchmark.stats.stats.median, **_conditions())


@pytest.fixture(scope="session")
def clip(workdir):
    from hmr_fast.infer.demo import render_clip

    w, h = (1280, 720) if ON_GPU else (320, 240)
    render_clip(workdir / "clip", num_frames=300 if ON_GPU else 60, width=w, height=h)
    return workdir / "clip" / "clip.mp4", (w, h)


@pytest.mark.parametrize("model", ["demo"] + (["resnet50"] if ON_GPU else []))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_video_fps(benchmark, checkpoints, workdir, clip, model, backend_name):
    """The whole `hmr-fast video` job: decode, crop, model, smoothing, mesh overlay, encode."""
    from hmr_fast.infer.predictor import Predictor
    from hmr_fast.infer.video import VideoConfig, run_video

    why = _available(backend_name)
    if why:
        pytest.skip(why)
    backend = _backend(backend_name, model, checkpoints, workdir)
    predictor = Predictor(None, backend_object=backend, max_batch=1)
    path, (w, h) = clip
    cfg = VideoConfig(input=str(path), checkpoint="", out=str(workdir / f"out_{backend_name}_{model}.mp4"),
                      progress=False)
    result = {}

    def job():
        result.update(run_video(cfg, predictor, log=lambda *a: None))

    job()  # warm up: the first frames pay one-off costs
    benchmark.pedantic(job, rounds=2, warmup_rounds=0, iterations=1)
    benchmark.group = f"video {w}x{h}"
    benchmark.extra_info.update(impl=backend_name, mode=f"video {w}x{h} {model}", batch=1, device=str(DEVICE),
                                model=model, video_fps=result["fps"], frames=result["frames"],
                                latency_ms_mean=result["latency_ms_mean"], rasterizer=result["rasterizer"],
                                **_conditions())
    assert result["frames"] > 0


def summary(json_path: str) -> str:
    """Markdown tables from a --benchmark-json file."""
    report = json.loads(Path(json_path).read_text())
    machine = report.get("machine_info", {})
    lines = [f"# Inference benchmarks ({Path(json_path).name})", "",
             f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
             f"{machine.get('cpu', {}).get('count', '?')} logical CPUs; {report.get('datetime', '')}", "",
             "| model | backend | device | B | median latency | images/s | threads | load |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    video = ["", "| video | model | backend | device | FPS | mean latency / frame | rasteriser | threads | load |",
             "|---|---|---|---|---:|---:|---|---:|---:|"]
    for b in sorted(report["benchmarks"], key=lambda b: (b["extra_info"].get("mode", ""), b["extra_info"]["impl"],
                                                          b["extra_info"].get("batch", 0))):
        info, med = b["extra_info"], b["stats"]["median"]
        if "video_fps" in info:
            video.append(f"| {info['mode'].split()[1]} | {info['model']} | {info['impl']} | {info['device']} | "
                         f"{info['video_fps']:.1f} | {info['latency_ms_mean']:.1f} ms | {info['rasterizer']} | "
                         f"{info.get('threads', '?')} | {info.get('load_avg_1min', '?')} |")
        else:
            lines.append(f"| {info['mode'].split(' ', 1)[1]} | {info['impl']} | {info['device']} | {info['batch']} | "
                         f"{med * 1e3:.2f} ms | {info['batch'] / med:,.1f} | {info.get('threads', '?')} | "
                         f"{info.get('load_avg_1min', '?')} |")
    return "\n".join(lines + video) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summary":
        sys.stdout.write(summary(sys.argv[2]))
    else:
        sys.exit("usage: python benchmarks/bench_inference.py --summary RESULTS.json")
