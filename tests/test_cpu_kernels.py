"""The CPU forward's C loops (hmr_fast.kernels.cpu): Rodrigues, the chain and skinning, each
held to its plain-torch twin in reference.py and, through the SMPL forward, to smplx, on fresh
random inputs."""
import warnings

import pytest
import smplx
import torch

from hmr_fast import SMPL
from hmr_fast.kernels import cpu, derived, reference

pytestmark = pytest.mark.skipif(cpu._library()[0] is None, reason=f"hmr_fast.kernels.cpu: {cpu.status()}")


@pytest.fixture
def spy(monkeypatch):
    """The batch size of each cpu.skin call, so a test knows the kernels ran; the names of the
    other kernels called go to spy.others."""
    calls = SpyList()
    real = cpu.skin

    def counted(planes, *args):
        calls.append(planes.shape[1])
        return real(planes, *args)

    monkeypatch.setattr(cpu, "skin", counted)
    for name in ("rodrigues", "chain"):
        monkeypatch.setattr(cpu, name, _named(getattr(cpu, name), name, calls.others))
    return calls


class SpyList(list):
    def __init__(self):
        super().__init__()
        self.others = []


def _named(fn, name, log):
    def wrapped(*args):
        log.append(name)
        return fn(*args)
    return wrapped


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rodrigues_matches_the_torch_twins(dtype):
    """Against reference.rodrigues (float64, the textbook formula) and rodrigues_fast (same
    formulas, torch), from zero and tiny angles to several turns."""
    gen = torch.Generator().manual_seed(11)
    axes = torch.nn.functional.normalize(torch.randn(6, 40, 3, generator=gen, dtype=torch.float64), dim=-1)
    angles = torch.cat([torch.zeros(1), torch.logspace(-9, -1, 39)]).to(torch.float64)
    angles = torch.stack([angles, angles * 1e3, torch.rand(40, generator=gen, dtype=torch.float64) * 20,
                          angles, angles, angles])
    w = (axes * angles[..., None]).to(dtype)
    got = cpu.rodrigues(w)
    assert got.shape == (6, 40, 3, 3) and got.is_contiguous()
    tol = 1e-14 if dtype == torch.float64 else 2e-6
    assert (got.double() - reference.rodrigues(w.double())).abs().max() < tol * 10
    with torch.enable_grad():
        twin = reference._Rodrigues.apply(w)
    assert (got - twin).abs().max() < tol


def _chain_by_loop(rot, rest, parents):
    """The chain the textbook way, joint by joint as 4x4 matrices (float64): transforms
    (B, J, 12) = the top rows of G_j [I | -J_j], and the posed joints."""
    B, J = rest.shape[:2]
    local = torch.zeros(B, J, 4, 4, dtype=torch.float64)
    local[:, :, :3, :3] = rot
    local[:, :, 3, 3] = 1
    parent_rest = torch.stack([rest[:, p] if p >= 0 else torch.zeros_like(rest[:, 0]) for p in parents], 1)
    local[:, :, :3, 3] = rest - parent_rest
    world = []
    for j, p in enumerate(parents):
        world.append(local[:, j] if p < 0 else world[p] @ local[:, j])
    world = torch.stack(world, 1)
    unrest = torch.eye(4, dtype=torch.float64).repeat(B, J, 1, 1)
    unrest[:, :, :3, 3] = -rest
    return (world @ unrest)[:, :, :3].flatten(2), world[:, :, :3, 3]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch, joints", [(1, 24), (5, 24), (3, 9), (2, 64)])
def test_chain_matches_the_torch_twin(dtype, batch, joints):
    """SMPL's tree against reference.kinematic_chain + skinning_transforms; any tree (parents
    before children, up to 64 joints) against a plain loop over 4x4 matrices."""
    from hmr_fast.body.model_data import SMPL_PARENTS

    gen = torch.Generator().manual_seed(batch * 100 + joints)
    if joints == 24:
        parents = SMPL_PARENTS
    else:
        parents = (-1,) + tuple(int(torch.randint(0, j, (1,), generator=gen)) for j in range(1, joints))
    rot = reference.rodrigues(torch.randn(batch, joints, 3, generator=gen, dtype=torch.float64)).to(dtype)
    rest = torch.randn(batch, joints, 3, generator=gen, dtype=dtype)
    transforms, posed = cpu.chain(rot, rest, parents)
    want_transforms, want_posed = _chain_by_loop(rot.double(), rest.double(), parents)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (posed.double() - want_posed).abs().max() < tol
    assert (transforms.double() - want_transforms).abs().max() < tol
    if joints == 24:
        tree = reference.kinematic_tree(parents)
        g, t = reference.kinematic_chain(rot, rest, tree.parents, tree.levels)
        assert (transforms - reference.skinning_transforms(g, t, rest)).abs().max() < tol
        assert (posed - t).abs().max() < tol


def test_chain_needs_parents_before_children():
    assert cpu.chain_usable((-1, 0, 0, 1, 2))
    assert not cpu.chain_usable((-1, 2, 0))  # joint 1's parent comes after it
    assert not cpu.chain_usable((0, -1))
    assert not cpu.chain_usable((-1,) + (0,) * 64)  # more joints than the C kernels keep


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
    got = cpu.skin(planes, transforms, weights, transl, out)
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
    cpu.skin(planes, transforms, weights, transl, out, start)
    want = _twin(planes, transforms, weights[start:start + n], transl)
    assert (out[:, start:start + n] - want).abs().max() < 1e-12
    assert out[:, :start].isnan().all() and out[:, start + n:].isnan().all()
    with pytest.raises(ValueError, match="out must be"):
        cpu.skin(planes, transforms, weights, transl, out.transpose(1, 2).contiguous().transpose(1, 2), start)


@pytest.mark.parametrize("batch", [1, 6])
def test_threads_split_samples_or_vertices_alike(monkeypatch, batch):
    """With several threads the work is split (vertices for one sample, else samples): same numbers."""
    gen = torch.Generator().manual_seed(batch)
    num = 301
    weights = _sparse_weights(num, 24, gen, torch.float32)
    transforms = torch.randn(batch, 24, 12, generator=gen)
    planes = torch.randn(batch, 3, num, generator=gen).transpose(0, 1)
    transl = torch.randn(batch, 3, generator=gen)
    one = cpu.skin(planes, transforms, weights, transl, torch.empty(batch, num, 3))
    monkeypatch.setattr(cpu, "PARALLEL_MIN", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        parts = cpu._parts(batch, num, 3)
        assert len(parts) == 3
        split = cpu.skin(planes, transforms, weights, transl, torch.empty(batch, num, 3))
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
        monkeypatch.setattr(cpu, "ENABLED", False)
        plain = ours(**inputs)
    assert spy and set(spy) == {batch}
    assert spy.others == ["rodrigues", "chain"]
    assert (got.vertices - want.vertices).abs().max() < 1e-7
    assert (got.joints - want.joints).abs().max() < 1e-7
    assert (got.vertices - plain.vertices).abs().max() < 1e-12
    assert (got.joints - plain.joints).abs().max() < 1e-12


@pytest.mark.parametrize("joint_set", ["smpl24", "hmr19", "smplx45"])
def test_joints_only_forward_matches_the_torch_path(mannequin_data, spy, monkeypatch, joint_set):
    """return_verts=False without gradients: the chain in C, the same joints as the torch path."""
    layer = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    inputs = dict(betas=torch.randn(4, 10, dtype=torch.float64), body_pose=torch.randn(4, 69, dtype=torch.float64),
                  transl=torch.randn(4, 3, dtype=torch.float64))
    with torch.no_grad():
        got = layer(**inputs, return_verts=False, joint_set=joint_set).joints
        assert spy.others == ["rodrigues", "chain"]
        monkeypatch.setattr(cpu, "ENABLED", False)
        want = layer(**inputs, return_verts=False, joint_set=joint_set).joints
    assert (got - want).abs().max() < 1e-12


def test_float32_forward_matches_the_torch_path(mannequin_data, spy, monkeypatch):
    layer = SMPL(model_path=mannequin_data, backend="reference")
    inputs = dict(betas=torch.randn(9, 10), body_pose=torch.randn(9, 69) * 0.6, global_orient=torch.randn(9, 3),
                  transl=torch.randn(9, 3))
    with torch.no_grad():
        got = layer(**inputs)
        assert spy == [9]
        monkeypatch.setattr(cpu, "ENABLED", False)
        plain = layer(**inputs)
    assert spy == [9]
    assert (got.vertices - plain.vertices).abs().max() < 2e-6
    assert (got.joints - plain.joints).abs().max() < 2e-6


def test_not_used_where_a_gradient_is_wanted(mannequin_data, spy):
    layer = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    pose = (torch.randn(2, 69, dtype=torch.float64) * 0.5).requires_grad_(True)
    out = layer(body_pose=pose)
    assert spy == [] and spy.others == []
    (grad,) = torch.autograd.grad(out.vertices.square().sum(), [pose])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_not_used_while_compiling_or_tracing_or_turned_off(monkeypatch):
    x = torch.zeros(2, 3)
    assert cpu.usable(x)
    assert not cpu.usable(x, x.double())
    assert not cpu.usable(x.half())
    assert not cpu.usable(x, joints=cpu._library()[0].max_joints() + 1)
    seen = []

    def f(t):
        seen.append(cpu.usable(x))
        return t + 1

    torch.jit.trace(f, torch.zeros(2), check_trace=False)
    torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(2))
    assert len(seen) >= 2 and not any(seen)
    inside_vmap = []
    torch.vmap(lambda t: inside_vmap.append(cpu.usable(t)) or t)(x)
    assert inside_vmap == [False]
    assert not cpu.usable(x.to_sparse())
    monkeypatch.setattr(cpu, "ENABLED", False)
    assert not cpu.usable(x)
    assert cpu.status().startswith("off")


def test_sparse_weights_follow_edits_and_go_with_the_model(mannequin_data):
    """Editing the skinning weights in place rebuilds their sparse form; freeing the model frees it."""
    layer = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    layer.lbs_weights = layer.lbs_weights.clone()  # its own memory: the buffer may share the fixture's
    inputs = dict(body_pose=torch.randn(2, 69, dtype=torch.float64) * 0.5)
    with torch.no_grad():
        before = layer(**inputs).vertices
        layer.lbs_weights[:, 0] += 0.5  # joint 0 (the pelvis) now weighs on every vertex
        edited = layer(**inputs).vertices
        cpu.ENABLED = False
        try:
            want = layer(**inputs).vertices
        finally:
            cpu.ENABLED = True
    assert (edited - before).abs().max() > 0.01
    assert (edited - want).abs().max() < 1e-10
    key = ("cpu.skin", id(layer.lbs_weights))
    assert key in derived._CACHE
    del layer
    assert key not in derived._CACHE


def test_without_a_compiler_the_torch_path_runs(mannequin_data, monkeypatch, tmp_path):
    """No compiler: a warning naming the source and the compiler, status() says why, and the
    forward still works (the torch path)."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("HMR_FAST_CACHE", str(tmp_path / "cache"))
    cpu._library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not cpu.usable(torch.zeros(1))
        assert any("cpu.c" in str(w.message) and "no-such-cc" in str(w.message) for w in caught)
        assert cpu.status().startswith("unavailable")
        layer = SMPL(model_path=mannequin_data, backend="reference")
        with torch.no_grad():
            assert torch.isfinite(layer(body_pose=torch.zeros(2, 69)).vertices).all()
    finally:
        cpu._library.cache_clear()


def test_builds_into_an_empty_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HMR_FAST_CACHE", str(tmp_path))
    cpu._library.cache_clear()
    try:
        lib, path = cpu._library()
        assert lib is not None
        assert [p.name for p in tmp_path.iterdir()] == [path.split("/")[-1]]  # no temporary left behind
    finally:
        cpu._library.cache_clear()


def test_a_library_someone_else_could_have_written_is_not_loaded(monkeypatch, tmp_path):
    """A file under the library's name that others may write (mode 666) is left alone: the
    library is built afresh elsewhere, and it works."""
    monkeypatch.setenv("HMR_FAST_CACHE", str(tmp_path / "first"))
    cpu._library.cache_clear()
    try:
        _, path = cpu._library()  # its name (a library loaded here must never be overwritten)
        cpu._library.cache_clear()
        shared = tmp_path / "shared"
        shared.mkdir()
        planted = shared / path.split("/")[-1]
        planted.write_bytes(b"not a library")
        planted.chmod(0o666)
        monkeypatch.setenv("HMR_FAST_CACHE", str(shared))
        lib, path = cpu._library()
        assert lib is not None and path != str(planted)
        assert planted.read_bytes() == b"not a library"
        R = cpu.rodrigues(torch.tensor([[0.0, 0.0, 0.5]]))
        assert torch.allclose(R, reference.rodrigues(torch.tensor([[0.0, 0.0, 0.5]])), atol=1e-6)
    finally:
        cpu._library.cache_clear()


def test_a_forked_child_gets_its_own_thread_pool(monkeypatch):
    """After a fork the parent's pool has no threads in the child: the child makes its own
    (else a split call would wait forever)."""
    import multiprocessing

    monkeypatch.setattr(cpu, "PARALLEL_MIN", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        planes = torch.randn(3, 4, 50)
        transforms = torch.randn(4, 24, 12)
        weights = torch.rand(50, 24)
        want = cpu.skin(planes, transforms, weights, None, torch.empty(4, 50, 3))  # the parent's pool exists
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_skin_in_child, (planes, transforms, weights)).get(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, want)


def _skin_in_child(planes, transforms, weights):
    torch.set_num_threads(2)
    return cpu.skin(planes, transforms, weights, None, torch.empty(4, 50, 3))
