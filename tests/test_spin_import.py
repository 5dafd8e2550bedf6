"""`hmr-fast import spin`: SPIN's released checkpoint, read safely, gives SPIN's numbers.

The test writes a file in SPIN's layout (models/hmr.py's state dict with seeded random
weights, beside an optimizer and counters, in torch's legacy and zip formats) and holds
hmr_fast's model against a forward written here from SPIN's published architecture with
plain torch.nn.functional: not our encoder, regressor or rotation code, not torchvision.
"""
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from hmr_fast.cli import main as cli_main
from hmr_fast.errors import CheckpointError
from hmr_fast.model import load_checkpoint
from hmr_fast.model.importers import import_checkpoint

LAYERS = (("layer1", 64, 3, 1), ("layer2", 128, 4, 2), ("layer3", 256, 6, 2), ("layer4", 512, 3, 2))


def _bn(state, prefix, channels, g):
    state[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(channels, generator=g)
    state[f"{prefix}.bias"] = 0.1 * torch.randn(channels, generator=g)
    state[f"{prefix}.running_mean"] = 0.1 * torch.randn(channels, generator=g)
    state[f"{prefix}.running_var"] = 0.5 + torch.rand(channels, generator=g)
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def _conv(state, key, cout, cin, k, g):
    state[key] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5


def spin_state_dict(seed=0) -> dict:
    """SPIN's HMR state dict (models/hmr.py: ResNet-50 Bottleneck [3, 4, 6, 3], fc1, fc2,
    decpose, decshape, deccam, init_*), seeded random weights."""
    g = torch.Generator().manual_seed(seed)
    s = {}
    _conv(s, "conv1.weight", 64, 3, 7, g)
    _bn(s, "bn1", 64, g)
    inplanes = 64
    for name, planes, blocks, _stride in LAYERS:
        for b in range(blocks):
            p = f"{name}.{b}"
            _conv(s, f"{p}.conv1.weight", planes, inplanes, 1, g)
            _bn(s, f"{p}.bn1", planes, g)
            _conv(s, f"{p}.conv2.weight", planes, planes, 3, g)
            _bn(s, f"{p}.bn2", planes, g)
            _conv(s, f"{p}.conv3.weight", planes * 4, planes, 1, g)
            _bn(s, f"{p}.bn3", planes * 4, g)
            # the last BN of each block small, as a trained ResNet's are: activations stay finite
            s[f"{p}.bn3.weight"] *= 0.2
            if b == 0:
                _conv(s, f"{p}.downsample.0.weight", planes * 4, inplanes, 1, g)
                _bn(s, f"{p}.downsample.1", planes * 4, g)
            inplanes = planes * 4
    for name, (cout, cin) in {"fc1": (1024, 2048 + 157), "fc2": (1024, 1024), "decpose": (144, 1024),
                              "decshape": (10, 1024), "deccam": (3, 1024)}.items():
        s[f"{name}.weight"] = torch.randn(cout, cin, generator=g) * (1.0 / cin) ** 0.5
        s[f"{name}.bias"] = 0.05 * torch.randn(cout, generator=g)
    # smpl_mean_params-like starting point: near-identity 6D per joint, small shape, cam s=0.9
    s["init_pose"] = (torch.tensor([1.0, 0, 0, 1, 0, 0]).repeat(24) + 0.1 * torch.randn(144, generator=g))[None]
    s["init_shape"] = 0.1 * torch.randn(1, 10, generator=g)
    s["init_cam"] = torch.tensor([[0.9, 0.0, 0.0]])
    return s


def write_spin_checkpoint(path, state, legacy=True):
    """What SPIN's CheckpointSaver writes: model, optimizer and counters."""
    payload = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1]}]},
               "epoch": 7, "batch_idx": 123, "batch_size": 64, "dataset_perm": torch.randperm(10),
               "total_step_count": 50000}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


# ------------------------------------------------------------- SPIN's forward, written out
def _bn_f(x, s, p):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                        training=False, eps=1e-5)


def spin_forward(s, x, n_iter=3):
    """SPIN's HMR.forward (models/hmr.py) on state dict `s`: (pred_rotmat, pred_shape, pred_cam)."""
    x = F.relu(_bn_f(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for name, _planes, blocks, stride in LAYERS:
        for b in range(blocks):
            p = f"{name}.{b}"
            st = stride if b == 0 else 1
            out = F.relu(_bn_f(F.conv2d(x, s[f"{p}.conv1.weight"]), s, f"{p}.bn1"))
            out = F.relu(_bn_f(F.conv2d(out, s[f"{p}.conv2.weight"], stride=st, padding=1), s, f"{p}.bn2"))
            out = _bn_f(F.conv2d(out, s[f"{p}.conv3.weight"]), s, f"{p}.bn3")
            residual = x if b else _bn_f(F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=st), s,
                                         f"{p}.downsample.1")
            x = F.relu(out + residual)
    xf = F.avg_pool2d(x, 7, stride=1).flatten(1)  # SPIN's nn.AvgPool2d(7, stride=1)
    B = xf.shape[0]
    pose, shape, cam = (s[k].expand(B, -1) for k in ("init_pose", "init_shape", "init_cam"))
    for _ in range(n_iter):
        xc = torch.cat([xf, pose, shape, cam], 1)
        xc = F.linear(xc, s["fc1.weight"], s["fc1.bias"])  # then drop1 (identity in eval), no ReLU
        xc = F.linear(xc, s["fc2.weight"], s["fc2.bias"])
        pose = F.linear(xc, s["decpose.weight"], s["decpose.bias"]) + pose
        shape = F.linear(xc, s["decshape.weight"], s["decshape.bias"]) + shape
        cam = F.linear(xc, s["deccam.weight"], s["deccam.bias"]) + cam
    # SPIN's utils/geometry.rot6d_to_rotmat
    a = pose.reshape(-1, 3, 2)
    a1, a2 = a[:, :, 0], a[:, :, 1]
    b1 = F.normalize(a1)
    b2 = F.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
    b3 = torch.cross(b1, b2, dim=1)
    return torch.stack((b1, b2, b3), dim=-1).view(B, 24, 3, 3), shape, cam


@pytest.fixture(scope="module")
def spin_file(tmp_path_factory):
    state = spin_state_dict(0)
    return state, write_spin_checkpoint(tmp_path_factory.mktemp("spin") / "model_checkpoint.pt", state)


@pytest.fixture(scope="module")
def imported(spin_file, tmp_path_factory):
    _state, path = spin_file
    out = tmp_path_factory.mktemp("imported") / "spin.pt"
    assert cli_main(["import", "spin", str(path), "--out", str(out)]) == 0
    return out


def test_imported_model_gives_spins_outputs(spin_file, imported):
    state, _ = spin_file
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rotmat, shape, cam = spin_forward(state, images)
        model, config = load_checkpoint(imported)
        out = model(images)
    assert config["model"]["regressor"] == "spin" and config["model"]["pose_repr"] == "6d"
    assert config["model"]["ief_iters"] == 3 and config["model"]["img_size"] == 224
    # the reference's outputs move: the comparison can fail
    assert (rotmat[0] - rotmat[1]).abs().max() > 1e-3 and (cam[0] - cam[1]).abs().max() > 1e-4
    assert (shape - state["init_shape"]).abs().max() > 1e-3
    torch.testing.assert_close(out.rot_mats, rotmat, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.betas, shape, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.cam, cam, atol=2e-5, rtol=1e-4)
    # proper rotations
    eye = torch.eye(3).expand(2, 24, 3, 3)
    torch.testing.assert_close(out.rot_mats @ out.rot_mats.transpose(-1, -2), eye, atol=1e-5, rtol=0)


def test_zip_format_and_wrapped_keys_import_the_same(spin_file, imported, tmp_path):
    state, _ = spin_file
    wrapped = {f"module.{k}": v for k, v in state.items()}  # saved from DataParallel
    path = write_spin_checkpoint(tmp_path / "zip.pt", wrapped, legacy=False)
    out = import_checkpoint("spin", path, tmp_path / "c.pt")
    a, _ = load_checkpoint(out)
    b, _ = load_checkpoint(imported)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_imported_checkpoint_fine_tunes_under_spin_wiring(imported):
    from hmr_fast.model.checkpoint import read_checkpoint
    ckpt = read_checkpoint(imported)
    assert ckpt["format"].startswith("hmr_fast")
    assert "regressor.decpose.weight" in ckpt["model"] and "regressor.init_pose" in ckpt["model"]
    assert "optimizer" not in ckpt and ckpt["config"]["imported"]["source"] == "spin"


def _one_line_error(path, tmp_path):
    with pytest.raises((CheckpointError, FileNotFoundError)) as info:
        import_checkpoint("spin", path, tmp_path / "out.pt")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert not (tmp_path / "out.pt").exists()
    return message


def test_malformed_files_give_one_line(spin_file, tmp_path):
    state, _ = spin_file
    no_decpose = {k: v for k, v in state.items() if not k.startswith("decpose")}
    assert "decpose.weight" in _one_line_error(write_spin_checkpoint(tmp_path / "a.pt", no_decpose), tmp_path)
    hmr_like = {**state, "decpose.weight": torch.zeros(72, 1024), "decpose.bias": torch.zeros(72)}
    assert "decpose.weight has shape (72, 1024)" in _one_line_error(
        write_spin_checkpoint(tmp_path / "b.pt", hmr_like), tmp_path)
    no_backbone = {k: v for k, v in state.items() if not k.startswith("layer")}
    assert "layer4" in _one_line_error(write_spin_checkpoint(tmp_path / "c.pt", no_backbone), tmp_path)
    torch.save({"optimizer": {}, "epoch": 1}, tmp_path / "d.pt")
    assert "no 'model' entry" in _one_line_error(tmp_path / "d.pt", tmp_path)
    (tmp_path / "e.pt").write_bytes(os.urandom(300))
    assert "not a zip archive" in _one_line_error(tmp_path / "e.pt", tmp_path)
    assert "not found" in _one_line_error(tmp_path / "missing.pt", tmp_path)


def test_our_own_checkpoint_is_named_as_such(imported, tmp_path):
    assert "hmr_fast checkpoint" in _one_line_error(imported, tmp_path)


class _Boom:
    def __reduce__(self):
        return (open, (str(_Boom.marker), "w"))


@pytest.mark.parametrize("legacy", [True, False])
def test_a_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path, legacy):
    _Boom.marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": _Boom()}}, path, _use_new_zipfile_serialization=not legacy)
    assert not _Boom.marker.exists()
    message = _one_line_error(path, tmp_path)
    assert "nothing from the file ran" in message
    assert not _Boom.marker.exists()
    with open(tmp_path / "bare.pt", "wb") as f:
        pickle.dump({"model": _Boom()}, f)
    assert "refused unread" in _one_line_error(tmp_path / "bare.pt", tmp_path)
    assert not _Boom.marker.exists()


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("not a checkpoint\n")
    assert cli_main(["import", "spin", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hmr-fast import:") and "\n" not in err and "text file" in err
