"""The reference backend against the smplx package and scipy, on fresh random inputs.

smplx's own Rodrigues adds 1e-8 to the axis-angle before taking its norm, which moves its
vertices by ~1e-8 m; to hold our float64 forward to 1e-9 m, smplx is fed rotation matrices
from scipy's independent Rodrigues (pose2rot=False) and we are fed the axis-angle itself.
smplx also casts every model array to float32 on load, so the models here are float32-exact.
"""
import numpy as np
import pytest
import smplx
import torch
from scipy.spatial.transform import Rotation

from conftest import random_model_data, write_smplx_model_dir
from hmr_fast import SMPL
from hmr_fast.kernels import cpu, reference
from hmr_fast.body.joint_sets import SMPLX_EXTRA_VERTICES

POSE_KINDS = ("random", "zero", "tiny", "near_pi")


def random_pose(batch, kind, rng):
    """Axis-angle (B, 24, 3) of the given kind, drawn fresh."""
    aa = rng.normal(size=(batch, 24, 3))
    if kind == "zero":
        return np.zeros_like(aa)
    unit = aa / np.linalg.norm(aa, axis=-1, keepdims=True)
    if kind == "tiny":
        return unit * 1e-8
    if kind == "near_pi":
        return unit * (np.pi - rng.uniform(0, 1e-3, size=(batch, 24, 1)))
    return aa * 0.7


def scipy_rotmats(aa):
    return torch.tensor(Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(*aa.shape[:-1], 3, 3))


@pytest.fixture(params=["random_model", "mannequin"])
def model_pair(request, tmp_path):
    """(our SMPL in float64, smplx's SMPL in float64) on the same float32-exact model."""
    if request.param == "mannequin":
        data = request.getfixturevalue("mannequin_data")
        root = request.getfixturevalue("mannequin_smplx_dir")
    else:
        data = random_model_data()
        root = write_smplx_model_dir(data, tmp_path)
    ours = SMPL(model_path=data, backend="reference", dtype=torch.float64)
    theirs = smplx.create(root, model_type="smpl", dtype=torch.float64)
    return ours, theirs


@pytest.mark.parametrize("kind", POSE_KINDS)
@pytest.mark.parametrize("batch", [1, 7])
def test_forward_float64_matches_smplx(model_pair, kind, batch, seed):
    ours, theirs = model_pair
    rng = np.random.default_rng(seed)
    aa = random_pose(batch, kind, rng)
    betas = torch.tensor(rng.normal(size=(batch, 10)) * 1.5)
    transl = torch.tensor(rng.normal(size=(batch, 3)))
    R = scipy_rotmats(aa)
    got = ours(betas=betas, global_orient=torch.tensor(aa[:, 0]),
               body_pose=torch.tensor(aa[:, 1:].reshape(batch, 69)), transl=transl)
    want = theirs(betas=betas, global_orient=R[:, :1], body_pose=R[:, 1:], transl=transl, pose2rot=False)
    assert (got.vertices - want.vertices).abs().max() < 1e-9
    assert got.joints.shape == want.joints.shape == (batch, 45, 3)
    assert (got.joints - want.joints).abs().max() < 1e-9
    assert torch.allclose(got.rot_mats, R, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", POSE_KINDS)
def test_forward_float32_matches_smplx_axis_angle(mannequin_data, mannequin_smplx_dir, kind, seed):
    ours = SMPL(model_path=mannequin_data, backend="reference")
    theirs = smplx.create(mannequin_smplx_dir, model_type="smpl")
    rng = np.random.default_rng(seed)
    batch = 5
    aa = torch.tensor(random_pose(batch, kind, rng), dtype=torch.float32)
    betas = torch.randn(batch, 10)
    transl = torch.randn(batch, 3)
    kwargs = dict(betas=betas, global_orient=aa[:, 0], body_pose=aa[:, 1:].reshape(batch, 69), transl=transl)
    got, want = ours(**kwargs), theirs(**kwargs)
    assert got.vertices.dtype == torch.float32
    assert (got.vertices - want.vertices).abs().max() < 1e-5
    assert (got.joints - want.joints).abs().max() < 1e-5


# The chain composes rotations by pointer doubling up to DOUBLING_BATCH samples and level by
# level above: both orders, at the same small batch.
@pytest.mark.parametrize("doubling_batch", [0, 10**9])
@pytest.mark.parametrize("kind", ["random", "zero", "near_pi"])
def test_gradients_match_smplx(model_pair, monkeypatch, kind, doubling_batch, seed):
    monkeypatch.setattr(reference, "DOUBLING_BATCH", doubling_batch)
    ours, theirs = model_pair
    rng = np.random.default_rng(seed)
    batch = 3
    aa = torch.tensor(random_pose(batch, kind, rng))
    betas = torch.tensor(rng.normal(size=(batch, 10)))
    transl = torch.tensor(rng.normal(size=(batch, 3)))
    w_verts = torch.randn(batch, ours.num_vertices, 3, dtype=torch.float64)
    w_joints = torch.randn(batch, 45, 3, dtype=torch.float64)

    def grads(layer):
        inputs = [t.clone().requires_grad_(True) for t in (aa, betas, transl)]
        out = layer(betas=inputs[1], global_orient=inputs[0][:, 0],
                    body_pose=inputs[0][:, 1:].reshape(batch, 69), transl=inputs[2])
        loss = (out.vertices * w_verts).sum() + (out.joints * w_joints).sum()
        return (out.vertices, out.joints) + torch.autograd.grad(loss, inputs)

    got, want = grads(ours), grads(theirs)
    # Values too (smplx's own Rodrigues, with its +1e-8 in the angle, moves them by ~1e-8).
    assert (got[0] - want[0]).abs().max() < 1e-7 and (got[1] - want[1]).abs().max() < 1e-7
    for name, g_ours, g_theirs in zip(("pose", "betas", "transl"), got[2:], want[2:]):
        assert torch.isfinite(g_ours).all(), name
        scale = g_theirs.abs().max()
        # smplx's +1e-8 inside its Rodrigues shifts its pose gradient by ~1e-8 relative.
        assert (g_ours - g_theirs).abs().max() <= 1e-6 * scale, name


def test_gradcheck_against_finite_differences():
    """Autograd of the float64 reference against central differences (no smplx involved)."""
    layer = SMPL(model_path=random_model_data(num_vertices=60), backend="reference", dtype=torch.float64,
                 joint_set="smpl24")
    batch = 2
    aa = (torch.randn(batch, 72, dtype=torch.float64) * 0.5).requires_grad_(True)
    betas = torch.randn(batch, 10, dtype=torch.float64, requires_grad=True)
    transl = torch.randn(batch, 3, dtype=torch.float64, requires_grad=True)

    def f(aa, betas, transl):
        out = layer(betas=betas, global_orient=aa[:, :3], body_pose=aa[:, 3:], transl=transl)
        return out.vertices, out.joints

    assert torch.autograd.gradcheck(f, (aa, betas, transl), eps=1e-6, atol=1e-7, fast_mode=True)


def test_rodrigues_matches_scipy_and_has_finite_gradient_at_zero(seed):
    rng = np.random.default_rng(seed)
    for kind in POSE_KINDS:
        aa = random_pose(4, kind, rng)
        got = reference.rodrigues(torch.tensor(aa))
        assert torch.allclose(got, scipy_rotmats(aa), atol=1e-13, rtol=0), kind
    zero = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 3, dtype=torch.float64)
    (g,) = torch.autograd.grad((reference.rodrigues(zero) * weights).sum(), zero)
    # dR/dw at w = 0 is the cross-product basis: d/dw_x of sum(W * K(w)) = W[2,1] - W[1,2], etc.
    expected = torch.stack([weights[:, 2, 1] - weights[:, 1, 2], weights[:, 0, 2] - weights[:, 2, 0],
                            weights[:, 1, 0] - weights[:, 0, 1]], dim=-1)
    assert torch.allclose(g, expected, atol=1e-12)


def test_rot6d_recovers_rotation_from_its_first_two_columns():
    R = torch.tensor(Rotation.random(16).as_matrix())
    six = R[..., :2].reshape(16, 6)
    assert torch.allclose(reference.rot6d_to_rotmat(six), R, atol=1e-12)
    # Any 6 numbers (in general position) give a proper rotation.
    R2 = reference.rot6d_to_rotmat(torch.randn(16, 6, dtype=torch.float64))
    assert torch.allclose(R2 @ R2.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(16, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R2), torch.ones(16, dtype=torch.float64), atol=1e-12)


def test_rotation_matrix_input_and_joints_only_path_agree():
    layer = SMPL(model_path=random_model_data(num_vertices=500), backend="reference", dtype=torch.float64,
                 joint_set="smpl24")
    batch = 4
    aa = torch.randn(batch, 24, 3, dtype=torch.float64)
    betas = torch.randn(batch, 10, dtype=torch.float64)
    R = reference.rodrigues(aa)
    full = layer(betas=betas, global_orient=aa[:, 0], body_pose=aa[:, 1:].reshape(batch, 69))
    as_rotmats = layer(betas=betas, global_orient=R[:, :1], body_pose=R[:, 1:], pose2rot=False)
    joints_only = layer(betas=betas, global_orient=aa[:, 0], body_pose=aa[:, 1:].reshape(batch, 69),
                        return_verts=False)
    assert torch.allclose(as_rotmats.vertices, full.vertices, atol=1e-12)
    assert joints_only.vertices is None
    assert torch.allclose(joints_only.joints, full.joints, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 5, 20])
def test_outputs_are_contiguous(mannequin_data, batch):
    """Renderers and .view() need contiguous vertices, as smplx gives them."""
    layer = SMPL(model_path=mannequin_data, backend="reference")
    for transl in (None, torch.randn(batch, 3)):
        out = layer(betas=torch.randn(batch, 10), body_pose=torch.randn(batch, 69) * 0.5, transl=transl)
        assert out.vertices.is_contiguous() and out.joints.is_contiguous()


@pytest.mark.parametrize("name", ["smpl24", "hmr19", "lsp14"])
def test_joint_sets_pick_the_right_points(mannequin_data, name):
    """Without a cocoplus regressor, hmr19 is SMPL joints + vertices: check against smplx24 + vertices."""
    layer = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    batch = 3
    kwargs = dict(betas=torch.randn(batch, 10, dtype=torch.float64),
                  body_pose=torch.randn(batch, 69, dtype=torch.float64) * 0.5,
                  global_orient=torch.randn(batch, 3, dtype=torch.float64),
                  transl=torch.randn(batch, 3, dtype=torch.float64))
    base = layer(**kwargs, joint_set="smplx45")
    got = layer(**kwargs, joint_set=name, return_verts=False).joints
    chain, verts, transl = base.joints[:, :24], base.vertices, kwargs["transl"][:, None]
    if name == "smpl24":
        assert torch.allclose(got, chain, atol=1e-12)
        return
    if "hmr19" in mannequin_data.extra_regressors:
        regressor = torch.tensor(mannequin_data.extra_regressors["hmr19"])
        want = torch.einsum("jv,bvc->bjc", regressor, verts - transl) + transl  # every joint moves once
    else:
        vid = dict(SMPLX_EXTRA_VERTICES)
        want = torch.cat([chain[:, [8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20, 12]],
                          verts[:, [411, vid["nose"], vid["left_eye"], vid["right_eye"], vid["left_ear"], vid["right_ear"]]]], 1)
    assert torch.allclose(got, want[:, : got.shape[1]], atol=1e-12)


@pytest.mark.parametrize("batch", [3, reference.REPOSE_SUPPORT_BATCH + 1])
def test_every_joint_moves_by_transl_once(mannequin_data, batch):
    """Joints regressed from the translated mesh, from re-posed support vertices (large
    batches under autograd) and from the joints-only path agree, for weighted regressor rows
    (h36m17) whose sums are not exactly 1."""
    layer = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64, joint_set="h36m17")
    kwargs = dict(betas=torch.randn(batch, 10, dtype=torch.float64),
                  body_pose=torch.randn(batch, 69, dtype=torch.float64) * 0.5,
                  transl=torch.randn(batch, 3, dtype=torch.float64) * 10)
    joints_only = layer(**kwargs, return_verts=False).joints
    with_vertices = layer(**kwargs).joints
    under_autograd = layer(**{k: v.requires_grad_() for k, v in kwargs.items()}).joints
    assert torch.allclose(with_vertices, joints_only, rtol=0, atol=1e-12)
    assert torch.allclose(under_autograd, joints_only, rtol=0, atol=1e-12)


def test_h36m_joint_set_needs_its_regressor():
    layer = SMPL(model_path=random_model_data(num_vertices=100), backend="reference", joint_set="smpl24")
    with pytest.raises(ValueError, match="J_regressor_h36m"):
        layer(betas=torch.zeros(1, 10), joint_set="h36m17")


@pytest.mark.parametrize("kwargs, field", [
    (dict(betas=torch.zeros(2, 9)), "betas"),
    (dict(body_pose=torch.zeros(2, 68)), "body_pose"),
    (dict(global_orient=torch.zeros(2, 4)), "global_orient"),
    (dict(transl=torch.zeros(2, 2)), "transl"),
    (dict(betas=torch.zeros(2, 10), body_pose=torch.zeros(3, 69)), "batch"),
    (dict(body_pose=torch.full((2, 69), float("nan"))), "body_pose"),
    (dict(betas=torch.tensor([[float("inf")] + [0.0] * 9])), "betas"),
    (dict(betas=torch.zeros(2, 10, dtype=torch.int64)), "betas"),
])
def test_bad_input_names_the_argument(kwargs, field):
    layer = SMPL(model_path=random_model_data(num_vertices=50), backend="reference", joint_set="smpl24")
    with pytest.raises((ValueError, TypeError), match=field):
        layer(**kwargs)


def test_shape_and_batch_errors_say_exactly_what_was_expected():
    layer = SMPL(model_path=random_model_data(num_vertices=50), backend="reference", joint_set="smpl24")
    with pytest.raises(ValueError) as err:
        layer(betas=torch.zeros(2, 9))
    assert "must have shape (B, 10) with B=2; got (2, 9)" in str(err.value)
    with pytest.raises(ValueError) as err:
        layer(body_pose=torch.zeros(2, 23, 3, 3), pose2rot=False, global_orient=torch.zeros(2, 2, 3, 3))
    assert "(B, 1, 3, 3) or (B, 9)" in str(err.value)
    with pytest.raises(ValueError) as err:
        layer(betas=torch.zeros(2, 10), body_pose=torch.zeros(3, 69), transl=torch.zeros(2, 3))
    assert "betas 2, body_pose 3, transl 2" in str(err.value)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_an_empty_batch_gives_empty_outputs(backend):
    if backend == "triton":
        from hmr_fast.kernels import triton_usable

        usable, why = triton_usable("cpu")
        if not usable:
            pytest.skip(why)
    layer = SMPL(model_path=random_model_data(num_vertices=50), backend=backend, joint_set="smpl24")
    out = layer(betas=torch.zeros(0, 10), body_pose=torch.zeros(0, 69), global_orient=torch.zeros(0, 3))
    assert out.vertices.shape == (0, 50, 3) and out.joints.shape == (0, 24, 3) and out.rot_mats.shape == (0, 24, 3, 3)
    joints, keypoints = layer.joints_projected(torch.zeros(0, 10), torch.zeros(0, 24, 3, 3), torch.zeros(0, 3))
    assert joints.shape == (0, 24, 3) and keypoints.shape == (0, 24, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_float_inputs_are_cast_to_the_layer_dtype(dtype):
    """Documented in SMPL.forward: the layer computes in its own dtype whatever comes in."""
    data = random_model_data(num_vertices=50)
    layer = SMPL(model_path=data, backend="reference", joint_set="smpl24")
    betas, pose = torch.randn(3, 10) * 0.5, torch.randn(3, 72) * 0.3
    want = layer(betas=betas.to(dtype).float(), global_orient=pose[:, :3].to(dtype).float(),
                 body_pose=pose[:, 3:].to(dtype).float())
    got = layer(betas=betas.to(dtype), global_orient=pose[:, :3].to(dtype), body_pose=pose[:, 3:].to(dtype))
    assert got.vertices.dtype == torch.float32 and got.joints.dtype == torch.float32
    torch.testing.assert_close(got.vertices, want.vertices, rtol=0, atol=0)
    torch.testing.assert_close(got.joints, want.joints, rtol=0, atol=0)


def test_joint_set_reading_missing_vertices_is_a_clear_error():
    with pytest.raises(ValueError, match="smplx45.*only 100 vertices"):
        SMPL(model_path=random_model_data(num_vertices=100), backend="reference")


# Under autograd, joints read the posed vertices below REPOSE_SUPPORT_BATCH and re-pose
# their support vertices from it on: both paths.
@pytest.mark.parametrize("batch", [5, reference.REPOSE_SUPPORT_BATCH + 3])
@pytest.mark.parametrize("chunk_vertex_samples", [1, 997 * 5, 10**9])
def test_chunked_posing_matches_smplx(mannequin_data, mannequin_smplx_dir, monkeypatch, chunk_vertex_samples, batch,
                                      seed):
    """pose_vertices works a chunk of vertices at a time; any chunking gives smplx's answer,
    values and gradients."""
    monkeypatch.setattr(reference, "CHUNK_VERTEX_SAMPLES", chunk_vertex_samples)
    ours = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    theirs = smplx.create(mannequin_smplx_dir, model_type="smpl", dtype=torch.float64)
    rng = np.random.default_rng(seed)
    aa = random_pose(batch, "random", rng)
    R = scipy_rotmats(aa)
    inputs = [torch.tensor(aa[:, 0]), torch.tensor(aa[:, 1:].reshape(batch, 69)),
              torch.tensor(rng.normal(size=(batch, 10))), torch.tensor(rng.normal(size=(batch, 3)))]
    inputs = [t.requires_grad_(True) for t in inputs]
    got = ours(global_orient=inputs[0], body_pose=inputs[1], betas=inputs[2], transl=inputs[3])
    want = theirs(global_orient=R[:, :1], body_pose=R[:, 1:], betas=inputs[2], transl=inputs[3], pose2rot=False)
    assert (got.vertices - want.vertices).abs().max() < 1e-9
    assert (got.joints - want.joints).abs().max() < 1e-9
    weights, joint_weights = torch.randn_like(got.vertices), torch.randn_like(got.joints)
    g_ours = torch.autograd.grad((got.vertices * weights).sum() + (got.joints * joint_weights).sum(), inputs[2:])
    g_theirs = torch.autograd.grad((want.vertices * weights).sum() + (want.joints * joint_weights).sum(), inputs[2:])
    for a, b in zip(g_ours, g_theirs):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("joint_set", ["smpl24", "smplx45", "hmr19"])
@pytest.mark.parametrize("batch", [1, reference.REPOSE_SUPPORT_BATCH + 2])
def test_joints_only_path_matches_smplx_values_and_gradients(mannequin_data, mannequin_smplx_dir, joint_set, batch,
                                                             seed):
    """smpl_joints (the chain on rotations and bones, its own backward; the regressed rows
    from the regressor folded into the skinning, no vertex posed) against smplx's full
    forward, in float64: values and gradients."""
    ours = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    theirs = smplx.create(mannequin_smplx_dir, model_type="smpl", dtype=torch.float64)
    rng = np.random.default_rng(seed)
    aa = random_pose(batch, "random", rng)
    R = scipy_rotmats(aa)
    inputs = [torch.tensor(aa.reshape(batch, 72)), torch.tensor(rng.normal(size=(batch, 10))),
              torch.tensor(rng.normal(size=(batch, 3)))]
    inputs = [t.requires_grad_(True) for t in inputs]
    got = ours(global_orient=inputs[0][:, :3], body_pose=inputs[0][:, 3:], betas=inputs[1], transl=inputs[2],
               return_verts=False, joint_set=joint_set).joints
    want_out = theirs(global_orient=R[:, :1], body_pose=R[:, 1:], betas=inputs[1], transl=inputs[2], pose2rot=False)
    full = ours(global_orient=inputs[0][:, :3], body_pose=inputs[0][:, 3:], betas=inputs[1], transl=inputs[2],
                joint_set=joint_set)
    if joint_set == "hmr19":  # every joint moves by transl once (see test_every_joint_moves_by_transl_once)
        regressor = torch.tensor(mannequin_data.extra_regressors["hmr19"])
        t = inputs[2][:, None]
        want = torch.einsum("jv,bvc->bjc", regressor, want_out.vertices - t) + t
    else:
        want = want_out.joints[:, : got.shape[1]]
    assert (got - want).abs().max() < 1e-9
    assert (got - full.joints).abs().max() < 1e-12
    w = torch.randn_like(got)
    g_ours = torch.autograd.grad((got * w).sum(), inputs[1:])  # smplx's pose gradient differs by its +1e-8
    g_full = torch.autograd.grad((full.joints * w).sum(), inputs)
    g_theirs = torch.autograd.grad((want * w).sum(), inputs[1:])
    for a, b in zip(g_ours, g_theirs):
        assert (a - b).abs().max() <= 1e-9 * max(1.0, b.abs().max())
    g_pose = torch.autograd.grad((ours(global_orient=inputs[0][:, :3], body_pose=inputs[0][:, 3:], betas=inputs[1],
                                       transl=inputs[2], return_verts=False, joint_set=joint_set).joints * w).sum(),
                                 inputs[0])[0]
    assert torch.allclose(g_pose, g_full[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("joint_set", ["smplx45", "hmr19"])
def test_folded_regressor_equals_posing_the_support_vertices(mannequin_data, joint_set, seed):
    """regress_joints_folded against its twin, regress_joints of the posed support vertices:
    float64, fresh random shapes and poses, values and gradients."""
    layer = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    js = layer.joint_set_tensors(joint_set)
    rng = np.random.default_rng(seed)
    betas = torch.tensor(rng.normal(size=(5, 10)), requires_grad=True)
    rot = torch.tensor(scipy_rotmats(random_pose(5, "random", rng)), requires_grad=True)
    rest = reference.rest_joints(betas, layer.J_template, layer.J_shapedirs)
    global_rot, posed = reference.kinematic_chain(rot, rest, layer.parents, layer.levels)
    transforms = reference.skinning_transforms(global_rot, posed, rest)
    feats = reference.pose_features(rot)
    folded = reference.regress_joints_folded(posed, betas, feats, transforms, js)
    support = reference.pose_vertices(betas, feats, transforms, js.template, js.blend_dirs, js.weights)
    twin = reference.regress_joints(posed, support, js.chain_index, js.vertex_regressor)
    assert (folded - twin).abs().max() < 1e-12
    w = torch.randn_like(twin)
    for a, b in zip(torch.autograd.grad((folded * w).sum(), (betas, rot), retain_graph=True),
                    torch.autograd.grad((twin * w).sum(), (betas, rot))):
        assert (a - b).abs().max() < 1e-11


def test_joints_only_path_gradcheck():
    layer = SMPL(model_path=random_model_data(num_vertices=60), backend="reference", dtype=torch.float64,
                 joint_set="smpl24")
    aa = (torch.randn(3, 72, dtype=torch.float64) * 0.7).requires_grad_(True)
    betas = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)

    def f(aa, betas):
        return layer(betas=betas, global_orient=aa[:, :3], body_pose=aa[:, 3:], return_verts=False).joints

    assert torch.autograd.gradcheck(f, (aa, betas), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", [1.0, 3.1, 0.05, 1e-4, 1e-9, 0.0])
def test_rodrigues_fast_matches_rodrigues(scale):
    w = (torch.randn(5, 24, 3, dtype=torch.float64) * scale).requires_grad_(True)
    weights = torch.randn(5, 24, 3, 3, dtype=torch.float64)
    got, want = reference.rodrigues_fast(w), reference.rodrigues(w)
    assert torch.allclose(got, want, rtol=0, atol=1e-14)  # other formulas for a and b: equal to rounding
    g_got = torch.autograd.grad((got * weights).sum(), w)[0]
    g_want = torch.autograd.grad((want * weights).sum(), w)[0]
    assert torch.allclose(g_got, g_want, rtol=0, atol=1e-12)


def test_compiled_layer_matches_eager(mannequin_data, monkeypatch):
    """SMPL(compile=True): same values and gradients as eager, with and without vertices, and
    with the vertex posing chunked (a batch over one chunk runs the chunks eagerly)."""
    monkeypatch.setattr(reference, "CHUNK_VERTEX_SAMPLES", 6890 * 2)
    eager = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64)
    compiled = SMPL(model_path=mannequin_data, backend="reference", dtype=torch.float64, compile=True)
    batch = 5
    kwargs = dict(betas=torch.randn(batch, 10, dtype=torch.float64),
                  body_pose=torch.randn(batch, 69, dtype=torch.float64) * 0.5,
                  transl=torch.randn(batch, 3, dtype=torch.float64))
    for return_verts in (True, False):
        inputs = {k: v.clone().requires_grad_(True) for k, v in kwargs.items()}
        want = eager(**inputs, return_verts=return_verts)
        got = compiled(**inputs, return_verts=return_verts)
        assert torch.allclose(got.joints, want.joints, rtol=0, atol=1e-12)
        if return_verts:
            assert torch.allclose(got.vertices, want.vertices, rtol=0, atol=1e-12)
        g_got = torch.autograd.grad(got.joints.square().sum(), list(inputs.values()))
        g_want = torch.autograd.grad(want.joints.square().sum(), list(inputs.values()))
        for a, b in zip(g_got, g_want):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_compile_runs_only_where_it_pays_and_matches_eager(mannequin_data, monkeypatch):
    """compile=True routes each call: compiled for small joints-only batches and the no-grad
    one-sample forward with vertices (unless the C loops of kernels/cpu run it), eager
    elsewhere (where eager measured faster)."""
    monkeypatch.setattr(cpu, "ENABLED", False)
    layer = SMPL(model_path=mannequin_data, backend="reference", compile=True)
    eager_fn = reference.smpl_forward
    assert layer._reference("smpl_forward", 8, False) is not eager_fn
    assert layer._reference("smpl_forward", 64, False) is eager_fn
    assert layer._reference("smpl_forward", 1, True) is eager_fn  # grad enabled: eager backward is faster
    with torch.no_grad():
        assert layer._reference("smpl_forward", 1, True) is not eager_fn
        assert layer._reference("smpl_forward", 2, True) is eager_fn
        kwargs = dict(betas=torch.randn(1, 10), body_pose=torch.randn(1, 69) * 0.5)
        got = layer(**kwargs)
        want = SMPL(model_path=mannequin_data, backend="reference")(**kwargs)
    torch.testing.assert_close(got.vertices, want.vertices, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.joints, want.joints, atol=1e-5, rtol=1e-5)
    assert SMPL(model_path=mannequin_data, backend="reference")._reference("smpl_forward", 1, False) is eager_fn
    monkeypatch.setattr(cpu, "ENABLED", True)
    if cpu.usable(layer.v_template):
        with torch.no_grad():
            assert layer._reference("smpl_forward", 1, True) is eager_fn
