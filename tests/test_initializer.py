"""The keypoint initializer (hmr_fast.fit.initializer): its guess, composed with the SMPL
layer, lands on the keypoints of fresh bodies; its outputs are the fit's `init` in the
fit's box; a damaged file is refused in one line; retraining is deterministic.

The bodies here are made independently of the training's simulator: the pose sampler, a
heading and a little pitch (as tests/test_fit.py), the SMPL layer's COCO-17 keypoints
projected with a known weak camera, a detector box around the body. Every generator is
seeded.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hmr_fast.body import SMPL
from hmr_fast.data.pose_sampler import sample_betas, sample_poses
from hmr_fast.errors import DataError
from hmr_fast.fit import FitSettings, KeypointFitter, keypoint_format, people_boxes
from hmr_fast.fit.initializer import (DEFAULT_ASSET, KeypointInitializer, default_initializer,
                                      initialize, load_initializer, save_initializer)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COCO17 = keypoint_format("coco17")


@pytest.fixture(scope="module")
def smpl():
    return SMPL(joint_set="hmr19", backend="reference")


def fresh_people(smpl, seed, n, image=640.0):
    """(keypoints (n, 17, 3) pixels + score 1, detector boxes (n, 4), the true keypoints
    (n, 17, 2) pixels): bodies facing any way, a weak camera per person in the image."""
    rng = np.random.default_rng(seed)
    pose = sample_poses(rng, n)
    heading = Rotation.from_rotvec(np.c_[np.zeros(n), rng.uniform(0, 2 * np.pi, n), np.zeros(n)])
    pitch = Rotation.from_rotvec(np.c_[rng.normal(0, 0.1, n), np.zeros((n, 2))])
    pose[:, :3] = (Rotation.from_rotvec([np.pi, 0, 0]) * pitch * heading).as_rotvec()
    betas = sample_betas(rng, n)
    as_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        J = smpl(betas=as_t(betas), global_orient=as_t(pose[:, :3]), body_pose=as_t(pose[:, 3:]), joint_set="hmr19",
                 return_verts=False).joints.double().numpy()
    pixels_per_m = rng.uniform(100, 300, (n, 1, 1))
    offset = rng.uniform(0.3, 0.7, (n, 1, 2)) * image
    px = offset + pixels_per_m * J[..., :2]  # the truth camera: weak perspective in the image
    lo, hi = px.min(1), px.max(1)  # the body's extent (head top included): the detector's box
    margin = 0.05 * (hi - lo)
    boxes = np.c_[lo - margin, hi + margin]
    kp = px[:, list(COCO17.rows)]
    return np.concatenate([kp, np.ones((n, 17, 1))], -1), boxes, kp


def guessed_keypoints(smpl, start, kp, boxes):
    """The initializer's body, posed and projected with its camera in the fit's box: pixels."""
    box = people_boxes(torch.as_tensor(kp, dtype=torch.float32), boxes)
    with torch.no_grad():
        J = smpl(betas=start["betas"], global_orient=start["global_orient"], body_pose=start["body_pose"],
                 joint_set="hmr19", return_verts=False).joints[:, list(COCO17.rows)]
    s, t = start["cam"][:, None, :1], start["cam"][:, None, 1:]
    return (box[:, None, :2] + s * (J[..., :2] + t) * box[:, None, 2:] / 2).double().numpy(), box.double().numpy()


def test_the_guess_lands_on_the_keypoints_of_fresh_bodies(smpl):
    kp, boxes, truth = fresh_people(smpl, seed=11, n=256)
    start = initialize(kp, boxes)
    guess, box = guessed_keypoints(smpl, start, kp, boxes)
    error = np.linalg.norm(guess - truth, axis=-1) / box[:, None, 2]  # fraction of the box side
    still = FitSettings(iters=0, torso_iters=0, try_flip=False, start="mean")
    mean = KeypointFitter(smpl, COCO17, still).fit(kp, boxes)
    mean_error = np.linalg.norm(mean.keypoints2d.double().numpy() - truth, axis=-1) / box[:, None, 2]
    pixels = error * box[:, None, 2]
    print(f"median keypoint error {100 * np.median(error):.2f}% of the box side, {np.median(pixels):.1f} px "
          f"(mean start {100 * np.median(mean_error):.2f}%)")
    # Measured 0.90% of the box side, 3.3 px (boxes here are ~200-600 px), the mean start 12.4%.
    assert np.median(error) < 0.02 and np.median(pixels) < 8.0 and np.median(error) < 0.25 * np.median(mean_error)


def test_outputs_are_the_fits_init_in_the_fits_box(smpl):
    kp, boxes, _ = fresh_people(smpl, seed=12, n=5)
    start = initialize(kp, boxes)
    assert set(start) == {"global_orient", "body_pose", "betas", "cam"}
    for key, width in (("global_orient", 3), ("body_pose", 69), ("betas", 10), ("cam", 3)):
        assert start[key].shape == (5, width) and start[key].dtype == torch.float32
    assert (start["cam"][:, 0] > 0).all()
    # The fit with no iterations returns its start: the initializer's, given or chosen by default.
    still = dict(iters=0, torso_iters=0, try_flip=False)
    given = KeypointFitter(smpl, COCO17, FitSettings(**still, start="mean")).fit(kp, boxes, init=start)
    chosen = KeypointFitter(smpl, COCO17, FitSettings(**still)).fit(kp, boxes)
    for fit in (given, chosen):
        torch.testing.assert_close(fit.body_pose, start["body_pose"])
        torch.testing.assert_close(fit.camera, start["cam"], rtol=1e-5, atol=1e-6)
    mean = KeypointFitter(smpl, COCO17, FitSettings(**still, start="mean")).fit(kp, boxes)
    assert (mean.body_pose == 0).all()
    # Other formats keep the mean start; a given pose wins over the guess.
    hmr19 = KeypointFitter(smpl, keypoint_format("hmr19"), FitSettings(**still)).fit(np.ones((2, 19, 3)))
    assert (hmr19.body_pose == 0).all()
    own = KeypointFitter(smpl, COCO17, FitSettings(**still)).fit(kp, boxes, init={"body_pose": torch.zeros(5, 69)})
    assert (own.body_pose == 0).all()
    with pytest.raises(ValueError, match="start"):
        FitSettings(start="hmr")


def test_a_person_moved_and_scaled_in_the_image_gets_the_same_body_and_a_moved_camera(smpl):
    kp, boxes, _ = fresh_people(smpl, seed=13, n=8)
    k, shift = 2.5, np.array([137.0, -61.0])
    moved_kp = kp.copy()
    moved_kp[..., :2] = k * kp[..., :2] + shift
    moved_boxes = k * boxes + np.tile(shift, 2)
    a, b = initialize(kp, boxes), initialize(moved_kp, moved_boxes)
    for key in ("global_orient", "body_pose", "betas", "cam"):  # the camera is in the box: it moves with it
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=2e-3)
    guess_a, _ = guessed_keypoints(smpl, a, kp, boxes)
    guess_b, box_b = guessed_keypoints(smpl, b, moved_kp, moved_boxes)
    np.testing.assert_allclose(guess_b, k * guess_a + shift, atol=2e-3 * box_b[:, None, 2:].max())
    # Without a detector box the box comes from the keypoints, as the fitter makes it.
    c = initialize(kp, None)
    assert c["body_pose"].shape == (8, 69) and torch.isfinite(c["cam"]).all()


def test_the_shipped_file_is_small_and_a_damaged_one_is_refused_in_one_line(tmp_path):
    assert DEFAULT_ASSET.stat().st_size <= 5 * 2 ** 20
    assert default_initializer() is default_initializer()  # loaded once
    data = DEFAULT_ASSET.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"format": "hmr_fast.keypoint_init/1", "width": 512, "blocks": 3,
                "state": {"embed.weight": torch.zeros(3, 3)}}, tmp_path / "shapes.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "code.pt").write_bytes(pickle.dumps(Exploit(tmp_path / "ran"), protocol=2))
    for name in ("cut.pt", "noise.pt", "shapes.pt", "other.pt", "code.pt"):
        with pytest.raises(DataError) as err:
            load_initializer(tmp_path / name)
        message = str(err.value)
        assert name in message and "\n" not in message, message
    assert not (tmp_path / "ran").exists()
    with pytest.raises(FileNotFoundError):
        load_initializer(tmp_path / "missing.pt")


class Exploit:
    """A pickle that would run code (create a file) when loaded without weights_only."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_axis_angle_is_scipys_in_torch():
    from hmr_fast.rotations import rotmat_to_axis_angle, rotmat_to_axis_angle_torch

    rotations = Rotation.random(2000, random_state=np.random.default_rng(5))
    near = Rotation.from_rotvec([[np.pi, 0, 0], [0, np.pi - 1e-6, 0], [0, 0, 0], [1e-7, 0, 0], [0.3, -0.2, 2.9]])
    R = np.concatenate([rotations.as_matrix(), near.as_matrix()])
    got = rotmat_to_axis_angle_torch(torch.as_tensor(R)).numpy()
    want = rotmat_to_axis_angle(R)
    # as rotations (at pi, v and -v are one rotation), and as vectors away from pi
    assert (Rotation.from_rotvec(got).inv() * Rotation.from_rotvec(want)).magnitude().max() < 1e-6
    away = np.linalg.norm(want, axis=1) < 3.0
    np.testing.assert_allclose(got[away], want[away], atol=1e-6)


def test_retraining_is_deterministic(tmp_path):
    from hmr_fast.fit.initializer_training import TrainSettings, train

    files = []
    for run in range(2):
        settings = TrainSettings(steps=3, batch=16, width=32, blocks=1, eval_people=8, eval_every=10)
        torch.manual_seed(1234 + run)  # train seeds itself: what came before must not matter
        model, meta = train(KeypointInitializer, settings, log=lambda _: None)
        files.append(save_initializer(model, tmp_path / f"{run}.pt", meta))
    assert files[0].read_bytes() == files[1].read_bytes()
    loaded = load_initializer(files[0])
    assert loaded.width == 32 and loaded.meta["steps"] == 3


def test_best_start_takes_the_better_of_the_given_and_the_learned_one_per_person(smpl):
    """FitSettings(start="best") with a given pose: each person starts from whichever of the
    given start and the learned guess has the lower objective, each measured on its own by
    a fit of no iterations from it."""
    kp, boxes, _ = fresh_people(smpl, seed=7, n=8)
    learned = initialize(kp, boxes)
    fmt = keypoint_format("coco17")
    measure = KeypointFitter(smpl, fmt, FitSettings(iters=0, torso_iters=0, try_flip=False))
    # a given start: the learned guess for the first half (as good), the mean body, turned
    # sideways and far too small, for the second (much worse)
    given = {k: v.clone() for k, v in learned.items()}
    given["global_orient"][4:] = torch.tensor([np.pi / 2, 0.0, 0.0])
    given["body_pose"][4:] = 0.0
    given["cam"][4:, 0] = 0.2
    given["betas"][:] = 0.5
    # the learned candidate keeps the given shape (a track's), so measure it that way
    with_shape = {**learned, "betas": given["betas"]}
    loss_given = measure.fit(kp, boxes, given).loss
    loss_learned = measure.fit(kp, boxes, with_shape).loss
    best = KeypointFitter(smpl, fmt, FitSettings(iters=0, torso_iters=0, try_flip=False, start="best"))
    fit = best.fit(kp, boxes, given)
    expect = loss_learned < loss_given
    assert expect[4:].all() and fit.learned_start.tolist() == expect.tolist()
    torch.testing.assert_close(fit.loss, torch.minimum(loss_given, loss_learned), rtol=1e-5, atol=1e-7)
    # "learned" (the default) keeps a given pose; "mean" never guesses
    kept = KeypointFitter(smpl, fmt, FitSettings(iters=0, torso_iters=0, try_flip=False)).fit(kp, boxes, given)
    assert not kept.learned_start.any()
    torch.testing.assert_close(kept.loss, loss_given)
    mean = KeypointFitter(smpl, fmt, FitSettings(iters=0, torso_iters=0, try_flip=False, start="mean")).fit(kp, boxes)
    assert not mean.learned_start.any()
