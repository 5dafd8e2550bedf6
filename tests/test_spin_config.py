"""The shipped `spin_paper` config trains on files in SPIN's layout (format-exact stand-ins):
its six dataset npz files, its static fits as the SPIN loop's start, AMASS for the
discriminator, torchvision's ResNet-50 file as model.pretrained, SPIN's smpl_mean_params.npz;
and an imported SPIN checkpoint starts a run (model.init)."""
import numpy as np
import pytest
import torch
import torchvision

from hmr_fast.training.config import ConfigError, load_config
from hmr_fast.training.train import Trainer

SETS = [  # (npz, image folder, static fits, has 3D / SMPL labels)
    ("h36m_train.npz", "h36m", "h36m_fits.npy", True),
    ("lsp_dataset_original_train.npz", "lsp_dataset_original", "lsp-orig_fits.npy", False),
    ("mpii_train.npz", "mpii", "mpii_fits.npy", False),
    ("hr-lspet_train.npz", "hr-lspet", "lspet_fits.npy", False),
    ("coco_2014_train.npz", "coco", "coco_fits.npy", False),
    ("mpi_inf_3dhp_train.npz", "mpi_inf_3dhp", "mpi-inf-3dhp_fits.npy", True),
]
N = 3
TINY = ["model.img_size=64", "model.smpl_backend=reference", "data.num_workers=0", "train.batch_size=4",
        "train.log_every=1", "train.eval_every=1000", "train.checkpoint_every=1000", "train.cpu_threads=1",
        "train.device=cpu", "spin.fit_iters=2", "spin.torso_iters=1", "train.steps=2"]


def write_spin_root(root, rng):
    import cv2
    (root / "dataset_extras").mkdir()
    (root / "static_fits").mkdir()
    (root / "amass" / "CMU" / "01").mkdir(parents=True)
    for npz, folder, fits, labelled in SETS:
        (root / folder / "images").mkdir(parents=True)
        names = []
        for i in range(N):
            name = f"images/im{i:04d}.jpg"
            cv2.imwrite(str(root / folder / name), rng.integers(0, 255, size=(120, 100, 3), dtype=np.uint8))
            names.append(name)
        part = np.zeros((N, 24, 3))
        part[:, :14, :2] = rng.uniform(30, 90, size=(N, 14, 2))
        part[:, :14, 2] = 1
        arrays = dict(imgname=np.array(names), center=np.full((N, 2), 60.0), scale=np.full(N, 0.5), part=part,
                      openpose=np.zeros((N, 25, 3)))
        if labelled:
            S = np.zeros((N, 24, 4))
            S[:, :, :3] = rng.normal(size=(N, 24, 3)) * 0.2
            S[:, :, 3] = 1
            arrays.update(S=S, pose=rng.normal(size=(N, 72)) * 0.1, shape=rng.normal(size=(N, 10)) * 0.1,
                          has_smpl=np.ones(N))
        np.savez(root / "dataset_extras" / npz, **arrays)
        np.save(root / "static_fits" / fits, np.concatenate([rng.normal(size=(N, 72)) * 0.1,
                                                              rng.normal(size=(N, 10)) * 0.1], 1))
    T = 40
    np.savez(root / "amass" / "CMU" / "01" / "01_01_poses.npz", poses=rng.normal(size=(T, 156)) * 0.2,
             betas=rng.normal(size=16), trans=np.zeros((T, 3)), mocap_framerate=np.array(120.0),
             gender=np.array("male"))
    np.savez(root / "smpl_mean_params.npz", pose=np.tile([1.0, 0, 0, 1, 0, 0], 24) + rng.normal(size=144) * 0.01,
             shape=rng.normal(size=10) * 0.1, cam=np.array([0.9, 0.0, 0.0]))
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), root / "resnet50-0676ba61.pth")


@pytest.fixture(scope="module")
def spin_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("spin_data")
    write_spin_root(root, np.random.default_rng(0))
    return root


def overrides(root):
    return TINY + [f"model.pretrained={root / 'resnet50-0676ba61.pth'}", f"model.mean_params={root / 'smpl_mean_params.npz'}"]


def test_spin_paper_config_trains_a_few_steps(spin_root, tmp_path):
    config = load_config("spin_paper", overrides(spin_root))
    assert config.model.regressor == "spin" and config.spin.enabled and len(config.data.train) == 6
    assert abs(sum(s.weight for s in config.data.train) - 1.0) < 1e-3
    trainer = Trainer(config, spin_root, tmp_path / "run")
    # the SPIN loop starts from SPIN's static fits, every sample's, in the npz files' order
    fits = trainer.spin.fits
    assert bool(fits.known.all()) and fits.pose.shape == (6 * N, 72)
    for k, (_npz, _folder, name, _) in enumerate(SETS):
        static = np.load(spin_root / "static_fits" / name)
        np.testing.assert_allclose(fits.pose[k * N:(k + 1) * N].numpy(), static[:, :72], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(fits.betas[k * N:(k + 1) * N].numpy(), static[:, 72:], rtol=1e-6, atol=1e-7)
    # ImageNet weights in the encoder, SPIN's mean parameters as the start
    ref = torch.load(spin_root / "resnet50-0676ba61.pth", weights_only=True)
    torch.testing.assert_close(trainer.model.encoder.net.conv1.weight, ref["conv1.weight"])
    mean = np.load(spin_root / "smpl_mean_params.npz")
    np.testing.assert_allclose(trainer.model.regressor.init_pose[0].numpy(), mean["pose"], rtol=1e-6)
    trainer.fit()
    assert trainer.step == 2 and (tmp_path / "run" / "last.pt").is_file()


def test_static_fits_of_the_wrong_length_are_refused(spin_root, tmp_path):
    bad = tmp_path / "bad_fits.npy"
    np.save(bad, np.zeros((N + 1, 82)))
    config = load_config("spin_paper", overrides(spin_root))
    config.data.train[0].fits = str(bad)
    with pytest.raises(ConfigError, match=r"bad_fits.npy has shape \(4, 82\); expected \(3, 82\)") as info:
        Trainer(config, spin_root, tmp_path / "run")
    assert "\n" not in str(info.value)


def test_an_imported_spin_checkpoint_starts_a_run(spin_root, tmp_path):
    from test_spin_import import spin_state_dict, write_spin_checkpoint
    from hmr_fast.model.importers import import_checkpoint
    path = write_spin_checkpoint(tmp_path / "model_checkpoint.pt", spin_state_dict(1))
    imported = import_checkpoint("spin", path, tmp_path / "spin.pt")
    config = load_config("spin_paper", overrides(spin_root) + [f"model.init={imported}"])
    trainer = Trainer(config, spin_root, tmp_path / "run")
    torch.testing.assert_close(trainer.model.regressor.decpose.weight, spin_state_dict(1)["decpose.weight"])
    with pytest.raises(ConfigError, match="regressor"):
        Trainer(load_config("spin_paper", overrides(spin_root) + [f"model.init={imported}", "model.regressor=hmr"]),
                spin_root, tmp_path / "run2")
