"""SPIN's loop: the crop frames of kept fits, the closed-form camera, the best fit kept
across augmentations, and training with it (logged, checkpointed, resumed exactly)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hmr_fast import SMPL, cli
from hmr_fast.camera import fit_weak_perspective, project_weak_perspective
from hmr_fast.data import augment as A
from hmr_fast.data.synth import synthesize
from hmr_fast.rotations import rodrigues
from hmr_fast.training.spin import SpinLoop

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
TINY = ["model.img_size=64", "model.smpl_backend=reference", "data.num_workers=0", "train.batch_size=4",
        "train.log_every=1", "train.eval_every=1000", "data.val_max_samples=4", "train.cpu_threads=1",
        "spin.enabled=true", "spin.fit_iters=5", "spin.torso_iters=2", "spin.max_error=1.0",
        "data.train=[{kind: spin, path: train2d.npz, images: .}]"]


def test_poses_through_the_crops_and_back():
    rng = np.random.default_rng(0)
    poses = rng.normal(0, 0.5, (16, 72))
    rotation = rng.uniform(-60, 60, 16) * (rng.random(16) < 0.7)
    flip = rng.random(16) < 0.5
    seen = A.augment_poses(poses, rotation, flip)
    for i in range(16):  # what the dataset does to one sample's label
        _, want = A.augment_labels(A.Augmentation(rotation=float(rotation[i]), flip=bool(flip[i])), pose=poses[i])
        np.testing.assert_allclose(seen[i], want, atol=1e-9)
    back = A.unaugment_poses(seen, rotation, flip)
    np.testing.assert_allclose(rodrigues(torch.as_tensor(back).view(-1, 24, 3)),
                               rodrigues(torch.as_tensor(poses).view(-1, 24, 3)), atol=1e-9)


def test_closed_form_weak_camera_recovers_the_camera_and_ignores_unweighted_points():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(5, 19, 3, generator=g, dtype=torch.float64)
    cam = torch.cat([torch.rand(5, 1, generator=g, dtype=torch.float64) + 0.5,
                     torch.randn(5, 2, generator=g, dtype=torch.float64) * 0.2], 1)
    keypoints = project_weak_perspective(points, cam)
    weights = torch.ones(5, 19, dtype=torch.float64)
    weights[:, :3] = 0
    keypoints[:, :3] += 5.0  # outliers with no weight
    torch.testing.assert_close(fit_weak_perspective(points, keypoints, weights), cam)


def _keypoints(smpl, loop, pose, betas, cam):
    _, kp = smpl.joints_projected(betas, rodrigues(torch.as_tensor(pose, dtype=torch.float32).view(-1, 24, 3)),
                                  cam, "hmr19")
    kp = kp[:, loop.fitter.rows]
    return torch.cat([kp, torch.ones_like(kp[..., :1])], -1)


def test_the_best_fit_is_kept_in_the_samples_frame_and_seen_through_each_crop():
    """Fit four samples through one augmentation; meet them again through another with a
    one-iteration fit from the mean pose: the kept fits win, seen through the new crops they
    land on the new labels as well as before, and the table keeps them. A sample met for
    the first time gets its new fit."""
    torch.manual_seed(0)
    smpl = SMPL()
    loop = SpinLoop(smpl, num_samples=10, iters=60, torso_iters=20, max_error=0.1)
    rng = np.random.default_rng(3)
    truth = rng.normal(0, 0.25, (5, 72))
    truth[:, :3] = [np.pi, 0, 0]  # upright, facing the camera
    betas = torch.as_tensor(rng.normal(0, 0.5, (5, 10)), dtype=torch.float32)
    cam = torch.tensor([[0.9, 0.0, 0.1]]).expand(5, 3)
    index = torch.tensor([0, 3, 4, 7, 9])

    def batch(rotation, flip):
        kp = _keypoints(smpl, loop, A.augment_poses(truth, rotation, flip), betas, cam)
        return {"keypoints": kp, "index": index, "rotation": torch.as_tensor(rotation, dtype=torch.float32),
                "flip": torch.as_tensor(flip)}

    mean = rodrigues(torch.tensor([np.pi, 0, 0] + [0.0] * 69).view(1, 24, 3)).expand(5, 24, 3, 3)
    first = batch(np.array([20.0, 0, -35, 10, 0]), np.array([False, True, True, False, False]))
    rows = torch.tensor([True, True, True, True, False])
    t1 = loop.targets(first, mean, torch.zeros(5, 10), torch.tensor([[0.9, 0, 0]]).expand(5, 3), rows)
    assert t1.used[:4].all() and not t1.used[4] and (t1.error[:4] < 0.05).all(), t1.error
    assert loop.fits.known.tolist() == [True, False, False, True, True, False, False, True, False, False]
    kept = loop.fits.pose.clone()

    loop.fitter.settings.iters, loop.fitter.settings.torso_iters = 1, 0
    rotation2, flip2 = np.array([-30.0, 15, 0, 0, 40]), np.array([True, False, True, True, True])
    second = batch(rotation2, flip2)
    t2 = loop.targets(second, mean, torch.zeros(5, 10), torch.tensor([[0.9, 0, 0]]).expand(5, 3),
                      torch.ones(5, dtype=torch.bool))
    # the kept fits, seen through the new crops, on the new labels as well as before
    assert (t2.error[:4] < 0.05).all() and t2.used[:4].all(), t2.error
    seen = rodrigues(torch.as_tensor(A.augment_poses(kept[index[:4]].numpy(), rotation2[:4], flip2[:4]),
                                     dtype=torch.float32).view(-1, 24, 3))
    torch.testing.assert_close(t2.rot_mats[:4], seen, atol=1e-4, rtol=0)
    torch.testing.assert_close(loop.fits.pose[index[:4]], kept[index[:4]])
    # the newcomer: one iteration from the mean pose is all it has, and it is stored
    assert loop.fits.known[9] and t2.error[4] > t2.error[:4].max()


def test_training_with_spin_logs_checkpoints_and_resumes_exactly(tmp_path):
    data = tmp_path / "data"
    synthesize(data, num_images=12, num_val=4, num_prior=200, img_size=64, seed=2)
    labels = dict(np.load(data / "train.npz"))
    for key in ("S", "pose", "shape", "has_smpl"):  # 2D keypoints only: what SPIN fits
        labels.pop(key)
    np.savez(data / "train2d.npz", **labels)

    def train(out, steps, *extra):
        argv = ["train", "--config", str(CONFIGS / "synthetic_smoke.yaml"), "--data", str(data), "--out", str(out),
                "--steps", str(steps), *TINY, *extra]
        assert cli.main(argv) == 0
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in records if "loss/total" in r}

    straight = train(tmp_path / "a", 4, "train.checkpoint_every=2")
    assert all(0 < r["spin/fits_used"] <= 1 and r["spin/fit_error"] > 0 for r in straight.values())
    assert all(r["loss/smpl"] > 0 for r in straight.values())  # the fits supervise: no labels do here
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ckpt["spin"]["known"].sum() > 0 and ckpt["spin"]["pose"].shape == (8, 72)
    train(tmp_path / "b", 2)
    resumed = train(tmp_path / "b", 4, "--resume")
    for step in (3, 4):
        for key in ("loss/total", "loss/smpl", "spin/fit_error"):
            assert resumed[step][key] == straight[step][key], (step, key)
