"""HMR model: encoder, IEF regressor, discriminator, the SMPL switch, checkpoints."""
import os
import re

import numpy as np
import pytest
import torch
import torchvision

from hmr_fast.body import SMPL
from hmr_fast.camera import project_weak_perspective
from hmr_fast.model import (HMR, Discriminator, Encoder, IEFRegressor, initial_theta, load_checkpoint,
                            lsgan_discriminator_loss, lsgan_generator_loss, read_checkpoint, save_checkpoint)
from hmr_fast.model import checkpoint as ckpt_lib
from hmr_fast.rotations import rodrigues

CONFIG = {"model": dict(backbone="resnet18", pose_repr="axis_angle", ief_iters=3, img_size=64, joint_set="hmr19",
                        dropout=0.5, smpl_model=None, smpl_backend="reference", pretrained=None)}


@pytest.fixture(scope="module")
def smpl():
    return SMPL(joint_set="hmr19", backend="reference")


@pytest.fixture(scope="module")
def model(smpl):
    torch.manual_seed(0)
    return HMR(backbone="resnet18", smpl=smpl).eval()


def test_hmr_output_shapes(model):
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    assert out.rot_mats.shape == (2, 24, 3, 3) and out.betas.shape == (2, 10) and out.cam.shape == (2, 3)
    assert out.joints3d.shape == (2, 19, 3) and out.keypoints2d.shape == (2, 19, 2)
    assert out.vertices is None
    assert len(out.thetas) == 3 and out.thetas[0].shape == (2, 85)
    assert out.iter_rot_mats.shape == (3, 2, 24, 3, 3) and out.iter_betas.shape == (3, 2, 10)
    with_verts = model(images, return_verts=True)
    assert with_verts.vertices.shape == (2, 6890, 3)
    # the full-mesh path and the joints-only path agree
    torch.testing.assert_close(with_verts.joints3d, out.joints3d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_verts.keypoints2d, out.keypoints2d, atol=1e-5, rtol=1e-5)
    # keypoints are the weak-perspective projection of the joints
    torch.testing.assert_close(out.keypoints2d, project_weak_perspective(out.joints3d, out.cam))


def test_starts_from_an_upright_mean_body(model):
    out = model(torch.randn(3, 3, 64, 64))
    assert torch.allclose(out.cam[:, 0], torch.full((3,), 0.9), atol=0.05)
    kp = out.keypoints2d
    # image y grows downward: the head top (13) is above the ankles (0, 5); the person faces
    # the camera, so their right hip (2) is on the image's left of their left hip (3)
    assert (kp[:, 13, 1] < kp[:, 0, 1]).all() and (kp[:, 13, 1] < kp[:, 5, 1]).all()
    assert (kp[:, 2, 0] < kp[:, 3, 0]).all()


def test_6d_mean_is_the_same_upright_rotation():
    aa, six = initial_theta("axis_angle"), initial_theta("6d")
    assert aa.shape == (85,) and six.shape == (157,)
    reg_aa, reg_6d = IEFRegressor(8, "axis_angle"), IEFRegressor(8, "6d")
    _, R_aa, _ = reg_aa.split(aa[None])
    _, R_6d, _ = reg_6d.split(six[None])
    torch.testing.assert_close(R_aa, R_6d, atol=1e-6, rtol=0)
    torch.testing.assert_close(R_aa[0, 0], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6, rtol=0)


def test_ief_step_adds_a_correction_to_theta():
    reg = IEFRegressor(16, "axis_angle", iterations=3).eval()
    feats = torch.randn(4, 16)
    thetas = reg(feats)
    # each iteration starts where the previous one ended
    torch.testing.assert_close(thetas[1], reg.ief_step(feats, thetas[0]))
    torch.testing.assert_close(thetas[0], reg.ief_step(feats, reg.mean_theta.expand(4, -1)))
    # the last layer starts small (Xavier gain 0.01): the first step barely moves theta
    assert (thetas[0] - reg.mean_theta).abs().max() < 0.05
    assert reg.mean_theta.requires_grad


def test_regressor_architecture_matches_hmr():
    reg = IEFRegressor(2048)
    assert reg.fc1.in_features == 2048 + 85 and reg.fc1.out_features == 1024
    assert reg.fc2.out_features == 1024 and reg.decoder.out_features == 85
    assert reg.drop1.p == 0.5 and reg.drop2.p == 0.5


def test_encoder_feature_sizes_and_unknown_backbone():
    assert Encoder("resnet18").eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)
    assert Encoder("resnet50").feature_dim == 2048
    with pytest.raises(ValueError, match="backbone"):
        Encoder("vgg16")


def test_encoder_loads_a_local_torchvision_checkpoint(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    enc = Encoder("resnet18", pretrained=tmp_path / "r18.pth")
    torch.testing.assert_close(enc.net.conv1.weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError, match="nothing"):
        Encoder("resnet18", pretrained=tmp_path / "missing.pth")


def test_smpl_switch_on_cpu_is_module_plus_projection(smpl):
    B = 3
    pose = torch.randn(B, 24, 3) * 0.3
    rot = rodrigues(pose)
    betas, cam = torch.randn(B, 10), torch.tensor([[0.9, 0.1, -0.2]] * B)
    joints, kp = smpl.joints_projected(betas, rot, cam, "hmr19")
    expected = smpl(betas=betas, global_orient=pose[:, 0], body_pose=pose[:, 1:].flatten(1), joint_set="hmr19").joints
    torch.testing.assert_close(joints, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kp, cam[:, None, :1] * (expected[..., :2] + cam[:, None, 1:]), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------
def test_discriminator_shapes_and_gradients():
    D = Discriminator()
    rot = rodrigues(torch.randn(5, 23, 3) * 0.5).requires_grad_()
    betas = torch.randn(5, 10, requires_grad=True)
    scores = D(rot, betas)
    assert scores.shape == (5, 25)
    scores.sum().backward()
    assert rot.grad.abs().sum() > 0 and betas.grad.abs().sum() > 0
    for name, p in D.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_discriminator_heads_are_factorised():
    """Per-joint score j reads only joint j; the shape score reads only the betas."""
    torch.manual_seed(0)
    D = Discriminator().eval()
    rot = rodrigues(torch.randn(2, 23, 3) * 0.5)
    betas = torch.randn(2, 10)
    base = D(rot, betas)
    moved = rot.clone()
    moved[:, 7] = rodrigues(torch.tensor([[0.0, 1.2, 0.3]]))
    changed = D(moved, betas) - base
    assert changed[:, 7].abs().min() > 0  # joint 7's own score
    assert changed[:, 23].abs().min() > 0  # the all-joints score
    others = [j for j in range(23) if j != 7] + [24]
    assert changed[:, others].abs().max() == 0
    shape_only = D(rot, betas + 1) - base
    assert shape_only[:, :24].abs().max() == 0 and shape_only[:, 24].abs().min() > 0


def test_lsgan_losses_hand_computed():
    real = torch.tensor([[1.0, 0.0], [0.5, 1.0]])  # (B=2, 2 scores)
    fake = torch.tensor([[0.0, 0.0], [1.0, 0.5]])
    d_real, d_fake = lsgan_discriminator_loss(real, fake)
    # real: rows sum (0 + 1) and (0.25 + 0) -> mean 0.625; fake: 0 and 1.25 -> 0.625
    assert d_real.item() == pytest.approx(0.625) and d_fake.item() == pytest.approx(0.625)
    # generator: (1 + 1) and (0 + 0.25) -> mean 1.125
    assert lsgan_generator_loss(fake).item() == pytest.approx(1.125)


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------
def test_checkpoint_round_trip_with_weights_only(model, smpl, tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, CONFIG, step=12, extra={"note": "x", "values": [1, 2.5]})
    raw = torch.load(path, weights_only=True)  # plain contents only
    assert raw["step"] == 12 and raw["config"] == CONFIG
    assert not any(k.startswith("smpl.") for k in raw["model"])  # the body model is not copied
    loaded, config = load_checkpoint(path, smpl=smpl)
    assert config == CONFIG and not loaded.training
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(images).joints3d, model(images).joints3d)


def test_weights_that_do_not_fit_name_the_misfits(model, smpl, tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, CONFIG)
    raw = torch.load(path, weights_only=True)
    key = next(k for k, v in raw["model"].items() if v.ndim == 2)
    cases = {"missing": (key, {k: v for k, v in raw["model"].items() if k != key}),
             "other shapes": (key, {**raw["model"], key: raw["model"][key][:, :1]}),
             "unexpected": ("extra.weight", {**raw["model"], "extra.weight": torch.zeros(1)})}
    for misfit, (named, weights) in cases.items():
        torch.save({**raw, "model": weights}, path)
        with pytest.raises(ValueError, match="weights do not fit.*" + re.escape(f"{misfit} ['{named}']")):
            load_checkpoint(path, smpl=smpl)


def test_checkpoint_write_is_atomic(model, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, CONFIG, step=1)
    good = path.read_bytes()

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_lib.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, CONFIG, step=2)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_read_checkpoint_rejects_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an hmr_fast checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "hmr_fast.checkpoint/1", "config": {}, "model": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|unsupported"):
        read_checkpoint(tmp_path / "evil.pt")


def test_model_runs_under_bf16_autocast(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert out.joints3d.dtype == torch.float32  # SMPL stays in float32
    assert np.isfinite(out.keypoints2d.detach().numpy()).all()


def test_theta_stays_float32_under_autocast():
    reg = IEFRegressor(16).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        thetas = reg(torch.randn(2, 16))
    assert all(t.dtype == torch.float32 for t in thetas)
    # the upright root (pi) survives exactly enough to matter
    assert (thetas[-1][:, 3] - torch.pi).abs().max() < 0.05


def test_smpl_is_the_one_place_the_backend_is_chosen(smpl, monkeypatch):
    """auto: the fused kernels for CUDA inputs when Triton is usable there, else the
    reference; joints_projected runs whichever _resolve_backend chose."""
    import hmr_fast.kernels as kernels

    calls = []

    def fake(*args):
        calls.append(args)
        return "joints", "keypoints", "rot"

    monkeypatch.setattr(kernels, "smpl_joints_projected", fake)
    monkeypatch.setattr(kernels, "triton_usable", lambda device: (True, ""))
    auto = SMPL(joint_set="hmr19", backend="auto")
    assert auto._resolve_backend(torch.device("cuda")) == "triton"
    assert auto._resolve_backend(torch.device("cpu")) == "reference"
    assert smpl._resolve_backend(torch.device("cuda")) == "reference"  # backend="reference" asked for
    B = 2
    rot, betas, cam = rodrigues(torch.randn(B, 24, 3) * 0.3), torch.randn(B, 10), torch.rand(B, 3)
    joints, kp = auto.joints_projected(betas, rot, cam)  # CPU tensors: the reference, not the fake
    assert not calls and joints.shape == (B, 19, 3) and kp.shape == (B, 19, 2)
    assert SMPL(joint_set="hmr19", backend="triton").joints_projected(betas, rot, cam) == ("joints", "keypoints")
    assert len(calls) == 1 and calls[0][2].shape == (B, 24 * 9) and calls[0][3] is None
    monkeypatch.setattr(kernels, "triton_usable", lambda device: (False, "no GPU"))
    assert auto._resolve_backend(torch.device("cuda")) == "reference"
    with pytest.raises(RuntimeError, match="no GPU"):
        SMPL(joint_set="hmr19", backend="triton").joints_projected(betas, rot, cam)


def test_fused_kernel_call_matches_the_module_path(smpl):
    """The arguments the switch passes to hmr_fast.kernels.smpl_joints_projected (flat
    rotation matrices, no translation, pose2rot=False) give the module path's results; run
    here on CPU tensors under Triton's interpreter."""
    kernels = pytest.importorskip("hmr_fast.kernels")
    if not hasattr(kernels, "smpl_joints_projected"):
        pytest.skip("hmr_fast.kernels has no smpl_joints_projected here")
    B = 2
    rot = rodrigues(torch.randn(B, 24, 3) * 0.3)
    betas, cam = torch.randn(B, 10), torch.tensor([[0.9, 0.1, -0.2]] * B)
    joints, kp, _ = kernels.smpl_joints_projected(smpl, betas, rot.reshape(B, -1), None, cam, False, "hmr19")
    expected_joints, expected_kp = smpl.joints_projected(betas, rot, cam, "hmr19")
    torch.testing.assert_close(joints, expected_joints, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kp, expected_kp, atol=1e-5, rtol=1e-5)


def test_smplx_layer_matches_hmr_fast_smpl(smpl):
    """The baseline of the throughput comparison computes the same joints (smplx's layer on
    the mannequin file, our joint-set rows on its vertices)."""
    pytest.importorskip("smplx")
    from hmr_fast.body.smplx_layer import SmplxLayer

    layer = SmplxLayer(joint_set="hmr19")
    assert not any(p.requires_grad for p in layer.parameters())
    rot = rodrigues(torch.randn(2, 24, 3) * 0.3)
    betas, cam = torch.randn(2, 10), torch.tensor([[0.9, 0.0, 0.1]] * 2)
    joints, kp = layer.joints_projected(betas, rot, cam, "hmr19")
    expected, expected_kp = smpl.joints_projected(betas, rot, cam, "hmr19")
    torch.testing.assert_close(joints, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kp, expected_kp, atol=1e-4, rtol=1e-4)
