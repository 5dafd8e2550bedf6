"""The built-in mannequin: an SMPL-format body that must look and behave like a person.

Expected values come from human anatomy, SMPL's conventions and the official file format,
never from the mannequin's own output; smplx is the independent reader of the file.
"""
import os
import pickle
import pickletools
import threading

import numpy as np
import pytest
import scipy.sparse

from hmr_fast.body import mannequin as mq
from hmr_fast.body.model_data import SMPL_JOINT_NAMES, SMPL_PARENTS

J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}
# smplx's vertex_ids["smplh"] (smplx/vertex_ids.py) and HMR's head-top vertex, written out
# here rather than imported so that the test holds the mannequin to the published ids.
IDS = dict(nose=332, reye=6260, leye=2800, rear=4071, lear=583, rthumb=6191, rindex=5782,
           rmiddle=5905, rring=6016, rpinky=6133, lthumb=2746, lindex=2319, lmiddle=2445,
           lring=2556, lpinky=2673, LBigToe=3216, LSmallToe=3226, LHeel=3387, RBigToe=6617,
           RSmallToe=6624, RHeel=6787)
HEAD_TOP = 411
HMR19 = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
         "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
         "left_wrist")  # the first 12 of HMR's 19 keypoints are SMPL joints


@pytest.fixture(scope="module")
def model():
    return mq.build_mannequin()


@pytest.fixture(scope="module")
def verts(model):
    return model.v_template


@pytest.fixture(scope="module")
def joints(model):
    return model.J_regressor @ model.v_template


@pytest.fixture(scope="module")
def edges(model):
    f = model.faces
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


@pytest.fixture(scope="module")
def written(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("mannequin")
    return mq.write_mannequin(out)


# --- the mesh ----------------------------------------------------------------------------
def test_mesh_counts_and_faces(model, verts):
    assert verts.shape == (6890, 3) and np.isfinite(verts).all()
    f = model.faces
    assert abs(len(f) - 13776) <= 0.05 * 13776
    assert f.min() == 0 and f.max() == 6889
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    area = 0.5 * np.linalg.norm(np.cross(verts[f[:, 1]] - verts[f[:, 0]],
                                         verts[f[:, 2]] - verts[f[:, 0]]), axis=1)
    assert area.min() > 1e-8
    assert len(np.unique(f)) == 6890  # every vertex is on the surface


def test_surface_is_closed_and_faces_outward(model, verts):
    f = model.faces
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    # closed and consistently oriented: every directed edge appears once, its reverse once
    assert len(np.unique(directed, axis=0)) == len(directed)
    forward = {tuple(e) for e in directed.tolist()}
    assert all((b, a) in forward for a, b in directed.tolist())
    # outward: positive enclosed volume, about a person's (~0.06-0.09 m^3; overlaps add some)
    a, b, c = verts[f[:, 0]], verts[f[:, 1]], verts[f[:, 2]]
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    assert 0.04 < volume < 0.15


def test_body_proportions_and_t_pose(verts, joints):
    height = verts[:, 1].max() - verts[:, 1].min()
    assert 1.6 < height < 1.8
    assert -1.25 < verts[:, 1].min() < -1.1  # feet (SMPL: ~ -1.15 to -1.2)
    assert 0.45 < verts[:, 1].max() < 0.6  # head top
    assert np.linalg.norm(joints[J["pelvis"]] - [0.0, -0.22, 0.03]) < 0.03
    span = verts[:, 0].max() - verts[:, 0].min()
    assert 1.4 < span < 1.8  # arm span ~ height
    for side in ("left", "right"):  # T-pose: wrists out at shoulder height
        wrist, shoulder = joints[J[f"{side}_wrist"]], joints[J[f"{side}_shoulder"]]
        assert abs(wrist[0]) > 0.55 and abs(wrist[1] - shoulder[1]) < 0.08
    for name, i in J.items():  # SMPL: the body's left is +x
        if name.startswith("left_"):
            assert joints[i, 0] > 0.03 and joints[J["right_" + name[5:]], 0] < -0.03
    spine = [J[n] for n in ("pelvis", "spine1", "spine2", "spine3", "neck", "head")]
    assert np.abs(joints[spine, 0]).max() < 0.01  # the spine on the midline


# --- smplx's landmark vertices ---------------------------------------------------------
def test_face_landmarks(verts, joints):
    head_y = joints[J["head"]][1]
    nose, leye, reye = verts[IDS["nose"]], verts[IDS["leye"]], verts[IDS["reye"]]
    lear, rear = verts[IDS["lear"]], verts[IDS["rear"]]
    # the nose is the most forward point of the face (+z is front)
    face = (verts[:, 1] > head_y - 0.05) & (np.abs(verts[:, 0]) < 0.1)
    assert nose[2] > verts[face, 2].max() - 0.01
    assert abs(nose[0]) < 0.01 and joints[J["neck"]][1] < nose[1] < verts[:, 1].max()
    assert leye[0] > 0.01 and reye[0] < -0.01
    assert leye[1] > nose[1] and reye[1] > nose[1]  # eyes above the nose tip
    assert min(leye[2], reye[2]) > joints[J["head"]][2] and nose[2] > max(leye[2], reye[2])
    assert lear[0] > 0.06 and rear[0] < -0.06  # ears on the sides, behind the eyes
    assert lear[2] < leye[2] - 0.05 and rear[2] < reye[2] - 0.05
    assert abs(lear[1] - leye[1]) < 0.06
    top = verts[HEAD_TOP]
    assert top[1] > verts[:, 1].max() - 0.01 and abs(top[0]) < 0.02


@pytest.mark.parametrize("side,sign", [("l", 1.0), ("r", -1.0)])
def test_fingertips(verts, joints, side, sign):
    full = "left" if sign > 0 else "right"
    hand, wrist = joints[J[f"{full}_hand"]], joints[J[f"{full}_wrist"]]
    tips = {k: verts[IDS[side + k]] for k in ("thumb", "index", "middle", "ring", "pinky")}
    for name in ("index", "middle", "ring", "pinky"):  # beyond the knuckles, on this hand
        assert sign * (tips[name][0] - hand[0]) > 0.04, name
        assert np.linalg.norm(tips[name] - hand) < 0.15, name
    # spread across the hand's end, index next to the thumb (forward, palms down)
    z = [tips[k][2] for k in ("index", "middle", "ring", "pinky")]
    assert np.all(np.diff(z) < 0) and z[0] - z[-1] > 0.03
    assert tips["thumb"][2] > z[0] + 0.03  # the thumb points forward
    assert sign * (tips["thumb"][0] - wrist[0]) > 0.0
    assert np.linalg.norm(tips["thumb"] - wrist) < 0.15


@pytest.mark.parametrize("side,sign", [("L", 1.0), ("R", -1.0)])
def test_toes_and_heels(verts, joints, side, sign):
    ankle = joints[J[("left" if sign > 0 else "right") + "_ankle"]]
    big, small, heel = (verts[IDS[side + k]] for k in ("BigToe", "SmallToe", "Heel"))
    for point in (big, small):
        assert point[1] < heel[1] and point[2] > heel[2] + 0.15  # toes: lower and in front
        assert point[1] < ankle[1] - 0.04
    assert heel[2] < ankle[2] - 0.04 and heel[1] < ankle[1]  # heel: behind and below the ankle
    assert sign * big[0] < sign * small[0]  # big toe on the inner side
    assert sign * big[0] > 0.0


# --- skinning weights ------------------------------------------------------------------
def test_skinning_weights(model, verts, edges):
    w = model.weights
    assert w.shape == (6890, 24) and w.min() >= 0.0
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert (w > 0).sum(axis=1).max() <= 4
    assert (w > 0).sum(axis=1).mean() > 1.5  # blended across joints, not rigid parts
    # smooth: weights change little along an edge on average
    step = np.abs(w[edges[:, 0]] - w[edges[:, 1]]).sum(axis=1)
    assert step.mean() < 0.2 and np.quantile(step, 0.95) < 0.5


def test_skinning_weights_follow_anatomy(model):
    dominant = model.weights.argmax(axis=1)
    expect = {"nose": "head", "leye": "head", "lmiddle": "left_hand", "rmiddle": "right_hand",
              "LBigToe": "left_foot", "RHeel": "right_ankle", "LHeel": "left_ankle"}
    for landmark, joint in expect.items():
        assert dominant[IDS[landmark]] == J[joint], landmark
    assert dominant[HEAD_TOP] == J["head"]


# --- joint regressors --------------------------------------------------------------------
def _check_regressor(R, rows):
    assert R.shape == (rows, 6890) and R.min() >= 0.0
    np.testing.assert_allclose(R.sum(axis=1), 1.0, atol=1e-12)
    assert ((R > 0).sum(axis=1) <= 300).all() and ((R > 0).sum(axis=1) >= 1).all()


def test_joint_regressor_skeleton(model, joints):
    _check_regressor(model.J_regressor, 24)
    assert ((model.J_regressor > 0).sum(axis=1) >= 8).all()  # a ring, not a single vertex
    np.testing.assert_array_equal(model.parents, SMPL_PARENTS)

    def bone(a, b):
        return np.linalg.norm(joints[J[a]] - joints[J[b]])

    for side in ("left", "right"):
        assert 0.3 < bone(f"{side}_hip", f"{side}_knee") < 0.5  # femur
        assert 0.3 < bone(f"{side}_knee", f"{side}_ankle") < 0.5  # tibia
        assert 0.2 < bone(f"{side}_shoulder", f"{side}_elbow") < 0.35  # humerus
        assert 0.18 < bone(f"{side}_elbow", f"{side}_wrist") < 0.3  # forearm
        assert 0.04 < bone(f"{side}_ankle", f"{side}_foot") < 0.2
    assert 0.45 < bone("pelvis", "neck") < 0.6
    assert 0.10 < bone("left_hip", "right_hip") < 0.2
    assert 0.3 < bone("left_shoulder", "right_shoulder") < 0.45


def test_joints_lie_inside_the_body(model, verts, joints):
    # each joint is closer to the mesh's vertices than a limb's radius, and not on them
    d = np.linalg.norm(verts[None, :, :] - joints[:, None, :], axis=2).min(axis=1)
    assert (d < 0.13).all() and (d > 0.005).all()


def test_hmr19_and_h36m_regressors(model, verts, joints):
    hmr = model.extra_regressors["hmr19"]
    h36m = model.extra_regressors["h36m"]
    _check_regressor(hmr, 19)
    _check_regressor(h36m, 17)
    kp = hmr @ verts
    for k, name in enumerate(HMR19):
        assert np.linalg.norm(kp[k] - joints[J[name]]) < 0.03, name
    assert joints[J["spine3"]][1] < kp[12][1] < joints[J["head"]][1]  # neck
    for k, vid in ((13, HEAD_TOP), (14, IDS["nose"]), (15, IDS["leye"]), (16, IDS["reye"]),
                   (17, IDS["lear"]), (18, IDS["rear"])):
        assert np.linalg.norm(kp[k] - verts[vid]) < 0.015, k
    h = h36m @ verts
    near = {0: "pelvis", 1: "right_hip", 2: "right_knee", 3: "right_ankle", 4: "left_hip",
            5: "left_knee", 6: "left_ankle", 11: "left_shoulder", 12: "left_elbow",
            13: "left_wrist", 14: "right_shoulder", 15: "right_elbow", 16: "right_wrist"}
    for k, name in near.items():
        assert np.linalg.norm(h[k] - joints[J[name]]) < 0.08, name
    assert h[1][0] < 0 < h[4][0]  # right hip at -x
    assert h[0][1] < h[7][1] < h[8][1] < h[9][1] < h[10][1]  # pelvis, spine, thorax, nose, head


# --- shape directions ----------------------------------------------------------------------
def test_shape_direction_0_is_height(model, verts):
    height = lambda v: v[:, 1].max() - v[:, 1].min()  # noqa: E731
    taller = height(verts + 3.0 * model.shapedirs[:, :, 0]) - height(verts)
    shorter = height(verts - 3.0 * model.shapedirs[:, :, 0]) - height(verts)
    assert 0.05 < taller < 0.2 and -0.2 < shorter < -0.05


def test_shape_directions_smooth_and_bounded(model, verts, edges):
    assert model.shapedirs.shape == (6890, 3, 10)
    length = np.linalg.norm(verts[edges[:, 0]] - verts[edges[:, 1]], axis=1)
    for k in range(10):
        d = 3.0 * model.shapedirs[:, :, k]
        move = np.linalg.norm(d, axis=1)
        assert 0.01 < move.max() < 0.15, k
        # smooth: neighbours move alike (strain under 50% along every edge)
        strain = np.linalg.norm(d[edges[:, 0]] - d[edges[:, 1]], axis=1) / length
        assert strain.max() < 0.5, k
    # the ten directions are different from each other
    flat = model.shapedirs.reshape(-1, 10)
    assert np.linalg.matrix_rank(flat, tol=1e-6 * np.abs(flat).max()) == 10


def test_joints_follow_the_shape(model, verts, joints):
    def joints_at(k, beta):
        return model.J_regressor @ (verts + beta * model.shapedirs[:, :, k])

    tall = joints_at(0, 3.0)
    assert tall[J["head"], 1] - joints[J["head"], 1] > 0.01
    assert tall[J["left_ankle"], 1] - joints[J["left_ankle"], 1] < -0.02
    long_legs = joints_at(2, 3.0)  # leg length: the ankles drop, the neck stays
    assert long_legs[J["right_ankle"], 1] - joints[J["right_ankle"], 1] < -0.03
    assert abs(long_legs[J["neck"], 1] - joints[J["neck"], 1]) < 0.01
    long_arms = joints_at(3, 3.0)  # arm length: the wrists move out
    assert long_arms[J["left_wrist"], 0] - joints[J["left_wrist"], 0] > 0.02
    assert long_arms[J["right_wrist"], 0] - joints[J["right_wrist"], 0] < -0.02


# --- pose correctives ----------------------------------------------------------------------
def test_pose_directions_dense_small_local(model, verts, joints):
    P = model.posedirs
    assert P.shape == (6890, 3, 207)
    assert (np.abs(P).reshape(-1, 207).max(axis=0) > 1e-4).all()  # every column does something
    assert (P != 0).mean() > 0.99 and (P.astype(np.float32) != 0).mean() > 0.99
    assert np.abs(P).max() < 0.05
    # each feature's effect is concentrated around the joint it belongs to
    for joint in ("left_elbow", "right_knee", "neck"):
        j = J[joint]
        mag = np.linalg.norm(P[:, :, 9 * (j - 1):9 * j], axis=1).mean(axis=1)
        dist = np.linalg.norm(verts - joints[j], axis=1)
        assert mag[dist < 0.1].mean() > 5.0 * mag[dist > 0.5].mean(), joint


# --- determinism and the file ------------------------------------------------------------
def test_build_is_deterministic(model):
    again = mq.build_mannequin()
    for field in ("v_template", "faces", "J_regressor", "parents", "weights", "shapedirs",
                  "posedirs"):
        np.testing.assert_array_equal(getattr(again, field), getattr(model, field), err_msg=field)
    for name in model.extra_regressors:
        np.testing.assert_array_equal(again.extra_regressors[name], model.extra_regressors[name])


def test_write_is_deterministic_and_atomic(written, tmp_path):
    second = mq.write_mannequin(tmp_path)
    assert second.read_bytes() == written.read_bytes()
    h36m = "J_regressor_h36m.npy"
    assert (second.parent / h36m).read_bytes() == (written.parent / h36m).read_bytes()
    assert sorted(os.listdir(second.parent)) == ["J_regressor_h36m.npy", "SMPL_NEUTRAL.pkl"]


def test_file_has_the_official_layout(model, written):
    with open(written, "rb") as f:
        globals_named = {arg for op, arg, _ in pickletools.genops(f) if "GLOBAL" in op.name}
    with open(written, "rb") as f:
        assert f.read(2) == b"\x80\x02"  # pickle protocol 2, as the official files
    allowed = {"numpy ndarray", "numpy dtype", "numpy._core.multiarray _reconstruct",
               "numpy.core.multiarray _reconstruct", "_codecs encode",
               "scipy.sparse._csc csc_matrix", "scipy.sparse.csc csc_matrix"}
    assert globals_named <= allowed
    with open(written, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    assert {"v_template", "f", "J_regressor", "kintree_table", "weights", "shapedirs", "posedirs",
            "cocoplus_regressor", "bs_style", "bs_type"} <= set(d)
    assert d["f"].dtype == np.uint32 and d["f"].shape == model.faces.shape
    assert isinstance(d["J_regressor"], scipy.sparse.csc_matrix)
    kintree = d["kintree_table"]
    assert kintree.dtype == np.uint32 and kintree.shape == (2, 24)
    assert kintree[0, 0] == 4294967295 and list(kintree[0, 1:]) == list(SMPL_PARENTS[1:])
    np.testing.assert_array_equal(kintree[1], np.arange(24))
    assert d["bs_style"] == "lbs" and d["bs_type"] == "lrotmin"
    cocoplus = d["cocoplus_regressor"]
    cocoplus = cocoplus.toarray() if scipy.sparse.issparse(cocoplus) else cocoplus
    np.testing.assert_array_equal(cocoplus, model.extra_regressors["hmr19"])
    np.testing.assert_array_equal(np.load(written.parent / "J_regressor_h36m.npy"),
                                  model.extra_regressors["h36m"])


def test_smplx_reads_the_file(model, written):
    smplx = pytest.importorskip("smplx")
    torch = pytest.importorskip("torch")
    body = smplx.create(str(written.parent.parent), model_type="smpl")
    with torch.no_grad():
        out = body(return_verts=True)
        vertices = out.vertices[0].double().numpy()
        np.testing.assert_allclose(vertices, model.v_template, atol=1e-6)
        joints = out.joints[0].double().numpy()
        np.testing.assert_allclose(joints[:24], model.J_regressor @ model.v_template, atol=1e-5)
        # smplx appends its landmark vertices after the 24 joints: nose first
        np.testing.assert_allclose(joints[24], model.v_template[IDS["nose"]], atol=1e-6)
        betas = torch.tensor([[2.0, -1.0, 0.5, 0, 0, 0, 0, 0, 0, 1.0]])
        shaped = body(betas=betas).vertices[0].double().numpy()
    expect = model.v_template + model.shapedirs @ betas[0].double().numpy()
    np.testing.assert_allclose(shaped, expect, atol=1e-5)


# --- the cache and the command -------------------------------------------------------------
def test_mannequin_dir_builds_once_and_rebuilds_on_version(tmp_path, monkeypatch):
    monkeypatch.setenv("HMR_FAST_CACHE", str(tmp_path))
    folder = mq.mannequin_dir()
    assert folder == tmp_path / "mannequin"
    pkl = mq.mannequin_path()
    assert pkl == folder / "smpl" / "SMPL_NEUTRAL.pkl" and pkl.is_file()
    first = pkl.stat().st_mtime_ns
    os.utime(pkl, ns=(first - 10**9, first - 10**9))  # mark it, then see it is not rewritten
    mq.mannequin_path()
    assert pkl.stat().st_mtime_ns == first - 10**9
    (folder / "VERSION").write_text("an older version\n")
    mq.mannequin_path()
    assert pkl.stat().st_mtime_ns != first - 10**9  # stale stamp: rebuilt
    assert (folder / "VERSION").read_text().strip() == mq.MANNEQUIN_VERSION


def test_mannequin_dir_default_location(tmp_path, monkeypatch):
    monkeypatch.delenv("HMR_FAST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(mq, "write_mannequin", lambda out: None)  # location only, no build
    (tmp_path / "hmr_fast" / "mannequin").mkdir(parents=True)
    assert mq.mannequin_dir() == tmp_path / "hmr_fast" / "mannequin"


def test_two_builders_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HMR_FAST_CACHE", str(tmp_path))
    errors = []

    def build():
        try:
            mq.mannequin_dir()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    folder = tmp_path / "mannequin" / "smpl"
    assert sorted(os.listdir(folder)) == ["J_regressor_h36m.npy", "SMPL_NEUTRAL.pkl"]
    with open(folder / "SMPL_NEUTRAL.pkl", "rb") as f:
        assert pickle.load(f, encoding="latin1")["v_template"].shape == (6890, 3)


def test_cli_writes_the_model(tmp_path, capsys):
    from hmr_fast.cli import main

    assert main(["mannequin", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "smpl" / "SMPL_NEUTRAL.pkl") in printed
    assert str(tmp_path / "smpl" / "J_regressor_h36m.npy") in printed
    assert (tmp_path / "smpl" / "SMPL_NEUTRAL.pkl").is_file()
