"""The fused CPU skinning kernel (hmr_fast.kernels.cpu_skin): held to its plain-torch twin
(reference.skin) and, through the SMPL forward, to smplx, on fresh random inputs."""
import warnings

import pytest
import smplx
import torch

from hmr_fast import SMPL
from hmr_fast.kernels import cpu_skin, derived, reference

pytestmark = pytest.mark.skipif(cpu_skin._library()[0] is None, reason=f"cpu_skin: {cpu_skin.status()}")


@pytest.fixture
def spy(monkeypatch):
    """The batch size of each cpu_skin.skin call, so a test knows the kernel ran."""
    calls = []
    real = cpu_skin.skin

    def counted(planes, *args):
        calls.append(planes.shape[1])
        return real(planes, *args)

    monkeypatch.setattr(cpu_skin, "skin", counted)
    return calls


def _sparse_weights(num, joints, gen, dtype):
    """Random skinning weights with 0 to `joints` non-zeros per vertex (rows summing to 1 where
    not empty), including an empty row and a full one."""
    weights = torch.rand(num, joints, generator=gen, dtype=dtype)
    keep = torch.rand(num, joints, generator=gen) < torch.rand(num, 1, generator=gen)
    keep[0] = False
    keep[1] = True
    weights = weights * keep
    return weights / weights.sum(1, keepdim=True).clamp(min=1e-12)


def _twin(planes, transforms, weights, transl):
    """reference.skin, the torch path, as (B, n, 3)."""
    shift = None if transl is None else transl.t().unsqueeze(-1)
    return reference.skin(planes, reference.rows_of_transforms(transforms), weights, shift).permute(1, 2, 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch, num, joints, layout, with_transl", [
    (1, 50, 24, "planes", True), (5, 37, 24, "samples", False), (3, 200, 7, "planes", False),
    (4, 64, 64, "samples", True)])
def test_kernel_matches_the_torch_twin(dtype, batch, num, joints, layout, with_transl):
    gen = torch.Generator().manual_seed(batch * 1000 + num + joints)
    weights = _sparse_weights(num, joints, gen, dtype)
    transforms = torch.randn(batch, joints, 12, generator=gen, dtype=dtype)
    transl = torch.randn(batch, 3, generator=gen, dtype=dtype) if with_transl else None
    if layout == "planes":  # (3, B, n) contiguous, what blend_shapes returns
        planes = torch.randn(3, batch, num, generator=gen, dtype=dtype)
    else:  # a (3, B, n) view of (B, 3, n), what the packed GEMM returns
        planes = torch.randn(batch, 3, num, generator=gen, dtype=dtype).transpose(0, 1)
    want = _twin(planes, transforms, weights, transl)
    out = torch.full((batch, num, 3), float("nan"), dtype=dtype)
    got = cpu_skin.skin(planes, transforms, weights, transl, out)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got is out
    assert (got - want).abs().max() < tol * max(1.0, want.abs().max().item())


def test_a_chunk_writes_only_its_vertices():
    """skin(..., start) poses vertices start .. start + n against the whole mesh's weights and
    leaves the rest of `out` as it was."""
    gen = torch.Generator().manual_seed(7)
    batch, num, start, n = 3, 90, 31, 40
    weights = _sparse_weights(num, 24, gen, torch.float64)
    transforms = torch.randn(batch, 24, 12, generator=gen, dtype=torch.float64)
    transl = torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    planes = torch.randn(3, batch, n, generator=gen, dtype=torch.float64)
    out = torch.full((batch, num, 3), float("nan"), dtype=torch.float64)
    cpu_skin.skin(planes, transforms, weights, transl, out, start)
    want = _twin(planes, transforms, weights[start:start + n], transl)
    assert (out[:, start:start + n] - want).abs().max() < 1e-12
    assert out[:, :start].isnan().all() and out[:, start + n:].isnan().all()


@pytest.mark.parametrize("batch", [1, 6])
def test_threads_split_samples_or_vertices_alike(monkeypatch, batch):
    """With several threads the work is split (vertices for one sample, else samples): same numbers."""
    gen = torch.Generator().manual_seed(batch)
    num = 301
    weights = _sparse_weights(num, 24, gen, torch.float32)
    transforms = torch.randn(batch, 24, 12, generator=gen)
    planes = torch.randn(batch, 3, num, generator=gen).transpose(0, 1)
    transl = torch.randn(batch, 3, generator=gen)
    one = cpu_skin.skin(planes, transforms, weights, transl, torch.empty(batch, num, 3))
    monkeypatch.setattr(cpu_skin, "PARALLEL_MIN", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        parts = cpu_skin._parts(batch, num, 3)
        assert len(parts) == 3
        split = cpu_skin.skin(planes, transforms, weights, transl, torch.empty(batch, num, 3))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, split)


@pytest.mark.parametrize("batch", [1, 3, 70])  # one chunk; the packed GEMM's whole mesh; chunks of vertices
def test_forward_with_the_kernel_matches_smplx(mannequin_data, mannequin_smplx_dir, spy, monkeypatch, batch):
    """float64: to smplx within 1e-7 (what the torch path reaches too on the mannequin: smplx's
    own float64 path loses ~1e-8 here), and to the torch path within 1e-12."""
    ours = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    theirs = smplx.create(mannequin_smplx_dir, model_type="smpl", dtype=torch.float64)
    gen = torch.Generator().manual_seed(batch)
    inputs = dict(betas=torch.randn(batch, 10, generator=gen, dtype=torch.float64),
                  body_pose=torch.randn(batch, 69, generator=gen, dtype=torch.float64) * 0.6,
                  global_orient=torch.randn(batch, 3, generator=gen, dtype=torch.float64),
                  transl=torch.randn(batch, 3, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        got = ours(**inputs)
        want = theirs(**inputs)
        monkeypatch.setattr(cpu_skin, "ENABLED", False)
        plain = ours(**inputs)
    assert spy and set(spy) == {batch}
    assert (got.vertices - want.vertices).abs().max() < 1e-7
    assert (got.joints - want.joints).abs().max() < 1e-7
    assert (got.vertices - plain.vertices).abs().max() < 1e-12
    assert (got.joints - plain.joints).abs().max() < 1e-12


def test_float32_forward_matches_the_torch_path(mannequin_data, spy, monkeypatch):
    layer = SMPL(model_path=mannequin_data, backend="reference")
    inputs = dict(betas=torch.randn(9, 10), body_pose=torch.randn(9, 69) * 0.6, global_orient=torch.randn(9, 3),
                  transl=torch.randn(9, 3))
    with torch.no_grad():
        got = layer(**inputs)
        assert spy == [9]
        monkeypatch.setattr(cpu_skin, "ENABLED", False)
        plain = layer(**inputs)
    assert spy == [9]
    assert (got.vertices - plain.vertices).abs().max() < 2e-6
    assert (got.joints - plain.joints).abs().max() < 2e-6


def test_not_used_where_a_gradient_is_wanted(mannequin_data, spy):
    layer = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    pose = (torch.randn(2, 69, dtype=torch.float64) * 0.5).requires_grad_(True)
    out = layer(body_pose=pose)
    assert spy == []
    (grad,) = torch.autograd.grad(out.vertices.square().sum(), [pose])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_not_used_while_compiling_or_tracing_or_turned_off(monkeypatch):
    x = torch.zeros(2, 3)
    assert cpu_skin.usable(x)
    assert not cpu_skin.usable(x, x.double())
    assert not cpu_skin.usable(x.half())
    assert not cpu_skin.usable(x, joints=cpu_skin._library()[0].max_joints() + 1)
    seen = []

    def f(t):
        seen.append(cpu_skin.usable(x))
        return t + 1

    torch.jit.trace(f, torch.zeros(2), check_trace=False)
    torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(2))
    assert len(seen) >= 2 and not any(seen)
    monkeypatch.setattr(cpu_skin, "ENABLED", False)
    assert not cpu_skin.usable(x)
    assert cpu_skin.status().startswith("off")


def test_sparse_weights_follow_edits_and_go_with_the_model(mannequin_data):
    """Editing the skinning weights in place rebuilds their sparse form; freeing the model frees it."""
    layer = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    layer.lbs_weights = layer.lbs_weights.clone()  # its own memory: the buffer may share the fixture's
    inputs = dict(body_pose=torch.randn(2, 69, dtype=torch.float64) * 0.5)
    with torch.no_grad():
        before = layer(**inputs).vertices
        layer.lbs_weights[:, 0] += 0.5  # joint 0 (the pelvis) now weighs on every vertex
        edited = layer(**inputs).vertices
        cpu_skin.ENABLED = False
        try:
            want = layer(**inputs).vertices
        finally:
            cpu_skin.ENABLED = True
    assert (edited - before).abs().max() > 0.01
    assert (edited - want).abs().max() < 1e-10
    key = ("cpu_skin", id(layer.lbs_weights))
    assert key in derived._CACHE
    del layer
    assert key not in derived._CACHE


def test_without_a_compiler_the_torch_path_runs(mannequin_data, monkeypatch, tmp_path):
    """No compiler: a warning naming the source and the compiler, status() says why, and the
    forward still works (the torch path)."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("HMR_FAST_CACHE", str(tmp_path / "cache"))
    cpu_skin._library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not cpu_skin.usable(torch.zeros(1))
        assert any("cpu_skin.c" in str(w.message) and "no-such-cc" in str(w.message) for w in caught)
        assert cpu_skin.status().startswith("unavailable")
        layer = SMPL(model_path=mannequin_data, backend="reference")
        with torch.no_grad():
            assert torch.isfinite(layer(body_pose=torch.zeros(2, 69)).vertices).all()
    finally:
        cpu_skin._library.cache_clear()


def test_builds_into_an_empty_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HMR_FAST_CACHE", str(tmp_path))
    cpu_skin._library.cache_clear()
    try:
        lib, path = cpu_skin._library()
        assert lib is not None
        assert [p.name for p in tmp_path.iterdir()] == [path.split("/")[-1]]  # no temporary left behind
    finally:
        cpu_skin._library.cache_clear()
