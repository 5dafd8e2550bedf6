"""smplx against the reference backend on the CPU: forward and forward+backward, B = 1, 8, 64, 512.

B = 8 is there because small batches once took a 10-20x slower path in MKL: the reference
must not be slower than smplx anywhere.

Run (one thread, so that the figures compare core for core):
    pytest benchmarks/bench_smpl_cpu.py --benchmark-json benchmarks/results/cpu_smpl.json
then `python benchmarks/summarize.py benchmarks/results/cpu_smpl.json` for the table.
"""
import pytest
import smplx
import torch

from hmr_fast import SMPL

BATCHES = (1, 8, 64, 512)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def layers(mannequin_data, mannequin_smplx_dir):
    return {
        "smplx": smplx.create(mannequin_smplx_dir, model_type="smpl"),
        "reference": SMPL(model_path=mannequin_data, backend="reference"),
    }


def _inputs(batch, requires_grad=False):
    gen = torch.Generator().manual_seed(batch)
    tensors = dict(betas=torch.randn(batch, 10, generator=gen),
                   body_pose=torch.randn(batch, 69, generator=gen) * 0.5,
                   global_orient=torch.randn(batch, 3, generator=gen),
                   transl=torch.randn(batch, 3, generator=gen))
    return {k: v.requires_grad_(requires_grad) for k, v in tensors.items()}


def _rounds(batch):
    return dict(rounds=max(5, 2000 // batch), warmup_rounds=2, iterations=1)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["smplx", "reference"])
def test_forward(benchmark, layers, impl, batch):
    layer, inputs = layers[impl], _inputs(batch)
    benchmark.group = f"forward B={batch}"
    benchmark.extra_info.update(impl=impl, batch=batch, mode="forward")

    def forward():
        with torch.no_grad():
            return layer(**inputs).vertices

    out = benchmark.pedantic(forward, **_rounds(batch))
    assert out.shape == (batch, 6890, 3)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["smplx", "reference"])
def test_forward_backward(benchmark, layers, impl, batch):
    layer, inputs = layers[impl], _inputs(batch, requires_grad=True)
    benchmark.group = f"forward+backward B={batch}"
    benchmark.extra_info.update(impl=impl, batch=batch, mode="forward+backward")

    def step():
        out = layer(**inputs)
        loss = out.vertices.square().mean() + out.joints.square().mean()
        return torch.autograd.grad(loss, [inputs["body_pose"], inputs["betas"]])

    grads = benchmark.pedantic(step, **_rounds(batch))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["smplx", "reference"])
def test_joints_forward_backward(benchmark, layers, impl, batch):
    """The training case: a loss on HMR's 19 keypoints only. smplx has no joints-only path,
    so it poses all 6890 vertices and regresses from them; the reference poses only the
    vertices the joint set reads."""
    layer, inputs = layers[impl], _inputs(batch, requires_grad=True)
    benchmark.group = f"joints-only forward+backward B={batch}"
    benchmark.extra_info.update(impl=impl, batch=batch, mode="joints-only forward+backward")

    def step():
        if impl == "smplx":
            joints = layer(**inputs).joints
        else:
            joints = layer(**inputs, return_verts=False, joint_set="hmr19").joints
        return torch.autograd.grad(joints.square().mean(), [inputs["body_pose"], inputs["betas"]])

    grads = benchmark.pedantic(step, **_rounds(batch))
    assert all(torch.isfinite(g).all() for g in grads)
