"""SMPL layers on the CPU, side by side in one process: the reference backend (eager and
`compile=True`) against smplx, smplfitter (`smplfitter.pt.BodyModel`) and body-models (its
torch kernels and, when warp-lang is installed, its Warp skinning). B = 1, 8, 64, 512; each
batch size runs every implementation in turn (interleaved), so a noisy machine hits them alike.

Peers come from `pip install -e .[bench]`; one that is not installed (or cannot load the
mannequin) is skipped.

Modes:
- forward: vertices + joints, no autograd ("reference-torch" is the reference with its C loops
  off, hmr_fast.kernels.cpu.ENABLED = False: the torch path that runs without a C compiler);
- forward+backward: a loss on vertices and joints;
- joints-only forward+backward: SMPL's 24 chain joints without vertices, what a fitting
  iteration needs, set up as a user of smplx or smplfitter fits: betas, body_pose and
  global_orient require gradients and get them, transl is given (no gradient), a loss on the
  24 joints (smplfitter and body-models have joints-only paths; smplx has none and poses the
  mesh); 10 warm-up rounds, then 100-500 rounds (20 for smplx and body-models from B = 64)
  per implementation; "reference hmr19" is the training loss's 19 keypoints, whose regressor
  reads 1254 posed vertices;
- the same joints-only step, interleaved call by call (test_joints_interleaved): smplfitter,
  body-models and the reference take turns, one step each per round (the order rotating), so
  none runs a warm stretch of its own (its allocations and caches undisturbed) and a burst of
  load hits all alike; each implementation's median over the rounds (smplx, 0.1-2 s a step,
  is left out).

Run (one thread, so that the figures compare core for core):
    pytest benchmarks/bench_smpl_cpu.py --benchmark-json benchmarks/results/cpu_smpl_peers.json
With HMR_BENCH_LOADED=1, torch asks for 2 threads while another process keeps one core busy
(the "under load" case; run it with -k "forward and 512" for the table's loaded rows).
Table: `python benchmarks/summarize.py benchmarks/results/cpu_smpl_peers.json`.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from hmr_fast import SMPL
from hmr_fast.kernels import cpu
from hmr_fast.kernels.reference import pose_features, rodrigues

BATCHES = (1, 8, 64, 512)
LOADED = os.environ.get("HMR_BENCH_LOADED") == "1"
IMPLS = ("smplx", "smplfitter", "body-models", "body-models-warp", "reference", "reference-compiled")
# Not a body model: the pose-corrective GEMM alone, pose features (B, 207) @ posedirs (207, 3 x 6890)
# as one plain torch.matmul into a fresh output, the floor the forward is compared with.
FLOOR = "floor-corrective-gemm"
TORCH_ONLY = "reference-torch"  # the reference without its C loops (forward only)
JOINT_IMPLS = IMPLS + ("reference-hmr19",)


@pytest.fixture(scope="module", autouse=True)
def threads():
    """One torch thread; under HMR_BENCH_LOADED two, with a busy process on the other core."""
    before = torch.get_num_threads()
    busy = None
    if LOADED:
        torch.set_num_threads(2)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    else:
        torch.set_num_threads(1)
    yield
    if busy is not None:
        busy.kill()
        busy.wait()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def layers(mannequin_data, mannequin_smplx_dir):
    return {"_data": mannequin_data, "_smplx_dir": mannequin_smplx_dir}


def _layer(layers, impl):
    """Build a layer on first use; pytest.skip when its package is missing or fails to load."""
    if impl not in layers:
        try:
            layers[impl] = _build(impl, layers["_data"], layers["_smplx_dir"])
        except ImportError as err:
            layers[impl] = err
        except Exception as err:  # noqa: BLE001 - a peer that cannot load the mannequin is skipped, saying why
            layers[impl] = err
    if isinstance(layers[impl], Exception):
        pytest.skip(f"{impl}: {layers[impl]!r}")
    return layers[impl]


def _build(impl, data, smplx_dir):
    pkl = os.path.join(smplx_dir, "smpl", "SMPL_NEUTRAL.pkl")
    if impl == "smplx":
        import smplx

        return smplx.create(smplx_dir, model_type="smpl")
    if impl == "smplfitter":
        import smplfitter.pt

        root = tempfile.mkdtemp(prefix="smplfitter_")
        os.symlink(pkl, os.path.join(root, "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"))
        np.save(os.path.join(root, "kid_template.npy"), np.zeros((data.num_vertices, 3)))  # all-zero: no kid shape
        return smplfitter.pt.BodyModel("smpl", "neutral", model_root=root)
    if impl in ("body-models", "body-models-warp"):
        from body_models.smpl.torch import SMPL as BodyModelsSMPL

        if impl == "body-models-warp":
            import warp  # noqa: F401

            return BodyModelsSMPL(model_path=pkl, kernel_backend="warp")
        return BodyModelsSMPL(model_path=pkl)
    if impl.startswith("reference"):
        return SMPL(model_path=data, backend="reference", compile=impl == "reference-compiled")
    if impl == FLOOR:
        return torch.as_tensor(data.posedirs.reshape(-1, data.posedirs.shape[-1]).T.copy(), dtype=torch.float32)
    raise ValueError(impl)


# What a fit optimises (and gets gradients for); transl is given, as a fit to 3D joints with a
# known root position, or to 2D keypoints with the camera carrying the translation, has it.
FIT_INPUTS = ("betas", "body_pose", "global_orient")


def _inputs(batch, requires_grad=False, wrt=None):
    """Seeded inputs; requires_grad=True makes every one a leaf that requires grad, `wrt` only those named."""
    gen = torch.Generator().manual_seed(batch)
    tensors = dict(betas=torch.randn(batch, 10, generator=gen),
                   body_pose=torch.randn(batch, 69, generator=gen) * 0.5,
                   global_orient=torch.randn(batch, 3, generator=gen),
                   transl=torch.randn(batch, 3, generator=gen))
    return {k: v.requires_grad_(requires_grad if wrt is None else k in wrt) for k, v in tensors.items()}


def _run(impl, layer, inputs, vertices=True):
    """(vertices or None, joints) of one forward, each implementation through its own API."""
    b, pose, go, t = inputs["betas"], inputs["body_pose"], inputs["global_orient"], inputs["transl"]
    if impl == FLOOR:
        return (inputs["pose_features"] @ layer).view(b.shape[0], -1, 3), None
    if impl == "smplx":
        out = layer(**inputs)
        return out.vertices, out.joints
    if impl == "smplfitter":
        out = layer(pose_rotvecs=torch.cat([go, pose], 1), shape_betas=b, trans=t, return_vertices=vertices)
        return out.get("vertices"), out["joints"]
    if impl.startswith("body-models"):
        kw = dict(pelvis_rotation=go, shape=b, global_translation=t)
        joints = layer.forward_skeleton(pose.reshape(-1, 23, 3), **kw)[..., :3, 3]
        return (layer.forward_vertices(pose.reshape(-1, 23, 3), **kw) if vertices else None), joints
    joint_set = "hmr19" if impl == "reference-hmr19" else ("smplx45" if vertices else "smpl24")
    cpu.ENABLED = impl != TORCH_ONLY
    try:
        out = layer(**inputs, return_verts=vertices, joint_set=joint_set)
    finally:
        cpu.ENABLED = True
    return out.vertices, out.joints


def _rounds(batch, impl):
    slow = impl in ("smplx", "body-models", "body-models-warp") and batch >= 64
    return dict(rounds=max(5, (400 if slow else 2000) // batch), warmup_rounds=2, iterations=1)


def _joint_rounds(batch, impl):
    """Joints-only steps take milliseconds: enough rounds that a burst of load on this shared
    machine moves no median (smplx poses the whole mesh: 1.4 s a round at B = 512)."""
    slow = impl in ("smplx", "body-models") and batch >= 64
    return dict(rounds=20 if slow else max(100, min(500, 10000 // batch)), warmup_rounds=10, iterations=1)


def _cases(impls):
    return [(batch, impl) for batch in BATCHES for impl in impls]  # interleaved: every impl per batch


@pytest.mark.parametrize("batch, impl", _cases(IMPLS + (TORCH_ONLY, FLOOR)))
def test_forward(benchmark, layers, impl, batch):
    layer, inputs = _layer(layers, impl), _inputs(batch)
    if impl == FLOOR:  # the GEMM's input: R - I of the 23 body rotations
        full_pose = torch.cat([inputs["global_orient"], inputs["body_pose"]], 1).view(batch, 24, 3)
        inputs["pose_features"] = pose_features(rodrigues(full_pose))
    benchmark.group = f"forward B={batch}"
    benchmark.extra_info.update(impl=impl, batch=batch, mode="forward", loaded=LOADED,
                                threads=torch.get_num_threads())

    def forward():
        with torch.no_grad():
            return _run(impl, layer, inputs)[0]

    out = benchmark.pedantic(forward, **_rounds(batch, impl))
    assert out.shape == (batch, 6890, 3)


@pytest.mark.parametrize("batch, impl", _cases(IMPLS))
def test_forward_backward(benchmark, layers, impl, batch):
    if impl == "body-models-warp":
        pytest.skip("body-models' Warp skinning is forward-only here")
    layer, inputs = _layer(layers, impl), _inputs(batch, requires_grad=True)
    benchmark.group = f"forward+backward B={batch}"
    benchmark.extra_info.update(impl=impl, batch=batch, mode="forward+backward", loaded=LOADED,
                                threads=torch.get_num_threads())

    def step():
        vertices, joints = _run(impl, layer, inputs)
        loss = vertices.square().mean() + joints.square().mean()
        return torch.autograd.grad(loss, [inputs["body_pose"], inputs["betas"]])

    grads = benchmark.pedantic(step, **_rounds(batch, impl))
    assert all(torch.isfinite(g).all() for g in grads)


def _joint_step(impl, layer, inputs):
    """One fitting step's body-model work: the joints, a loss on them, the gradients to FIT_INPUTS."""
    joints = _run(impl, layer, inputs, vertices=False)[1]
    return torch.autograd.grad(joints.square().mean(), [inputs[k] for k in FIT_INPUTS])


INTERLEAVED_IMPLS = ("smplfitter", "body-models", "reference", "reference-compiled")


@pytest.mark.parametrize("batch", BATCHES)
def test_joints_interleaved(benchmark, layers, batch):
    """The joints-only step of every implementation in turn, call by call (module docstring)."""
    steps = {}
    for impl in INTERLEAVED_IMPLS:
        try:
            layer = _layer(layers, impl)
        except pytest.skip.Exception:
            continue
        steps[impl] = (impl, layer, _inputs(batch, wrt=FIT_INPUTS))
    for args in steps.values():
        for _ in range(10):
            _joint_step(*args)
    rounds = max(100, min(500, 10000 // batch))
    times = {impl: [] for impl in steps}
    order = list(steps)

    def all_rounds():
        for r in range(rounds):
            for impl in order[r % len(order):] + order[:r % len(order)]:
                start = time.perf_counter()
                _joint_step(*steps[impl])
                times[impl].append(time.perf_counter() - start)

    benchmark.pedantic(all_rounds, rounds=1, warmup_rounds=0, iterations=1)
    benchmark.group = f"joints-only forward+backward, interleaved B={batch}"
    benchmark.extra_info.update(impl="interleaved", batch=batch, loaded=LOADED, threads=torch.get_num_threads(),
                                mode="joints-only forward+backward, interleaved call by call", rounds=rounds,
                                wrt=list(FIT_INPUTS), transl="given, no gradient",
                                medians={impl: statistics.median(t) for impl, t in times.items()})
    assert "reference" in steps


@pytest.mark.parametrize("batch, impl", _cases(JOINT_IMPLS))
def test_joints_forward_backward(benchmark, layers, impl, batch):
    """The fitting / training case: a loss on joints only (see the module docstring)."""
    if impl == "body-models-warp":
        pytest.skip("Warp only skins vertices: its joints are body-models' torch path")
    layer = _layer(layers, "reference" if impl == "reference-hmr19" else impl)
    inputs = _inputs(batch, wrt=FIT_INPUTS)
    benchmark.group = f"joints-only forward+backward B={batch}"
    benchmark.extra_info.update(impl=impl, batch=batch, mode="joints-only forward+backward", loaded=LOADED,
                                threads=torch.get_num_threads(), wrt=list(FIT_INPUTS), transl="given, no gradient")

    grads = benchmark.pedantic(_joint_step, args=(impl, layer, inputs), **_joint_rounds(batch, impl))
    assert len(grads) == 3 and all(torch.isfinite(g).all() for g in grads)
    assert not inputs["transl"].requires_grad
