"""`hmr-fast eval --dataset`: SPIN's evaluation files, read and scored as SPIN's eval.py does.

The tests write SPIN's evaluation npz files (and images), and a stand-in network whose
predictions are chosen per sample, so each figure is known by construction: rigid
offsets and rotations, bodies scaled about their pelvis, left and right joints swapped;
every expected number is computed here with numpy, not with hmr_fast.metrics.
"""
import dataclasses
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_smplx_model_dir
from hmr_fast import SMPL
from hmr_fast.cli import main as cli_main
from hmr_fast.errors import DataError
from hmr_fast.rotations import rodrigues
from hmr_fast.training import spin_eval
from hmr_fast.training.spin_eval import evaluate_spin_benchmark, joint_errors

# SPIN's preprocessing (datasets/preprocess/h36m.py): H36M's 17 joints -> its 24-joint order
GLOBAL_IDX = [14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6]
# the 14 LSP joints among H36M's 17, and their left/right mirror within the 14
LSP_SWAP = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13]


# ------------------------------------------------------------------- independent numpy
def np_procrustes(x, y):
    """x (J, 3) aligned to y by the similarity transform (Umeyama; no reflection)."""
    mx, my = x.mean(0), y.mean(0)
    X, Y = x - mx, y - my
    U, S, Vt = np.linalg.svd(Y.T @ X)
    D = np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / (X ** 2).sum()
    return s * X @ R.T + my


def np_errors(pred, gt):
    e = np.linalg.norm(pred - gt, axis=-1).mean(-1) * 1000
    pa = np.array([np.linalg.norm(np_procrustes(p, g) - g, axis=-1).mean() for p, g in zip(pred, gt)]) * 1000
    return e, pa


def rot_z(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def test_joint_errors_against_numpy():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(4, 14, 3)) * 0.3
    cases = {
        "offset": gt + np.array([0.03, -0.04, 0.0]),  # MPJPE 50 mm, PA 0
        "scaled": gt * 1.2,  # MPJPE 0.2 * mean |g|, PA 0
        "rotated": gt @ rot_z(30).T,  # PA 0
        "swapped": gt[:, LSP_SWAP],  # left/right exchanged: PA > 0
    }
    for name, pred in cases.items():
        out = joint_errors(torch.as_tensor(pred), torch.as_tensor(gt))
        e, pa = np_errors(pred, gt)
        np.testing.assert_allclose(out["mpjpe_mm"], e, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(out["pa_mpjpe_mm"], pa, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(joint_errors(torch.as_tensor(cases["offset"]), torch.as_tensor(gt))["mpjpe_mm"], 50.0)
    np.testing.assert_allclose(joint_errors(torch.as_tensor(cases["scaled"]), torch.as_tensor(gt))["pa_mpjpe_mm"], 0,
                               atol=1e-7)
    assert (joint_errors(torch.as_tensor(cases["swapped"]), torch.as_tensor(gt))["pa_mpjpe_mm"] > 1).all()


def test_pck_and_auc_against_counting():
    gt = np.zeros((1, 17, 3))
    dist = np.linspace(0.0, 0.2, 17)  # joint j is dist[j] metres off
    pred = gt.copy()
    pred[0, :, 0] = dist
    out = joint_errors(torch.as_tensor(pred), torch.as_tensor(gt), pck=True)
    np.testing.assert_allclose(out["pck150"], [np.mean(dist < 0.150)])
    thresholds = np.arange(0, 151, 5) / 1000
    assert len(thresholds) == 31
    np.testing.assert_allclose(out["auc"], [np.mean([np.mean(dist < t) for t in thresholds])])


# ------------------------------------------------------------------- files in SPIN's layout
class Planned(nn.Module):
    """A stand-in network: the SMPL parameters planned for each sample, in loader order; a
    mirrored crop (detected by its pixels) gets the mirrored body."""

    def __init__(self, smpl, rot_mats, betas, crops):
        super().__init__()
        self.smpl, self.rot_mats, self.betas, self.crops = smpl, rot_mats, betas, crops
        self.next = 0

    def forward(self, images):
        B = images.shape[0]
        mirrored = torch.equal(images, torch.flip(self.crops[self.next - B:self.next], dims=[3])) if self.next else False
        if mirrored:
            sl = slice(self.next - B, self.next)
            return SimpleNamespace(rot_mats=spin_eval.unflip_rotations(self.rot_mats[sl]), betas=self.betas[sl])
        assert torch.equal(images, self.crops[self.next:self.next + B])
        sl = slice(self.next, self.next + B)
        self.next += B
        return SimpleNamespace(rot_mats=self.rot_mats[sl], betas=self.betas[sl])


def write_images(root, n, rng):
    import cv2
    names = []
    os.makedirs(root / "images", exist_ok=True)
    for i in range(n):
        name = f"images/S9_Walking.5461_{i:06d}.png"
        cv2.imwrite(str(root / name), rng.integers(0, 255, size=(80, 60, 3), dtype=np.uint8))
        names.append(name)
    return np.array(names)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mannequin_data):
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("h36m")
    extras = tmp_path_factory.mktemp("spin_data")
    (extras / "dataset_extras").mkdir()
    reg = rng.random((17, 6890)) * (rng.random((17, 6890)) < 0.002)
    reg /= reg.sum(1, keepdims=True)  # rows sum to 1, as SPIN's: a translation moves every joint by it
    np.save(extras / "J_regressor_h36m.npy", reg)
    smpl = SMPL(backend="reference")  # the mannequin
    n = 4
    pose = torch.as_tensor(rng.normal(size=(n, 24, 3)) * 0.2, dtype=torch.float32)
    betas = torch.as_tensor(rng.normal(size=(n, 10)) * 0.5, dtype=torch.float32)
    rot = rodrigues(pose)
    with torch.no_grad():
        verts, _ = smpl.pose_body(betas, rot, True, None)
    gt17 = np.einsum("jv,bvc->bjc", reg, verts.double().numpy())
    imgname = write_images(root, n, rng)
    center = rng.uniform(20, 40, size=(n, 2))
    scale = rng.uniform(0.2, 0.4, size=n)
    return SimpleNamespace(root=root, extras=extras, reg=reg, smpl=smpl, pose=pose, betas=betas, rot=rot,
                           verts=verts, gt17=gt17, imgname=imgname, center=center, scale=scale, n=n, rng=rng)


def crops_of(s):
    ds = spin_eval.EvalCrops({"imgname": s.imgname, "center": s.center, "scale": s.scale}, s.root, "x")
    from hmr_fast.camera import normalise_images
    return normalise_images(torch.stack([ds[i][0] for i in range(len(ds))]))


def write_h36m(s, name="h36m_valid_protocol1.npz", offset=(0, 0, 0), joints17=None):
    gt17 = s.gt17 if joints17 is None else joints17
    S = np.zeros((s.n, 24, 4))
    S[:, GLOBAL_IDX, :3] = gt17 - gt17[:, :1] + np.asarray(offset)
    S[:, GLOBAL_IDX, 3] = 1
    os.makedirs(s.extras / "dataset_extras", exist_ok=True)
    np.savez(s.extras / "dataset_extras" / name, imgname=s.imgname, center=s.center, scale=s.scale, S=S)


def run(s, name, rot, betas, flip=False, **kw):
    model = Planned(s.smpl, rot, betas, crops_of(s))
    return evaluate_spin_benchmark(model, name, s.root, extras=s.extras, batch_size=3, workers=0, flip=flip, **kw)


def centred14(j17):
    mapper = [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10]
    return j17[:, mapper] - j17[:, :1]


def test_h36m_exact_prediction_scores_zero_and_offsets_score_their_length(setup):
    s = setup
    write_h36m(s)
    summary, per = run(s, "h36m-p1", s.rot, s.betas)
    np.testing.assert_allclose(per["mpjpe_mm"], 0, atol=1e-3)
    np.testing.assert_allclose(per["pa_mpjpe_mm"], 0, atol=1e-3)
    assert summary["samples"] == 4 and list(per["imgname"]) == list(s.imgname)
    # the ground truth stored 30 mm, 40 mm off the pelvis (SPIN does not re-centre it): 50 mm
    write_h36m(s, "h36m_valid_protocol2.npz", offset=(0.03, 0.0, -0.04))
    summary, per = run(s, "h36m-p2", s.rot, s.betas)
    np.testing.assert_allclose(per["mpjpe_mm"], 50.0, atol=1e-3)
    np.testing.assert_allclose(per["pa_mpjpe_mm"], 0, atol=1e-3)


def test_h36m_rotated_body_against_numpy(setup):
    s = setup
    write_h36m(s)
    R = torch.as_tensor(rot_z(25) @ np.array([[1, 0, 0], [0, np.cos(.3), -np.sin(.3)], [0, np.sin(.3), np.cos(.3)]]),
                        dtype=torch.float32)
    rot = s.rot.clone()
    rot[:, 0] = R @ rot[:, 0]  # the whole body turned about its root: a rigid motion of every vertex
    summary, per = run(s, "h36m-p1", rot, s.betas)
    gt = centred14(s.gt17)
    pred = gt @ R.double().numpy().T  # the regressor's rows sum to 1: joints turn with the vertices
    e, pa = np_errors(pred, gt)
    assert e.min() > 10
    np.testing.assert_allclose(per["mpjpe_mm"], e, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(per["pa_mpjpe_mm"], pa, atol=1e-3)
    np.testing.assert_allclose(summary["mpjpe_mm"], e.mean(), rtol=1e-4)


def test_h36m_swapped_sides_in_the_ground_truth(setup):
    s = setup
    swapped = s.gt17[:, [0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 11, 12, 13]]  # H36M left <-> right
    write_h36m(s, joints17=swapped)
    summary, per = run(s, "h36m-p1", s.rot, s.betas)
    e, pa = np_errors(centred14(s.gt17), centred14(swapped))
    assert pa.min() > 1
    np.testing.assert_allclose(per["mpjpe_mm"], e, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(per["pa_mpjpe_mm"], pa, rtol=1e-4, atol=1e-3)


def test_flip_test_of_a_mirror_consistent_network_changes_nothing(setup):
    s = setup
    write_h36m(s)
    _, plain = run(s, "h36m-p1", s.rot, s.betas)
    _, flipped = run(s, "h36m-p1", s.rot, s.betas, flip=True)
    np.testing.assert_allclose(flipped["mpjpe_mm"], plain["mpjpe_mm"], atol=1e-3)


def test_mpi_inf_3dhp_pck_auc_17_joints(setup):
    s = setup
    gt17 = s.gt17 - s.gt17[:, :1]
    S = np.zeros((s.n, 24, 4))
    S[:, GLOBAL_IDX, :3] = gt17 + np.array([0.122, 0.0, 0.0])  # every joint 122 mm off: PCK@150 1, AUC known
    S[:, GLOBAL_IDX, 3] = 1
    np.savez(s.extras / "dataset_extras" / "mpi_inf_3dhp_test.npz", imgname=s.imgname, center=s.center,
             scale=s.scale, S=S, part=np.zeros((s.n, 24, 3)))
    summary, per = run(s, "mpi-inf-3dhp", s.rot, s.betas)
    np.testing.assert_allclose(per["mpjpe_mm"], 122.0, atol=1e-3)
    np.testing.assert_allclose(per["pck150"], 1.0)
    thresholds = np.arange(0, 151, 5)
    np.testing.assert_allclose(per["auc"], np.mean(122.0 < thresholds), atol=1e-9)  # 6/31: 125..150 mm
    np.testing.assert_allclose(per["pa_pck150"], 1.0)
    np.testing.assert_allclose(per["pa_auc"], 30 / 31)  # aligned: 0 error, counted from 5 mm on


def test_3dpw_gendered_ground_truth(tmp_path, setup, mannequin_data):
    s = setup
    smpl_dir = tmp_path / "models"
    write_smplx_model_dir(mannequin_data, smpl_dir)
    shutil.copy(smpl_dir / "smpl" / "SMPL_NEUTRAL.pkl", smpl_dir / "smpl" / "SMPL_MALE.pkl")
    big = dataclasses.replace(mannequin_data, v_template=mannequin_data.v_template * 1.1,
                              shapedirs=mannequin_data.shapedirs * 1.1, posedirs=mannequin_data.posedirs * 1.1)
    write_smplx_model_dir(big, tmp_path / "big")
    shutil.copy(tmp_path / "big" / "smpl" / "SMPL_NEUTRAL.pkl", smpl_dir / "smpl" / "SMPL_FEMALE.pkl")
    gender = np.array(["m", "f", "m", "f"])
    np.savez(s.extras / "dataset_extras" / "3dpw_test.npz", imgname=s.imgname, center=s.center, scale=s.scale,
             pose=s.pose.reshape(s.n, 72).numpy(), shape=s.betas.numpy(), gender=gender)
    shutil.copy(s.extras / "J_regressor_h36m.npy", smpl_dir / "J_regressor_h36m.npy")
    summary, per = run(s, "3dpw", s.rot, s.betas, smpl_path=smpl_dir)
    g = centred14(s.gt17)
    expect = np.where(gender == "f", 0.1 * np.linalg.norm(g, axis=-1).mean(-1) * 1000, 0.0)  # 1.1x bodies
    assert expect.max() > 10
    np.testing.assert_allclose(per["mpjpe_mm"], expect, rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(per["pa_mpjpe_mm"], 0, atol=2e-3)


def test_missing_and_malformed_files_one_line(setup, tmp_path):
    s = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        evaluate_spin_benchmark(None, "h36m-p1", empty, extras=empty)
    msg = str(info.value)
    assert "h36m_valid_protocol1.npz" in msg and "data/dataset_extras" in msg and "\n" not in msg
    bad = tmp_path / "bad"
    (bad / "dataset_extras").mkdir(parents=True)
    np.savez(bad / "dataset_extras" / "h36m_valid_protocol1.npz", imgname=s.imgname, center=s.center, scale=s.scale)
    with pytest.raises(DataError, match="missing key 'S'") as info:
        evaluate_spin_benchmark(None, "h36m-p1", s.root, extras=bad)
    assert "\n" not in str(info.value)
    np.savez(bad / "dataset_extras" / "3dpw_test.npz", imgname=s.imgname, center=s.center, scale=s.scale,
             pose=np.zeros((4, 72)), shape=np.zeros((4, 10)), gender=np.array(["m", "x", "f", "m"]))
    with pytest.raises(DataError, match="'gender' must be 'm' or 'f'"):
        evaluate_spin_benchmark(None, "3dpw", s.root, extras=bad)
    np.savez(bad / "dataset_extras" / "h36m_valid_protocol2.npz", imgname=np.array(["a", "b"], dtype=object),
             center=np.zeros((2, 2)), scale=np.ones(2), S=np.zeros((2, 24, 4)))
    with pytest.raises(DataError, match="object array"):
        evaluate_spin_benchmark(None, "h36m-p2", s.root, extras=bad)
    # the npz is there but not the regressor
    write_h36m(s)
    noreg = tmp_path / "noreg"
    (noreg / "dataset_extras").mkdir(parents=True)
    shutil.copy(s.extras / "dataset_extras" / "h36m_valid_protocol1.npz", noreg / "dataset_extras")
    with pytest.raises(FileNotFoundError, match="J_regressor_h36m.npy not found .*data/J_regressor_h36m.npy"):
        evaluate_spin_benchmark(SimpleNamespace(smpl=s.smpl), "h36m-p1", s.root / "images", extras=noreg)


def test_cli_eval_dataset_runs_a_checkpoint(setup, tmp_path, capsys):
    from random_checkpoint import make_checkpoint
    s = setup
    write_h36m(s)
    ckpt = make_checkpoint(tmp_path / "c.pt", img_size=224)
    rc = cli_main(["eval", "--checkpoint", ckpt, "--dataset", "h36m-p1", "--root", str(s.root), "--extras",
                   str(s.extras), "--workers", "0", "--device", "cpu", "--per-sample", str(tmp_path / "e.csv")])
    out = capsys.readouterr().out
    assert rc == 0 and "MPJPE" in out and "Reconstruction Error" in out
    rows = (tmp_path / "e.csv").read_text().splitlines()
    assert rows[0].startswith("imgname,mpjpe_mm,pa_mpjpe_mm") and len(rows) == 5
    assert cli_main(["eval", "--checkpoint", ckpt, "--dataset", "h36m-p1"]) == 2
    assert "--root" in capsys.readouterr().err


def test_spin_crops_are_contrast_stretched_for_spin_weights():
    """SPIN's crops went through scipy 1.0's bytescale (min..max of the crop -> 0..255): the
    evaluation stretches crops so for a model with SPIN's regressor wiring (its config's
    `regressor`), not for others; `stretch` overrides either way."""
    from hmr_fast.training.spin_eval import stretch_contrast
    rng = np.random.default_rng(5)
    crop = rng.integers(40, 181, (224, 224, 3)).astype(np.uint8)
    crop[0, 0, 0], crop[1, 1, 1] = 40, 180
    out = stretch_contrast(crop)
    expect = np.rint((crop.astype(np.float64) - 40) * 255.0 / 140.0)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(out, expect.astype(np.uint8))
    flat = np.full((4, 4, 3), 7, np.uint8)
    np.testing.assert_array_equal(stretch_contrast(flat), np.zeros_like(flat))


def test_stretch_follows_the_regressor_wiring(setup, monkeypatch):
    class Seen(Exception):
        pass

    def crops(arrays, root, npz_path, stretch=False):
        raise Seen(stretch)  # the evaluation's crops are made here: stop with what they were asked
    monkeypatch.setattr(spin_eval, "EvalCrops", crops)
    s = setup
    write_h36m(s)
    for regressor, stretch, expect in (("spin", None, True), ("hmr", None, False), ("spin", False, False),
                                       ("hmr", True, True)):
        model = SimpleNamespace(smpl=s.smpl, config={"regressor": regressor})
        with pytest.raises(Seen) as seen:
            evaluate_spin_benchmark(model, "h36m-p1", s.root, extras=s.extras, workers=0, stretch=stretch)
        assert seen.value.args[0] is expect, (regressor, stretch)
