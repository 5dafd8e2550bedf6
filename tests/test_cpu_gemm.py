"""oneDNN's packed blend-shape GEMM (hmr_fast.kernels.cpu_gemm): what the CPU forward uses at
small batches, held to smplx and to the plain GEMM on fresh random inputs."""
import pytest
import smplx
import torch

from hmr_fast import SMPL
from hmr_fast.kernels import cpu_gemm, derived, reference

pytestmark = pytest.mark.skipif(not cpu_gemm.usable(torch.zeros(1)), reason="torch built without oneDNN")


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of cpu_gemm.blend_planes, so a test knows the packed path ran."""
    calls = []
    real = cpu_gemm.blend_planes

    def counted(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(cpu_gemm, "blend_planes", counted)
    return calls


def _inputs(batch):
    return dict(betas=torch.randn(batch, 10), body_pose=torch.randn(batch, 69) * 0.6,
                global_orient=torch.randn(batch, 3), transl=torch.randn(batch, 3))


@pytest.mark.parametrize("batch", [reference.PACKED_GEMM_BATCHES[0], 9, reference.PACKED_GEMM_BATCHES[1]])
def test_packed_forward_matches_smplx_and_the_plain_gemm(mannequin_data, mannequin_smplx_dir, monkeypatch, spy, batch):
    ours = SMPL(model_path=mannequin_data, backend="reference")
    theirs = smplx.create(mannequin_smplx_dir, model_type="smpl")
    inputs = _inputs(batch)
    with torch.no_grad():
        got = ours(**inputs)
        assert spy == [batch]
        want = theirs(**inputs)
        monkeypatch.setattr(reference, "PACKED_GEMM_BATCHES", (2, 1))  # none
        plain = ours(**inputs)
    assert spy == [batch]
    assert (got.vertices - want.vertices).abs().max() < 1e-5
    assert (got.joints - want.joints).abs().max() < 1e-5
    assert (got.vertices - plain.vertices).abs().max() < 2e-6
    assert got.vertices.is_contiguous()


def test_packed_path_only_without_gradients(mannequin_data, spy):
    """Under autograd (inputs that want a gradient) the plain GEMM runs, and gradients flow."""
    layer = SMPL(model_path=mannequin_data, backend="reference")
    inputs = {k: v.requires_grad_(True) for k, v in _inputs(4).items()}
    out = layer(**inputs)
    assert spy == []
    grads = torch.autograd.grad(out.vertices.square().sum(), [inputs["betas"], inputs["body_pose"]])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    float64 = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    with torch.no_grad():
        float64(**{k: v.double() for k, v in _inputs(4).items()})
    assert spy == []


def test_packed_weight_follows_changes_to_the_model(mannequin_data, spy):
    """Editing the blend directions or the template in place repacks: the forward sees the edit."""
    layer = SMPL(model_path=mannequin_data, backend="reference")
    inputs = _inputs(3)
    with torch.no_grad():
        before = layer(**inputs).vertices
        layer.blend_dirs.mul_(1.5)
        layer.v_template.add_(torch.tensor([0.0, 0.25, 0.0]))
        after = layer(**inputs).vertices
        layer.blend_dirs.div_(1.5)
        layer.v_template.sub_(torch.tensor([0.0, 0.25, 0.0]))
        assert len(spy) == 2
        fresh = SMPL(model_path=mannequin_data, backend="reference")
        want = _plain_forward(fresh, inputs, scale=1.5, lift=0.25)
    assert (after - want).abs().max() < 2e-5
    assert (after - before).abs().max() > 0.1


def _plain_forward(layer, inputs, scale, lift):
    """The same edit on a fresh layer, posed by the plain GEMM (a batch of one per sample)."""
    layer.blend_dirs.mul_(scale)
    layer.v_template.add_(torch.tensor([0.0, lift, 0.0]))
    rows = [layer(**{k: v[i:i + 1] for k, v in inputs.items()}).vertices for i in range(inputs["betas"].shape[0])]
    return torch.cat(rows)


def test_packed_cache_lets_go_of_a_freed_model(mannequin_data):
    layer = SMPL(model_path=mannequin_data, backend="reference")
    with torch.no_grad():
        layer(**_inputs(3))
    key = ("cpu_gemm", id(layer.blend_dirs))
    assert key in derived._CACHE
    del layer
    assert key not in derived._CACHE


def test_not_used_while_compiling_or_tracing_or_turned_off():
    dirs = torch.zeros(3, 8, 5)
    assert cpu_gemm.usable(dirs)
    assert not cpu_gemm.usable(dirs.double())
    with torch.backends.mkldnn.flags(enabled=False):
        assert not cpu_gemm.usable(dirs)
    assert cpu_gemm.usable(dirs)
    seen = []

    def f(x):
        seen.append(cpu_gemm.usable(dirs))
        return x + 1

    torch.jit.trace(f, torch.zeros(2), check_trace=False)
    assert seen[0] is False
    seen.clear()
    torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(2))
    assert seen and not any(seen)


def test_a_model_made_under_inference_mode(mannequin_data, spy):
    """Buffers made under torch.inference_mode carry no version counter: the packed path still
    runs, and matches the plain GEMM."""
    inputs = _inputs(3)
    with torch.inference_mode():
        layer = SMPL(model_path=mannequin_data, backend="reference")
        got = layer(**inputs).vertices
    assert spy == [3]
    plain = torch.cat([layer(**{k: v[i:i + 1] for k, v in inputs.items()}).vertices for i in range(3)])
    assert (got - plain).abs().max() < 2e-6
