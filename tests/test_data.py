"""Data: formats, crops and augmentation, the pose sampler, the synthetic set, the sampler."""
import json

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hmr_fast import camera
from hmr_fast.body import SMPL
from hmr_fast.body.joint_sets import HMR19_NAMES
from hmr_fast.data import augment as A
from hmr_fast.data.coco import CocoDataset
from hmr_fast.data.dataset import AugmentSettings
from hmr_fast.data.keypoints import HMR19_FLIP, SMPL24_FLIP, SPIN24_NAMES, SPIN24_TO_HMR19, spin24_to_hmr19
from hmr_fast.data.loader import MixedDataset, ResumableBatchSampler, collate, make_train_loader
from hmr_fast.data.pose_sampler import (CENTRE_LIMITS, SIDE_LIMITS, parameters_to_rotmats, sample_parameters,
                                        sample_poses)
from hmr_fast.data.prior import PosePrior
from hmr_fast.data.spin_npz import DataError, SpinDataset
from hmr_fast.data.synth import synthesize


@pytest.fixture(scope="module")
def smpl():
    return SMPL(joint_set="hmr19")


def _posed_joints(smpl, pose, betas=None, joint_set="hmr19"):
    pose = torch.as_tensor(np.atleast_2d(pose), dtype=torch.float64).float()
    betas = torch.zeros(len(pose), 10) if betas is None else torch.as_tensor(np.atleast_2d(betas)).float()
    out = smpl(betas=betas, global_orient=pose[:, :3], body_pose=pose[:, 3:], return_verts=False,
               joint_set=joint_set)
    return out.joints.numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------
# Keypoint orders
# ---------------------------------------------------------------------------------------
def test_spin24_to_hmr19_follows_the_names():
    names = [SPIN24_NAMES[i] for i in SPIN24_TO_HMR19]
    assert names[:14] == list(HMR19_NAMES[:14])
    assert names[14:] == ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
    assert list(HMR19_NAMES[14:]) == names[14:]


def test_hmr19_flip_swaps_left_and_right():
    for i, j in enumerate(HMR19_FLIP):
        a, b = HMR19_NAMES[i], HMR19_NAMES[j]
        assert a.replace("left", "right") == b or b.replace("left", "right") == a or a == b


# ---------------------------------------------------------------------------------------
# Flip and rotation
# ---------------------------------------------------------------------------------------
def test_flip_twice_is_identity():
    rng = np.random.default_rng(0)
    keypoints = rng.normal(size=(19, 3))
    pose = rng.normal(size=72)
    joints = rng.normal(size=(19, 4))
    np.testing.assert_array_equal(A.flip_keypoints(A.flip_keypoints(keypoints, HMR19_FLIP), HMR19_FLIP), keypoints)
    np.testing.assert_array_equal(A.flip_pose(A.flip_pose(pose)), pose)
    np.testing.assert_array_equal(A.flip_joints3d(A.flip_joints3d(joints, HMR19_FLIP), HMR19_FLIP), joints)
    # the image: cropping with flip twice (crop of the crop) gives the crop back
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    m = camera.crop_matrix((15.5, 15.5), 32, 32, flip=True)
    np.testing.assert_array_equal(camera.crop_image(camera.crop_image(image, m, 32), m, 32), image)


def test_flipped_pose_poses_the_mirrored_body(smpl):
    """The mannequin's skeleton is left/right symmetric, so SMPL's chain joints of
    flip_pose(p) must be the mirror image (x -> -x, sides swapped) of those of p."""
    pose = sample_poses(np.random.default_rng(1), 3)
    pose[:, :3] = Rotation.from_rotvec([[0.3, 1.0, -0.2]] * 3).as_rotvec()
    joints = _posed_joints(smpl, pose, joint_set="smpl24")
    flipped = _posed_joints(smpl, np.stack([A.flip_pose(p) for p in pose]), joint_set="smpl24")
    mirrored = np.stack([A.flip_joints3d(j, SMPL24_FLIP) for j in joints])
    # about the pelvis joint, which the root rotation turns about
    np.testing.assert_allclose(flipped - flipped[:, :1], mirrored - mirrored[:, :1], atol=1e-5)
    assert np.abs(joints - joints[:, :1] - (mirrored - mirrored[:, :1])).max() > 0.05  # not trivially equal


def test_rotated_root_turns_the_projection(smpl):
    pose = sample_poses(np.random.default_rng(2), 1)[0]
    pose[:3] = [np.pi, 0.2, 0]
    before = _posed_joints(smpl, pose)[0]
    after = _posed_joints(smpl, A.rotate_global_orient(pose, 25.0))[0]
    expected = A.rotate_joints3d(before, 25.0)
    centre = lambda j: j - j[2:4].mean(0)  # noqa: E731
    np.testing.assert_allclose(centre(after), centre(expected), atol=1e-4)


# ---------------------------------------------------------------------------------------
# SPIN-style npz + crops
# ---------------------------------------------------------------------------------------
def _write_spin_set(root, n=4, size=64, corrupt=(), missing=()):
    """Images with a coloured dot at each of two keypoints (right ankle red, left ankle green)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    part = np.zeros((n, 24, 3))
    names = []
    for i in range(n):
        image = np.full((size, size, 3), 40, np.uint8)
        ra, la = (20 + i, 30), (44, 40 - i)
        cv2.circle(image, ra, 3, (0, 0, 255), -1)  # BGR red
        cv2.circle(image, la, 3, (0, 255, 0), -1)
        name = f"images/{i:03d}.png"
        names.append(name)
        if i in missing:
            continue
        if i in corrupt:
            (root / name).write_bytes(b"not an image at all")
            continue
        cv2.imwrite(str(root / name), image)
        part[i, 0] = [*ra, 1]  # SPIN 0: right ankle
        part[i, 5] = [*la, 1]  # SPIN 5: left ankle
    np.savez(root / "set.npz", imgname=np.array(names), center=np.full((n, 2), (size - 1) / 2),
             scale=np.full(n, size / 200.0), part=part)
    return root / "set.npz"


def _colour_at(sample, xy_norm, size):
    rgb = sample["image"].transpose(1, 2, 0)
    x, y = np.round(((np.asarray(xy_norm) + 1) * size - 1) / 2).astype(int)  # normalised -> crop pixels
    return rgb[y, x]


def test_crop_labels_follow_the_image_through_flip_and_rotation(tmp_path):
    npz = _write_spin_set(tmp_path)
    plain = SpinDataset(npz, tmp_path, img_size=64)
    sample = plain[0]
    # right ankle (HMR 0) on the red dot, left ankle (HMR 5) on the green one
    assert _colour_at(sample, sample["keypoints"][0, :2], 64).tolist()[0] > 200
    assert _colour_at(sample, sample["keypoints"][5, :2], 64).tolist()[1] > 200
    aug = AugmentSettings(scale=0.2, rotation=30.0, rotation_prob=1.0, flip_prob=1.0, color=0.0)
    flipped = SpinDataset(npz, tmp_path, img_size=64, augment=aug)[(0, (7, 0, 0, 0))]
    # after a flip the red dot is the *left* ankle of the mirrored person
    assert _colour_at(flipped, flipped["keypoints"][5, :2], 64)[0] > 150
    assert _colour_at(flipped, flipped["keypoints"][0, :2], 64)[1] > 150
    assert flipped["keypoints"][0, 2] == 1 and flipped["keypoints"][1, 2] == 0


def test_normalise_images_matches_torchvision_statistics_and_applies_gains():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    batch = torch.as_tensor(hwc.transpose(2, 0, 1)[None].copy())
    np.testing.assert_allclose(camera.normalise_images(batch)[0].numpy(), camera.normalise_image(hwc), atol=1e-5)
    expected = (hwc.astype(np.float64) * [2.0, 1.0, 0.5]).clip(max=255)
    gained = camera.normalise_images(batch, torch.tensor([[2.0, 1.0, 0.5]]))[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(gained * camera.IMAGENET_STD * 255 + camera.IMAGENET_MEAN * 255, expected, atol=1e-3)


def test_augmentation_is_a_function_of_the_key(tmp_path):
    npz = _write_spin_set(tmp_path)
    ds = SpinDataset(npz, tmp_path, img_size=32, augment=AugmentSettings())
    a, b = ds[(1, (3, 1, 0, 5))], ds[(1, (3, 1, 0, 5))]
    np.testing.assert_array_equal(a["image"], b["image"])
    c = ds[(1, (3, 1, 0, 6))]
    assert not np.array_equal(a["image"], c["image"])


def test_npz_missing_key_fails_at_start_naming_it(tmp_path):
    np.savez(tmp_path / "bad.npz", imgname=np.array(["a.jpg"]), center=np.zeros((1, 2)), scale=np.ones(1))
    with pytest.raises(DataError, match="'part'"):
        SpinDataset(tmp_path / "bad.npz", tmp_path)


def test_npz_wrong_shape_names_the_key(tmp_path):
    np.savez(tmp_path / "bad.npz", imgname=np.array(["a.jpg"]), center=np.zeros((1, 2)), scale=np.ones(1),
             part=np.zeros((1, 14, 3)))
    with pytest.raises(DataError, match="'part'.*\\(1, 24, 3\\)"):
        SpinDataset(tmp_path / "bad.npz", tmp_path)


def test_npz_pose_without_shape_names_the_key(tmp_path):
    np.savez(tmp_path / "bad.npz", imgname=np.array(["a.jpg"]), center=np.zeros((1, 2)), scale=np.ones(1),
             part=np.zeros((1, 24, 3)), pose=np.zeros((1, 72)))
    with pytest.raises(DataError, match="'shape'"):
        SpinDataset(tmp_path / "bad.npz", tmp_path)


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path):
    npz = _write_spin_set(tmp_path, n=6, corrupt=(1,), missing=(4,))
    ds = SpinDataset(npz, tmp_path, img_size=32)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)
    batches = list(loader)
    assert sum(int(b["skipped"].sum()) for b in batches) == 2
    assert sum(len(b["image"]) for b in batches) == 6  # batches keep their size
    served = torch.cat([b["index"] for b in batches]).tolist()
    assert 1 not in served and 4 not in served


# ---------------------------------------------------------------------------------------
# COCO and the prior
# ---------------------------------------------------------------------------------------
def test_coco_maps_to_hmr19(tmp_path):
    kp = np.zeros((17, 3))
    kp[16] = [10, 20, 2]  # right ankle, visible
    kp[0] = [30, 5, 1]  # nose, labelled but occluded
    kp[5:11, 2] = 2  # shoulders, elbows, wrists labelled at the origin
    ann = {"images": [{"id": 7, "file_name": "x.jpg"}],
           "annotations": [{"image_id": 7, "keypoints": kp.flatten().tolist(), "bbox": [0, 0, 40, 20],
                            "iscrowd": 0},
                           {"image_id": 7, "keypoints": kp.flatten().tolist(), "bbox": [0, 0, 4, 2], "iscrowd": 1}]}
    (tmp_path / "coco.json").write_text(json.dumps(ann))
    ds = CocoDataset(tmp_path / "coco.json", tmp_path, min_keypoints=4)
    assert len(ds) == 1  # the crowd annotation is dropped
    rec = ds.record(0)
    assert rec.keypoints[0].tolist() == [10, 20, 1]  # HMR 0 = right ankle
    assert rec.keypoints[14].tolist() == [30, 5, 1]  # HMR 14 = nose
    assert rec.keypoints[12, 2] == 0 and rec.keypoints[13, 2] == 0  # neck, head top: not in COCO
    assert rec.center.tolist() == [20, 10] and rec.box_size == pytest.approx(48)


def test_coco_missing_key_is_named(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(DataError, match="'keypoints'"):
        CocoDataset(tmp_path / "c.json", tmp_path)


def test_prior_reads_amass_and_plain_npz(tmp_path):
    poses = np.random.default_rng(0).normal(size=(10, 156))
    np.savez(tmp_path / "amass.npz", poses=poses, betas=np.arange(16.0), trans=np.zeros((10, 3)),
             mocap_framerate=120.0)
    np.savez(tmp_path / "plain.npz", pose=np.ones((3, 72)), shape=np.full((3, 10), 2.0))
    np.savez(tmp_path / "shape.npz", betas=np.zeros(16))  # AMASS's per-subject file: no poses
    prior = PosePrior([tmp_path], frame_stride=2)
    assert len(prior) == 5 + 3
    np.testing.assert_allclose(prior.poses[0, :66].numpy(), poses[0, :66], rtol=1e-6)
    assert prior.poses[0, 66:].abs().sum() == 0  # SMPL's hand joints: identity
    np.testing.assert_allclose(prior.betas[0].numpy(), np.arange(10.0))
    pose, betas = prior.sample(4, torch.Generator().manual_seed(0))
    assert pose.shape == (4, 72) and betas.shape == (4, 10)
    with pytest.raises(DataError, match="'poses'"):
        PosePrior(tmp_path / "shape.npz")


# ---------------------------------------------------------------------------------------
# Pose sampler
# ---------------------------------------------------------------------------------------
def test_sampled_parameters_respect_joint_limits():
    params = sample_parameters(np.random.default_rng(0), 2000)
    for key, value in params.items():
        lo, hi = CENTRE_LIMITS[key] if key in CENTRE_LIMITS else SIDE_LIMITS[key.split(".", 1)[1]]
        assert value.min() >= lo and value.max() <= hi, key
        assert value.std() > 0.02, f"{key} never varies"


def test_knees_only_bend_backwards():
    params = sample_parameters(np.random.default_rng(1), 500)
    R = parameters_to_rotmats(params)
    for knee in (4, 5):
        rotvec = Rotation.from_matrix(R[:, knee]).as_rotvec()
        # a pure rotation about +x by the knee flexion, in [0, 2.5]
        np.testing.assert_allclose(rotvec[:, 1:], 0, atol=1e-9)
        assert rotvec[:, 0].min() >= 0 and rotvec[:, 0].max() <= 2.5 + 1e-9


def test_stride_correlates_legs():
    """Poses are not independent per joint: across samples, left and right hip flexion of
    walking / running strides are anti-correlated, and knees follow the hips in sitting."""
    params = sample_parameters(np.random.default_rng(2), 5000)
    hip_l, hip_r = params["left.hip_flex"], params["right.hip_flex"]
    knee_l = params["left.knee_flex"]
    assert np.corrcoef(hip_l, knee_l)[0, 1] > 0.3
    striding = (np.abs(hip_l - hip_r) > 0.3) & (hip_l < 1.0) & (hip_r < 1.0)
    assert np.corrcoef(hip_l[striding], hip_r[striding])[0, 1] < -0.3


def test_sample_poses_shape_and_finiteness():
    poses = sample_poses(np.random.default_rng(3), 64)
    assert poses.shape == (64, 72) and np.isfinite(poses).all()
    np.testing.assert_array_equal(poses[:, :3], 0)


# ---------------------------------------------------------------------------------------
# Synthetic set
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, num_images=6, num_val=2, num_prior=50, img_size=96, seed=3)
    return out


def test_synth_writes_spin_layout_and_amass_prior(synth_dir):
    train = np.load(synth_dir / "train.npz")
    assert len(train["imgname"]) == 4 and len(np.load(synth_dir / "val.npz")["imgname"]) == 2
    assert train["part"].shape == (4, 24, 3) and train["S"].shape == (4, 24, 4)
    assert train["pose"].shape == (4, 72) and train["shape"].shape == (4, 10)
    for name in train["imgname"]:
        image = cv2.imread(str(synth_dir / name))
        assert image is not None and image.shape == (96, 96, 3)
    prior = np.load(synth_dir / "prior.npz")
    assert prior["poses"].shape == (50, 156) and prior["betas"].shape == (50, 16)
    assert float(prior["mocap_framerate"]) == 30.0


def test_synth_labels_agree_with_smpl(synth_dir, smpl):
    """S is SMPL(pose, shape) in the camera frame (up to translation), and the 2D keypoints
    are a near-orthographic view of it: y down, x right, inside the image."""
    d = np.load(synth_dir / "train.npz")
    joints = _posed_joints(smpl, d["pose"], d["shape"])
    S = spin24_to_hmr19(d["S"])[..., :3]
    centre = lambda j: j - j[:, 2:4].mean(1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centre(joints), centre(S), atol=1e-4)
    kp = spin24_to_hmr19(d["part"])
    for i in range(len(kp)):
        # fit kp = s * S_xy + t: a small residual means the labels are one consistent view
        X = np.c_[S[i, :, :2].reshape(-1, 1), np.tile(np.eye(2), (19, 1))]
        sol, *_ = np.linalg.lstsq(np.c_[S[i, :, :2].reshape(-1), X[:, 1:]], kp[i, :, :2].reshape(-1), rcond=None)
        residual = kp[i, :, :2].reshape(-1) - np.c_[S[i, :, :2].reshape(-1), X[:, 1:]] @ sol
        assert sol[0] > 0  # no mirror: image x/y follow camera x/y
        assert np.abs(residual).max() < 0.05 * np.ptp(kp[i, :, :2])
        assert ((kp[i, :, :2] > -1) & (kp[i, :, :2] < 96)).all()
    # the head is above the ankles in the image for an upright camera
    assert (kp[:, 13, 1] < kp[:, [0, 5], 1].max(1)).mean() >= 0.5


def test_synth_set_loads_as_a_dataset(synth_dir):
    ds = SpinDataset(synth_dir / "train.npz", synth_dir, img_size=64)
    sample = ds[0]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == np.uint8
    assert sample["has_smpl"] == 1 and sample["has_3d"] == 1
    assert (np.abs(sample["keypoints"][:, :2]) < 1.2).all()


# ---------------------------------------------------------------------------------------
# Resumable sampler
# ---------------------------------------------------------------------------------------
def test_sampler_resumes_at_any_batch():
    full = ResumableBatchSampler(10, 3, seed=5)
    stream = [b for _, b in zip(range(8), iter(full))]
    for k in (0, 2, 3, 5):
        resumed = ResumableBatchSampler(10, 3, seed=5, start_batch=k)
        assert [b for _, b in zip(range(8 - k), iter(resumed))] == stream[k:]
    # each epoch (3 batches of 3 from 10) holds distinct indices
    epoch = [i for batch in stream[:3] for i, _ in batch]
    assert len(set(epoch)) == 9


def test_sampler_ranks_are_disjoint():
    a = next(iter(ResumableBatchSampler(12, 3, seed=1, rank=0, world_size=2)))
    b = next(iter(ResumableBatchSampler(12, 3, seed=1, rank=1, world_size=2)))
    assert not {i for i, _ in a} & {i for i, _ in b}


def test_mixed_dataset_weights_shape_the_batches(tmp_path):
    small = _write_spin_set(tmp_path / "a", n=4)
    big = _write_spin_set(tmp_path / "b", n=12)
    mixed = MixedDataset([SpinDataset(small, tmp_path / "a", 16), SpinDataset(big, tmp_path / "b", 16)],
                         weights=[1.0, 1.0])
    p = mixed.sample_probabilities()
    assert p[:4].sum() == pytest.approx(0.5) and p[4:].sum() == pytest.approx(0.5)
    loader = make_train_loader(mixed, batch_size=4, seed=0, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 16, 16)
