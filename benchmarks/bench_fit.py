"""Fits per second: SMPL fitted to 2D keypoints, 100 Adam iterations, B = 1, 64, 1024.

Ours (hmr_fast.SMPL: the reference backend on the CPU, the fused Triton op on CUDA) against the
identical optimisation (the same KeypointFitter, objective, priors and Adam) run on smplx's
SMPL layer (hmr_fast.body.smplx_layer.SmplxLayer), in the same run. The fit is the
whole-body stage only (no torso stage, no turned-around start), so that both sides do
exactly 100 forward + backward passes of the body model per person.

CPU (one thread; smplx at B = 1024 is skipped unless HMR_FAST_BENCH_SMPLX_1024=1: it takes
minutes):
    pytest benchmarks/bench_fit.py --benchmark-json benchmarks/results/fit_cpu.json
    python benchmarks/summarize.py benchmarks/results/fit_cpu.json
GPU: HMR_FAST_BENCH_DEVICE=cuda pytest benchmarks/bench_fit.py --benchmark-json benchmarks/results/fit_h100.json
"""
import os

import numpy as np
import pytest
import torch

from hmr_fast import SMPL
from hmr_fast.body.smplx_layer import SmplxLayer
from hmr_fast.data.pose_sampler import sample_poses
from hmr_fast.fit import FORMATS, FitSettings, KeypointFitter

DEVICE = torch.device(os.environ.get("HMR_FAST_BENCH_DEVICE", "cpu"))
BATCHES = (1, 64, 1024)
ITERS = 100

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def layers():
    """Both on the built-in mannequin (smplx reads its file the way it reads SMPL's)."""
    return {"hmr_fast": SMPL(joint_set="hmr19").to(DEVICE), "smplx": SmplxLayer(joint_set="hmr19").to(DEVICE)}


def _keypoints(smpl, batch):
    """HMR19 keypoints of sampler poses seen from the front, in a 256 px box."""
    rng = np.random.default_rng(batch)
    pose = torch.tensor(sample_poses(rng, batch), dtype=torch.float32, device=DEVICE)
    pose[:, 0] = np.pi  # upright in HMR's camera frame
    with torch.no_grad():
        joints = smpl(global_orient=pose[:, :3], body_pose=pose[:, 3:], joint_set="hmr19", return_verts=False).joints
    px = 128 + 0.9 * joints[..., :2] * 128
    return torch.cat([px, torch.ones_like(px[..., :1])], -1)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["smplx", "hmr_fast"])
def test_fit(benchmark, layers, impl, batch):
    if impl == "smplx" and batch == 1024 and DEVICE.type == "cpu" and not os.environ.get("HMR_FAST_BENCH_SMPLX_1024"):
        pytest.skip("smplx at B = 1024 on the CPU takes minutes: HMR_FAST_BENCH_SMPLX_1024=1 runs it")
    kp = _keypoints(layers["hmr_fast"], batch)
    fitter = KeypointFitter(layers[impl], FORMATS["hmr19"], FitSettings(iters=ITERS, torso_iters=0, try_flip=False))
    benchmark.group = f"fit B={batch}"
    benchmark.extra_info.update(impl=impl, batch=batch, mode=f"fit, {ITERS} iterations", device=str(DEVICE))

    def fit():
        result = fitter.fit(kp)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return result

    rounds = 1 if batch * (10 if impl == "smplx" else 1) >= 1024 else 3
    result = benchmark.pedantic(fit, rounds=rounds, warmup_rounds=0, iterations=1)
    error = (result.keypoints2d - kp[..., :2]).norm(dim=-1).mean().item()
    benchmark.extra_info["reprojection_px"] = error
    assert error < 10.0  # the fit converged: a benchmark of a broken fit would mean nothing
