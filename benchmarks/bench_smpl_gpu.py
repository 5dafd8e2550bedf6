"""SMPL on a GPU: smplx (eager and torch.compile), the reference backend and the Triton kernels.

Forward (vertices + joints, no grad) and forward+backward of the training case (joints only,
gradients w.r.t. pose and betas), B = 1, 64, 512, 4096, float32, on the mannequin (float32
exact, so smplx reads the same numbers). Skipped without CUDA. Run on a lent GPU by
benchmarks/gpu_run.sh, or by hand:

    pytest --noconftest benchmarks/bench_smpl_gpu.py --benchmark-json benchmarks/results/gpu_smpl.json
    python benchmarks/bench_smpl_gpu.py summarize benchmarks/results/gpu_smpl.json

The module needs no conftest (it loads tests/conftest.py's model helpers itself), so
`--noconftest` keeps it independent of benchmarks/conftest.py.

Impls: smplx, smplx_compiled, reference, triton (IEEE float32 corrective GEMM), and for the
forward also triton_tf32x3 / triton_tf32 / triton_bf16 (the GEMM on tensor cores) and
triton_graph (the IEEE forward replayed from a CUDA graph: no launch overhead at small B).
Every timed call ends in torch.cuda.synchronize(), so a time is the whole call's latency.
"""
import importlib.util
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BATCHES = (1, 64, 512, 4096)
JOINT_SET = "smplx45"  # smplx's 45 joints, so every impl returns the same points

# Roofline per sample (kernels/NOTES.md): 2 x 217 x 20670 FLOP of corrective GEMM and
# 82.7 KB of float32 vertices written. Peak figures of an H100 SXM (H200: same compute,
# 4.8 TB/s); an H100 PCIe has 51 TFLOP/s float32 and 2.0 TB/s.
GEMM_FLOP = 2 * 217 * 6890 * 3
OUTPUT_BYTES = 6890 * 3 * 4
PEAKS = {"fp32_flops": 67e12, "tf32_flops": 495e12, "bf16_flops": 989e12, "hbm_bytes": 3.35e12}


def roofline_samples_per_s(precision: str) -> float:
    flops = {"ieee": PEAKS["fp32_flops"], "tf32x3": PEAKS["tf32_flops"] / 3, "tf32": PEAKS["tf32_flops"],
             "bf16": PEAKS["bf16_flops"]}[precision]
    seconds = max(GEMM_FLOP / flops, OUTPUT_BYTES / PEAKS["hbm_bytes"])
    return 1.0 / seconds


if __name__ != "__main__":
    if not torch.cuda.is_available():
        pytest.skip("GPU benchmarks need CUDA", allow_module_level=True)


def _sync_call(fn):
    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def _rounds(batch, slow=False):
    rounds = max(10, 4000 // batch) if not slow else max(5, 400 // batch)
    return dict(rounds=rounds, warmup_rounds=3, iterations=1)


def _test_helpers():
    """tests/conftest.py as a module of its own name (random models, the smplx file writer)."""
    spec = importlib.util.spec_from_file_location("hmr_fast_tests_conftest", os.path.join(ROOT, "tests", "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from hmr_fast import SMPL
    from hmr_fast.body.mannequin import build_mannequin

    helpers = _test_helpers()
    mannequin_data = helpers.float32_exact(build_mannequin())

    device = torch.device("cuda")
    out = {
        "reference": SMPL(model_path=mannequin_data, backend="reference", joint_set=JOINT_SET).to(device),
        "triton": SMPL(model_path=mannequin_data, backend="triton", joint_set=JOINT_SET).to(device),
    }
    try:
        import smplx
    except ImportError:
        smplx = None
    if smplx is not None:
        root = helpers.write_smplx_model_dir(mannequin_data, tmp_path_factory.mktemp("mannequin"))
        out["smplx"] = smplx.create(root, model_type="smpl").to(device)
        out["smplx_compiled"] = torch.compile(out["smplx"])
    return out


def _inputs(batch, requires_grad=False):
    gen = torch.Generator(device="cuda").manual_seed(batch)
    tensors = dict(betas=torch.randn(batch, 10, generator=gen, device="cuda"),
                   body_pose=torch.randn(batch, 69, generator=gen, device="cuda") * 0.5,
                   global_orient=torch.randn(batch, 3, generator=gen, device="cuda"),
                   transl=torch.randn(batch, 3, generator=gen, device="cuda"))
    return {k: v.requires_grad_(requires_grad) for k, v in tensors.items()}


def _layer(models, impl):
    base = impl.split("_")[0] if impl.startswith("triton") else impl
    if base not in models:
        pytest.skip(f"{impl} is not available here (smplx not installed?)")
    return models[base]


def _info(benchmark, impl, batch, mode, precision="ieee"):
    benchmark.group = f"{mode} B={batch}"
    benchmark.extra_info.update(impl=impl, batch=batch, mode=mode, precision=precision,
                                gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                triton=__import__("triton").__version__)


FORWARD_IMPLS = ["smplx", "smplx_compiled", "reference", "triton", "triton_tf32x3", "triton_tf32", "triton_bf16",
                 "triton_graph"]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", FORWARD_IMPLS)
def test_forward(benchmark, models, impl, batch):
    """Vertices (B, 6890, 3) and 45 joints, no autograd."""
    from hmr_fast import kernels

    layer = _layer(models, impl)
    inputs = _inputs(batch)
    precision = impl.split("_")[1] if impl.startswith("triton_") and impl != "triton_graph" else "ieee"
    _info(benchmark, impl, batch, "forward", precision)

    def forward():
        with torch.no_grad():
            out = layer(**inputs)
            return out.vertices, out.joints

    if impl == "triton_graph":
        forward()  # prepares the layer's kernel cache and compiles the kernels
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = forward()

        def replay():
            graph.replay()
            return captured

        run = replay
    else:
        run = forward
    with kernels.gemm_precision(precision):
        vertices, joints = benchmark.pedantic(_sync_call(run), **_rounds(batch, slow=impl.startswith("smplx")))
    assert vertices.shape == (batch, 6890, 3) and joints.shape == (batch, 45, 3)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["smplx", "smplx_compiled", "reference", "triton"])
def test_forward_backward_joints(benchmark, models, impl, batch):
    """The training case: 45 joints, d(loss)/d(pose, betas). smplx poses all 6890 vertices to
    get them; hmr_fast's backends pose only the joint set's support (return_verts=False)."""
    layer = _layer(models, impl)
    inputs = _inputs(batch, requires_grad=True)
    _info(benchmark, impl, batch, "forward+backward joints")
    kwargs = {} if impl.startswith("smplx") else dict(return_verts=False)

    def step():
        out = layer(**inputs, **kwargs)
        loss = out.joints.square().mean()
        return torch.autograd.grad(loss, [inputs["body_pose"], inputs["betas"]])

    grads = benchmark.pedantic(_sync_call(step), **_rounds(batch, slow=impl.startswith("smplx")))
    assert all(torch.isfinite(g).all() for g in grads)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.median


# ----------------------------------------------------------------------------- summary
def summarize(*paths: str) -> str:
    """Markdown: median time and samples/s per impl, speed-ups, and the roofline fraction at B=4096."""
    rows, meta, dates = {}, {}, []
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        dates.append(report.get("datetime", ""))
        for bench in report["benchmarks"]:
            info = bench["extra_info"]
            rows.setdefault((info["mode"], info["batch"]), {})[info["impl"]] = bench["stats"]["median"]
            meta = info
    lines = [f"GPU: {meta.get('gpu', '?')}; torch {meta.get('torch', '?')}; triton {meta.get('triton', '?')}; "
             f"{', '.join(d for d in dates if d)}", "Median of the timed calls; samples/s = B / median.", ""]
    impls = ["smplx", "smplx_compiled", "reference", "triton", "triton_graph", "triton_tf32x3", "triton_tf32",
             "triton_bf16"]
    for mode in ("forward", "forward+backward joints"):
        present = [i for i in impls if any(i in t for (m, _), t in rows.items() if m == mode)]
        lines.append(f"### {mode}")
        lines.append("| B | " + " | ".join(f"{i} (samples/s)" for i in present)
                     + " | triton vs smplx | vs smplx compiled |")
        lines.append("|---:|" + "---:|" * len(present) + "---:|---:|")
        for (m, batch), times in sorted(rows.items()):
            if m != mode:
                continue
            cells = [f"{times[i] * 1e3:.3f} ms ({batch / times[i]:,.0f})" if i in times else "-" for i in present]
            best = min((times[i] for i in ("triton", "triton_graph") if i in times), default=None)
            up = lambda base: f"{times[base] / best:.1f}x" if best and base in times else "-"  # noqa: E731
            lines.append(f"| {batch} | " + " | ".join(cells) + f" | {up('smplx')} | {up('smplx_compiled')} |")
        lines.append("")
    lines.append("### fraction of the roofline at B = 4096 (forward; kernels/NOTES.md)")
    lines.append("| impl | samples/s | roofline samples/s | fraction |")
    lines.append("|---|---:|---:|---:|")
    fwd = rows.get(("forward", 4096), {})
    for impl, precision in (("triton", "ieee"), ("triton_tf32x3", "tf32x3"), ("triton_tf32", "tf32"),
                            ("triton_bf16", "bf16")):
        if impl in fwd:
            rate, roof = 4096 / fwd[impl], roofline_samples_per_s(precision)
            lines.append(f"| {impl} | {rate / 1e6:.2f} M | {roof / 1e6:.1f} M | {rate / roof:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "summarize":
        sys.exit("usage: python benchmarks/bench_smpl_gpu.py summarize RESULTS.json [MORE.json ...]")
    print(summarize(*sys.argv[2:]))
