"""The Triton kernels against the reference backend and the smplx package.

Without CUDA, conftest sets TRITON_INTERPRET=1 before triton is imported and every kernel runs
on CPU tensors in triton's interpreter; on a GPU the same tests run the compiled kernels.
Every kernel output and partial-sum buffer is allocated full of NaN here
(`FILL_OUTPUTS_WITH_NAN`), so an element a kernel forgot to write fails the comparison.
Inputs and models are random from each test's fixed seed (conftest's `seed`, printed for a
failing run; torch's global generator is seeded with it too).
Float64 comparisons hold kernels to ~1e-12; float32 ones to float32 rounding.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import float32_exact, random_model_data, write_smplx_model_dir
from hmr_fast import SMPL
from hmr_fast.kernels import reference

kernels = pytest.importorskip("hmr_fast.kernels")
from hmr_fast.kernels import _common  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
if not kernels.triton_usable(DEVICE)[0]:
    pytest.skip(f"Triton kernels cannot run here: {kernels.triton_usable(DEVICE)[1]}", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64_ATOL = 1e-11


@pytest.fixture(autouse=True, scope="module")
def nan_outputs_and_a_faster_interpreter():
    """NaN-filled kernel outputs; and, under the interpreter, no int32 overflow checks.

    The interpreter checks every int32 index product for overflow (~1 ms each, half its time
    here); the kernels' offsets are far below 2^31, and compile_check builds them for real.
    """
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    saved_options, saved_fill = builder.options, _common.FILL_OUTPUTS_WITH_NAN
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)
    _common.FILL_OUTPUTS_WITH_NAN = True
    yield
    builder.options, _common.FILL_OUTPUTS_WITH_NAN = saved_options, saved_fill


def with_h36m(data, rng, rows=17, per_row=24):
    """Add a sparse, row-normalised random 'h36m' regressor (as SPIN's J_regressor_h36m)."""
    V = data.num_vertices
    reg = np.zeros((rows, V))
    for r in range(rows):
        cols = rng.choice(V, size=min(per_row, V), replace=False)
        reg[r, cols] = rng.random(len(cols)) + 0.05
    reg /= reg.sum(1, keepdims=True)
    return dataclasses.replace(data, extra_regressors={"h36m": reg.astype(np.float32).astype(np.float64)})


def layers(data, dtype, joint_set="smpl24"):
    ref = SMPL(model_path=data, backend="reference", dtype=dtype, joint_set=joint_set).to(DEVICE)
    tri = SMPL(model_path=data, backend="triton", dtype=dtype, joint_set=joint_set).to(DEVICE)
    return ref, tri


def random_axis_angle(batch, kind="random", dtype=torch.float64):
    aa = torch.randn(batch, 24, 3, dtype=dtype, device=DEVICE)
    unit = aa / aa.norm(dim=-1, keepdim=True)
    if kind == "zero":
        return torch.zeros_like(aa)
    if kind == "tiny":
        return unit * 1e-7
    if kind == "near_pi":
        return unit * (math.pi - torch.rand(batch, 24, 1, dtype=dtype, device=DEVICE) * 1e-3)
    return aa * 0.7


def outputs_and_grads(layer, betas, pose, transl, pose2rot, return_verts, joint_set, weights):
    """Forward through `layer`, then the gradients of a random linear loss w.r.t. the inputs."""
    betas, pose, transl = (t.detach().clone().requires_grad_(True) for t in (betas, pose, transl))
    B = betas.shape[0]
    if pose2rot:
        out = layer(betas=betas, global_orient=pose[:, :3], body_pose=pose[:, 3:], transl=transl,
                    return_verts=return_verts, joint_set=joint_set)
    else:
        out = layer(betas=betas, global_orient=pose[:, :9], body_pose=pose[:, 9:], transl=transl, pose2rot=False,
                    return_verts=return_verts, joint_set=joint_set)
    loss = (out.joints * weights["joints"][:, : out.joints.shape[1]]).sum() + (out.rot_mats * weights["rot"]).sum()
    if return_verts:
        loss = loss + (out.vertices * weights["verts"]).sum()
    grads = torch.autograd.grad(loss, [betas, pose, transl])
    return dict(vertices=out.vertices, joints=out.joints, rot_mats=out.rot_mats,
                g_betas=grads[0], g_pose=grads[1], g_transl=grads[2])


def random_weights(batch, num_vertices, dtype):
    return dict(joints=torch.randn(batch, 64, 3, dtype=dtype, device=DEVICE),
                rot=torch.randn(batch, 24, 3, 3, dtype=dtype, device=DEVICE),
                verts=torch.randn(batch, num_vertices, 3, dtype=dtype, device=DEVICE))


def assert_close(got, want, tol, what):
    """max |got - want| <= tol * max(1, max |want|): absolute near 1, relative for larger values."""
    assert got is not None and want is not None, what
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if not want.numel():
        return
    assert torch.isfinite(got).all(), f"{what}: non-finite values (an unwritten output?)"
    err = (got.double() - want.double()).abs().max().item()
    bound = tol * max(1.0, want.double().abs().max().item())
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.1e}"


# ----------------------------------------------------------------------------- availability
def _run_python(code, env_update=None, drop=("TRITON_INTERPRET",)):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)


def test_triton_backend_on_cpu_without_the_interpreter_says_why():
    code = (
        "import torch\n"
        "from hmr_fast.kernels import triton_usable\n"
        "ok, why = triton_usable('cpu'); print('USABLE', ok, why)\n"
        "from hmr_fast import SMPL\n"
        "layer = SMPL(backend='triton')\n"
        "try:\n"
        "    layer(betas=torch.zeros(1, 10))\n"
        "except RuntimeError as e:\n"
        "    print('ERROR', e)\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "USABLE False" in proc.stdout
    assert "ERROR" in proc.stdout, proc.stdout
    assert "needs a CUDA GPU, or TRITON_INTERPRET=1" in proc.stdout


def test_triton_usable_without_triton_installed():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "from hmr_fast.kernels import triton_usable\n"
        "print(triton_usable('cpu'), triton_usable('cuda'))\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("triton is not installed") == 2, proc.stdout


@pytest.mark.parametrize("versions,usable", [(("3.6.0", "2.4.0"), False), (("3.6.0", "2.3.5"), True),
                                             (("3.7.0", "2.4.0"), True)])
def test_triton_36_interpreter_with_numpy_24_says_why(versions, usable):
    """triton 3.6's interpreter fails on numpy >= 2.4 (triton-lang/triton#9171): the Triton
    backend must say so, not die inside the interpreter. The versions are set before the
    import; the usable cases only ask (running would use this machine's real triton)."""
    code = (
        "import numpy, triton, torch\n"
        f"triton.__version__, numpy.__version__ = {versions!r}\n"
        "from hmr_fast.kernels import triton_usable\n"
        "ok, why = triton_usable('cpu'); print('USABLE', ok, why)\n"
        "from hmr_fast import SMPL\n"
        "try:\n"
        "    ok or SMPL(backend='triton')(betas=torch.zeros(1, 10))\n"
        "except RuntimeError as e:\n"
        "    print('ERROR', e)\n"
    )
    proc = _run_python(code, {"TRITON_INTERPRET": "1"}, drop=())
    assert proc.returncode == 0, proc.stderr
    if usable:
        assert "USABLE True" in proc.stdout, proc.stdout
    else:
        assert "USABLE False" in proc.stdout and "ERROR" in proc.stdout, proc.stdout
        assert "triton-lang/triton#9171" in proc.stdout and "numpy<2.4" in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- rotations
@pytest.mark.parametrize("kind", ["random", "zero", "tiny", "near_pi"])
def test_rodrigues_forward_and_backward(seed, kind):
    aa = random_axis_angle(37, kind)
    weights = torch.randn(37, 24, 3, 3, dtype=torch.float64, device=DEVICE)
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        x = aa.to(dtype).requires_grad_(True)
        got = kernels.rodrigues(x)
        (g_got,) = torch.autograd.grad((got * weights.to(dtype)).sum(), x)
        x_ref = aa.clone().requires_grad_(True)
        want = reference.rodrigues(x_ref)
        (g_want,) = torch.autograd.grad((want * weights).sum(), x_ref)
        assert_close(got, want, atol, f"R {dtype}")
        # float32 near pi: the gradient is well conditioned; near 0 it is the closed form's limit
        assert_close(g_got, g_want, atol * 10, f"dL/daa {dtype}")


def test_rodrigues_gradient_at_exactly_zero_is_the_cross_product_basis():
    x = torch.zeros(5, 3, device=DEVICE, requires_grad=True)
    w = torch.randn(5, 3, 3, device=DEVICE)
    (g,) = torch.autograd.grad((kernels.rodrigues(x) * w).sum(), x)
    expected = torch.stack([w[:, 2, 1] - w[:, 1, 2], w[:, 0, 2] - w[:, 2, 0], w[:, 1, 0] - w[:, 0, 1]], -1)
    assert_close(g, expected, 1e-6, "dR/daa at 0")


def test_rot6d_forward_and_backward(seed):
    x = torch.randn(3, 7, 6, dtype=torch.float64, device=DEVICE)
    w = torch.randn(3, 7, 3, 3, dtype=torch.float64, device=DEVICE)
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        a = x.to(dtype).requires_grad_(True)
        got = kernels.rot6d_to_rotmat(a)
        (g_got,) = torch.autograd.grad((got * w.to(dtype)).sum(), a)
        b = x.clone().requires_grad_(True)
        want = reference.rot6d_to_rotmat(b)
        (g_want,) = torch.autograd.grad((want * w).sum(), b)
        assert got.shape == (3, 7, 3, 3)
        assert_close(got, want, atol, f"R {dtype}")
        assert_close(g_got, g_want, atol * 10, f"dL/dx {dtype}")


# ----------------------------------------------------------------------------- the whole forward
@pytest.mark.parametrize("batch,pose2rot,return_verts", [(1, True, True), (3, False, True), (37, True, False),
                                                         (37, False, True)])
def test_smpl_float64_forward_and_gradients_match_reference(seed, batch, pose2rot, return_verts):
    """301 vertices (not a multiple of any tile); float64 lets the kernels be held to ~1e-12."""
    data = with_h36m(random_model_data(num_vertices=301), np.random.default_rng(seed))
    ref, tri = layers(data, torch.float64)
    betas = torch.randn(batch, 10, dtype=torch.float64, device=DEVICE)
    aa = random_axis_angle(batch)
    aa[0, :2] = 0.0  # the root and one joint exactly at zero
    pose = aa.flatten(1) if pose2rot else reference.rodrigues(aa).flatten(1)
    transl = torch.randn(batch, 3, dtype=torch.float64, device=DEVICE)
    weights = random_weights(batch, 301, torch.float64)
    for joint_set in ("smpl24", "h36m17"):
        want = outputs_and_grads(ref, betas, pose, transl, pose2rot, return_verts, joint_set, weights)
        got = outputs_and_grads(tri, betas, pose, transl, pose2rot, return_verts, joint_set, weights)
        for key in want:
            if want[key] is None:
                assert got[key] is None
                continue
            assert_close(got[key], want[key], F64_ATOL, f"{joint_set} {key}")


@pytest.mark.parametrize("kind", ["zero", "near_pi"])
def test_float32_gradients_finite_at_zero_and_near_pi(seed, kind):
    data = random_model_data(num_vertices=301)
    ref, tri = layers(data, torch.float64)
    tri32 = SMPL(model_path=data, backend="triton", dtype=torch.float32, joint_set="smpl24").to(DEVICE)
    batch = 3
    betas = torch.randn(batch, 10, dtype=torch.float64, device=DEVICE)
    pose = random_axis_angle(batch, kind).flatten(1)
    transl = torch.randn(batch, 3, dtype=torch.float64, device=DEVICE)
    weights = random_weights(batch, 301, torch.float64)
    want = outputs_and_grads(ref, betas, pose, transl, True, True, "smpl24", weights)
    got = outputs_and_grads(tri32, betas.float(), pose.float(), transl.float(), True, True, "smpl24",
                            {k: v.float() for k, v in weights.items()})
    for key in want:
        assert_close(got[key], want[key], 2e-5, key)


def test_full_model_float32_matches_smplx_forward_and_gradients(seed, tmp_path):
    """6890 vertices, smplx's 45 joints, against the smplx package in float32."""
    import smplx

    data = float32_exact(random_model_data(num_vertices=6890))
    theirs = smplx.create(write_smplx_model_dir(data, tmp_path), model_type="smpl").to(DEVICE)
    ours = SMPL(model_path=data, backend="triton").to(DEVICE)
    batch = 3
    aa = random_axis_angle(batch, dtype=torch.float32)
    betas = torch.randn(batch, 10, device=DEVICE)
    transl = torch.randn(batch, 3, device=DEVICE)
    w_verts = torch.randn(batch, 6890, 3, device=DEVICE)
    w_joints = torch.randn(batch, 45, 3, device=DEVICE)

    def run(layer):
        inputs = [t.clone().requires_grad_(True) for t in (aa, betas, transl)]
        out = layer(betas=inputs[1], global_orient=inputs[0][:, 0], body_pose=inputs[0][:, 1:].reshape(batch, 69),
                    transl=inputs[2])
        loss = (out.vertices * w_verts).sum() + (out.joints * w_joints).sum()
        return (out.vertices, out.joints, *torch.autograd.grad(loss, inputs))

    got, want = run(ours), run(theirs)
    for name, g, w in zip(("vertices", "joints", "pose grad", "betas grad", "transl grad"), got, want):
        assert_close(g, w, 1e-5, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_joint_set_joints_only_path_matches_reference(seed, dtype):
    """The joints-only path (support vertices only) on a 6890-vertex model, every joint set."""
    data = with_h36m(random_model_data(num_vertices=6890), np.random.default_rng(seed))
    ref, tri = layers(data, dtype)
    batch = 37
    betas = torch.randn(batch, 10, dtype=dtype, device=DEVICE)
    pose = random_axis_angle(batch, dtype=dtype).flatten(1)
    transl = torch.randn(batch, 3, dtype=dtype, device=DEVICE)
    weights = random_weights(batch, 6890, dtype)
    atol = F64_ATOL if dtype == torch.float64 else 2e-5
    for joint_set in ("smpl24", "smplx45", "hmr19", "lsp14", "h36m17"):
        want = outputs_and_grads(ref, betas, pose, transl, True, False, joint_set, weights)
        got = outputs_and_grads(tri, betas, pose, transl, True, False, joint_set, weights)
        assert tri.joint_set_tensors(joint_set).support.shape[0] < 2000
        for key in ("joints", "rot_mats", "g_betas", "g_pose", "g_transl"):
            assert_close(got[key], want[key], atol, f"{joint_set} {key}")


def test_joints_projected_matches_twin_with_camera_gradient(seed):
    data = with_h36m(random_model_data(num_vertices=301), np.random.default_rng(seed))
    _, tri = layers(data, torch.float64)
    batch = 37
    inputs = [torch.randn(batch, 10, dtype=torch.float64, device=DEVICE), random_axis_angle(batch).flatten(1),
              torch.randn(batch, 3, dtype=torch.float64, device=DEVICE),
              torch.rand(batch, 3, dtype=torch.float64, device=DEVICE) + 0.5]
    w3 = torch.randn(batch, 17, 3, dtype=torch.float64, device=DEVICE)
    w2 = torch.randn(batch, 17, 2, dtype=torch.float64, device=DEVICE)

    def run(fn):
        xs = [t.clone().requires_grad_(True) for t in inputs]
        j3, kp, rot = fn(tri, *xs, True, "h36m17")
        loss = (j3 * w3).sum() + (kp * w2).sum()
        return (j3, kp, rot, *torch.autograd.grad(loss, xs))

    names = ("joints3d", "keypoints2d", "rot_mats", "g_betas", "g_pose", "g_transl", "g_cam")
    for name, g, w in zip(names, run(kernels.smpl_joints_projected), run(reference.smpl_joints_projected)):
        assert_close(g.reshape(w.shape), w, F64_ATOL, name)


# ----------------------------------------------------------------------------- each fused op alone
def op_and_twin_with_grads(name, args, grad_inputs, seed):
    """(outputs, grads) of torch.ops.hmr_fast.<name> and of its twin reference.<name> on the
    same arguments; the grads are of one random linear loss of every float output w.r.t.
    the argument positions in grad_inputs."""
    results = []
    for fn in (getattr(torch.ops.hmr_fast, name), getattr(reference, name)):
        xs = list(args)
        for i in grad_inputs:
            xs[i] = args[i].detach().clone().requires_grad_(True)
        outs = fn(*xs)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        loss = sum((o * torch.randn(o.shape, dtype=o.dtype, device=DEVICE, generator=gen)).sum()
                   for o in outs if o.numel())
        results.append((outs, torch.autograd.grad(loss, [xs[i] for i in grad_inputs])))
    return results


@pytest.mark.parametrize("pose2rot", [True, False])
def test_pose_chain_op_matches_its_twin(seed, pose2rot):
    _, tri = layers(random_model_data(num_vertices=301), torch.float64)
    prep = kernels.prepare(tri)
    B = 19
    aa = random_axis_angle(B)
    aa[0, :2] = 0.0
    pose = aa.flatten(1) if pose2rot else reference.rodrigues(aa).flatten(1)
    betas = torch.randn(B, 10, dtype=torch.float64, device=DEVICE)
    args = (pose, betas, prep.J_template, prep.J_shapedirs, prep.parents, prep.depth, prep.children,
            prep.num_levels, pose2rot, prep.c_pad)
    (got, g_got), (want, g_want) = op_and_twin_with_grads("pose_chain", args, (0, 1), seed)
    for name, g, w in zip(("rot", "coeffs", "posed_joints", "transforms", "g_pose", "g_betas"),
                          (*got, *g_got), (*want, *g_want)):
        assert_close(g, w, F64_ATOL, name)


@pytest.mark.parametrize("with_transl", [True, False])
def test_blend_skin_op_matches_its_twin(seed, with_transl):
    _, tri = layers(random_model_data(num_vertices=301), torch.float64)
    mesh = kernels.prepare(tri).mesh
    B, NJ = 5, 24
    coeffs = torch.randn(B, mesh.c_pad, dtype=torch.float64, device=DEVICE) * 0.3
    transforms = torch.randn(B, NJ, 12, dtype=torch.float64, device=DEVICE)
    transl = torch.randn(B, 3, dtype=torch.float64, device=DEVICE) if with_transl else None
    args = (coeffs, transforms, transl, mesh.template_planes, mesh.planes("ieee"), mesh.skin_indices,
            mesh.skin_weights, mesh.weights_dense, mesh.chunk_list, mesh.chunk_count, mesh.chunk_mask,
            mesh.num_vertices, mesh.sparse, "ieee")
    grad_inputs = (0, 1, 2) if with_transl else (0, 1)
    (got, g_got), (want, g_want) = op_and_twin_with_grads("blend_skin", args, grad_inputs, seed)
    assert_close(got[0], want[0], F64_ATOL, "vertices")
    for name, g, w in zip(("g_coeffs", "g_transforms", "g_transl"), g_got, g_want):
        assert_close(g, w, F64_ATOL, name)


# h36m17 rows read vertices, smpl24's only the chain (an empty support); the two vertex sources:
# all vertices (transl already in them) or the joints-only path's support vertices.
@pytest.mark.parametrize("joint_set,all_vertices", [("h36m17", True), ("h36m17", False), ("smpl24", False)])
def test_regress_project_op_matches_its_twin(seed, joint_set, all_vertices):
    data = with_h36m(random_model_data(num_vertices=301), np.random.default_rng(seed))
    _, tri = layers(data, torch.float64)
    plan = kernels.prepare(tri).joint_sets[joint_set]
    B, V = 7, 301
    S = plan.support.shape[0]
    verts = torch.randn(B, V if all_vertices else S, 3, dtype=torch.float64, device=DEVICE)
    posed = torch.randn(B, 24, 3, dtype=torch.float64, device=DEVICE)
    transl = torch.randn(B, 3, dtype=torch.float64, device=DEVICE)
    cam = torch.rand(B, 3, dtype=torch.float64, device=DEVICE) + 0.5
    support = plan.support if all_vertices else plan.support_local
    args = (verts, support, plan.regT, plan.selT, plan.rowsum, posed, transl, cam, plan.num_joints, all_vertices)
    (got, g_got), (want, g_want) = op_and_twin_with_grads("regress_project", args, (0, 5, 6, 7), seed)
    for name, g, w in zip(("joints", "keypoints", "g_verts", "g_posed", "g_transl", "g_cam"),
                          (*got, *g_got), (*want, *g_want)):
        assert_close(g, w, F64_ATOL, name)


def test_gpu_tile_shapes_under_the_interpreter(seed):
    """The GPU's tile shapes (64-vertex sparsity blocks, 32-wide tensor-core tiles, batch
    tiles larger than the batch) on 301 vertices, every GEMM precision's code path."""
    data = random_model_data(num_vertices=301)
    ref, tri = layers(data, torch.float64)
    tri32 = SMPL(model_path=data, backend="triton", dtype=torch.float32, joint_set="smpl24").to(DEVICE)
    kernels.prepare(tri, block_n=64)
    kernels.prepare(tri32, block_n=64)
    assert tri._hmr_fast_kernel_cache.mesh.block_n == 64
    batch = 37
    betas = torch.randn(batch, 10, dtype=torch.float64, device=DEVICE)
    pose = random_axis_angle(batch).flatten(1)
    transl = torch.randn(batch, 3, dtype=torch.float64, device=DEVICE)
    weights = random_weights(batch, 301, torch.float64)
    want = outputs_and_grads(ref, betas, pose, transl, True, True, "smpl24", weights)
    got = outputs_and_grads(tri, betas, pose, transl, True, True, "smpl24", weights)
    for key in want:
        assert_close(got[key], want[key], F64_ATOL, f"float64 {key}")
    w32 = {k: v.float() for k, v in weights.items()}
    for precision, atol in (("ieee", 3e-5), ("tf32x3", 3e-5), ("tf32", 3e-3), ("bf16", 3e-2)):
        if not ON_GPU and precision in ("tf32", "tf32x3"):
            atol = 3e-5  # the interpreter computes TF32 products in float32
        with kernels.gemm_precision(precision):
            got = outputs_and_grads(tri32, betas.float(), pose.float(), transl.float(), True, True, "smpl24", w32)
        for key in want:
            assert_close(got[key], want[key], atol, f"{precision} {key}")


# ----------------------------------------------------------------------------- block-sparse posedirs
def block_sparse_model(num_vertices, rng):
    """A random model whose pose correctives are local: vertex v moves only with joint 1 + (v // 256) % 23."""
    data = random_model_data(num_vertices=num_vertices, seed=int(rng.integers(2**31)))
    posedirs = np.zeros_like(data.posedirs)
    for v0 in range(0, num_vertices, 256):
        j = 1 + (v0 // 256) % 23
        block = slice(v0, min(v0 + 256, num_vertices))
        posedirs[block, :, 9 * (j - 1): 9 * j] = data.posedirs[block, :, 9 * (j - 1): 9 * j]
    return dataclasses.replace(data, posedirs=posedirs)


def test_block_sparse_posedirs_skip_zero_tiles_and_match_reference(seed):
    data = block_sparse_model(2000, np.random.default_rng(seed))
    ref, tri = layers(data, torch.float64)
    prep = kernels.prepare(tri)
    assert prep.mesh.sparse and prep.mesh.zero_tile_fraction > 0.5, prep.mesh.zero_tile_fraction
    assert int(prep.mesh.chunk_count.max()) < prep.mesh.c_pad // 32
    dense = SMPL(model_path=random_model_data(num_vertices=300), backend="triton", joint_set="smpl24").to(DEVICE)
    assert not kernels.prepare(dense).mesh.sparse  # dense models keep the dense path
    batch = 3
    betas = torch.randn(batch, 10, dtype=torch.float64, device=DEVICE)
    pose = random_axis_angle(batch).flatten(1)
    transl = torch.randn(batch, 3, dtype=torch.float64, device=DEVICE)
    weights = random_weights(batch, 2000, torch.float64)
    want = outputs_and_grads(ref, betas, pose, transl, True, True, "smpl24", weights)
    got = outputs_and_grads(tri, betas, pose, transl, True, True, "smpl24", weights)
    kernels.prepare(tri, sparse=False)
    assert not tri._hmr_fast_kernel_cache.mesh.sparse
    got_dense = outputs_and_grads(tri, betas, pose, transl, True, True, "smpl24", weights)
    kernels.prepare(tri, sparse=True, block_n=64)  # the GPU's sparsity blocks and tiles
    assert tri._hmr_fast_kernel_cache.mesh.sparse
    got_gpu_tiles = outputs_and_grads(tri, betas, pose, transl, True, True, "smpl24", weights)
    for key in want:
        assert_close(got[key], want[key], F64_ATOL, f"sparse {key}")
        assert_close(got_dense[key], want[key], F64_ATOL, f"dense {key}")
        assert_close(got_gpu_tiles[key], want[key], F64_ATOL, f"sparse, GPU tiles {key}")


# ----------------------------------------------------------------------------- GEMM precision
def test_corrective_gemm_precision_error(mannequin_data):
    """Vertex error of each GEMM precision against float64, on the mannequin (metres).

    Measured (see kernels/NOTES.md); bounds: ieee < 1e-5 m, tf32x3 < 1e-5, tf32 < 1e-3, bf16 < 5e-3.
    The interpreter computes TF32 products in float32 and emulates bf16 by rounding the operands,
    so only the GPU measures tf32 and tf32x3 for real.
    """
    ref = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64).to(DEVICE)
    tri = SMPL(model_path=mannequin_data, backend="triton").to(DEVICE)
    batch = 8
    betas = torch.randn(batch, 10, device=DEVICE) * 1.5
    aa = random_axis_angle(batch, dtype=torch.float32)
    kwargs = dict(global_orient=aa[:, 0], body_pose=aa[:, 1:].reshape(batch, 69))
    with torch.no_grad():
        want = ref(betas=betas.double(), **{k: v.double() for k, v in kwargs.items()}).vertices
        errors = {}
        for precision in ("ieee", "tf32x3", "tf32", "bf16"):
            with kernels.gemm_precision(precision):
                got = tri(betas=betas, **kwargs).vertices
            assert torch.isfinite(got).all()
            errors[precision] = (got.double() - want).abs().max().item()
    print("max vertex error vs float64 (m):", {k: f"{v:.2e}" for k, v in errors.items()},
          "on", "GPU" if ON_GPU else "the interpreter")
    assert errors["ieee"] < 1e-5
    assert errors["tf32x3"] < 1e-5
    assert errors["tf32"] < 1e-3
    assert errors["bf16"] < 5e-3
    if ON_GPU:
        assert errors["tf32"] > errors["ieee"]  # TF32 really ran on the tensor cores


def test_gemm_precision_setting():
    assert kernels.get_gemm_precision() == "ieee"
    with kernels.gemm_precision("bf16"):
        assert kernels.get_gemm_precision() == "bf16"
    assert kernels.get_gemm_precision() == "ieee"
    with pytest.raises(ValueError, match="gemm precision"):
        kernels.set_gemm_precision("fp8")


# ----------------------------------------------------------------------------- compiler, graphs
def test_torch_compile_fullgraph_matches_eager(seed):
    """Dynamo captures the ops whole (fake tensors, autograd), forward and backward.

    On the CPU with the aot_eager backend (inductor there costs ~25 s of C++ compiling); the
    GPU runs inductor in test_inductor_and_cuda_graphs_on_gpu.
    """
    tri = SMPL(model_path=random_model_data(num_vertices=301), backend="triton", joint_set="smpl24").to(DEVICE)
    kernels.prepare(tri)

    def step(betas, pose, transl, cam):
        vertices, joints, _ = kernels.smpl_forward(tri, betas, pose, transl, True, True, "smpl24")
        j3, kp, rot = kernels.smpl_joints_projected(tri, betas, pose, transl, cam, True, "smpl24")
        return vertices.square().mean() + joints.abs().mean() + kp.square().mean() + j3.mean() + rot.mean()

    inputs = [torch.randn(3, 10, device=DEVICE), torch.randn(3, 72, device=DEVICE) * 0.5,
              torch.randn(3, 3, device=DEVICE), torch.randn(3, 3, device=DEVICE)]

    def run(fn):
        xs = [t.clone().requires_grad_(True) for t in inputs]
        loss = fn(*xs)
        return (loss, *torch.autograd.grad(loss, xs))

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(run(compiled), run(step)):
        assert_close(got, want, 1e-6, "compiled")


@pytest.mark.skipif(not ON_GPU, reason="GPU only: inductor and CUDA graphs need CUDA")
def test_inductor_and_cuda_graphs_on_gpu(seed):
    tri = SMPL(model_path=random_model_data(num_vertices=6890), backend="triton").to(DEVICE)
    kernels.prepare(tri)
    cam = torch.rand(64, 3, device=DEVICE) + 0.5

    def step(betas, pose):
        j3, kp, _ = kernels.smpl_joints_projected(tri, betas, pose, None, cam, True, "smplx45")
        return kp.square().mean() + j3.abs().mean()

    inputs = [torch.randn(64, 10, device=DEVICE), torch.randn(64, 72, device=DEVICE) * 0.5]

    def run(fn):
        xs = [t.clone().requires_grad_(True) for t in inputs]
        loss = fn(*xs)
        return (loss, *torch.autograd.grad(loss, xs))

    want = run(step)
    for mode in ("default", "reduce-overhead"):
        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True, mode=mode)
        for _ in range(3):
            got = run(compiled)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-5, mode)
    # a forward captured in a CUDA graph by hand
    betas, pose = inputs[0].clone(), inputs[1].clone()
    with torch.no_grad():
        eager = kernels.smpl_forward(tri, betas, pose, None, True, True, "smplx45")[0]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            kernels.smpl_forward(tri, betas, pose, None, True, True, "smplx45")
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = kernels.smpl_forward(tri, betas, pose, None, True, True, "smplx45")[0]
        betas.copy_(torch.randn_like(betas))
        graph.replay()
        eager = kernels.smpl_forward(tri, betas, pose, None, True, True, "smplx45")[0]
        assert_close(captured, eager, 1e-6, "CUDA graph replay")


def test_compile_check_builds_every_kernel_for_sm90():
    """Every kernel configuration compiles for the H100 (sm_90) on this machine, GPU or not."""
    proc = subprocess.run([sys.executable, "-m", "hmr_fast.kernels.compile_check", "--arch", "sm_90"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "COMPILE ERROR" not in proc.stdout
    assert "all configurations compiled" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.endswith(tuple("0123456789")) and "_kernel" in line]
    assert len(rows) >= 30
