"""Training: losses, config, the smoke run (loss falls), exact resume, bad data, eval."""
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hmr_fast import cli
from hmr_fast.rotations import rodrigues
from hmr_fast.data.spin_npz import DataError
from hmr_fast.data.synth import synthesize
from hmr_fast.training import losses
from hmr_fast.training.config import ConfigError, config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
SMOKE = str(CONFIGS / "synthetic_smoke.yaml")
# Tiny and quick: 64 px crops, resnet18, batch 4, no workers, one thread (faster than two
# on a shared 2-core machine).
TINY = ["model.img_size=64", "model.smpl_backend=reference", "data.num_workers=0", "train.batch_size=4",
        "train.log_every=1", "train.eval_every=1000", "data.val_max_samples=4", "train.cpu_threads=1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, num_images=20, num_val=4, num_prior=200, img_size=64, seed=1)
    return out


def _train_argv(data, out, *extra, steps=4, resume=False):
    argv = ["train", "--config", SMOKE, "--data", str(data), "--out", str(out), "--steps", str(steps), *TINY, *extra]
    return argv + ["--resume"] if resume else argv


def _train(data, out, *extra, steps=4, resume=False):
    assert cli.main(_train_argv(data, out, *extra, steps=steps, resume=resume)) == 0
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _user_error(argv, capsys) -> str:
    """The one line `hmr-fast` prints for a user's error (exit 2, no traceback); --debug raises it."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hmr-fast {argv[0]}: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _loss_records(records):
    return {r["step"]: r for r in records if "loss/total" in r}


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------
def test_keypoint_loss_hand_computed_and_visibility_weighted():
    gt = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]])
    pred = torch.tensor([[[0.2, -0.4], [5.0, 5.0]]], requires_grad=True)
    loss = losses.keypoint_loss(pred, gt)
    assert loss.item() == pytest.approx((0.2 + 0.4) / 2)  # the invisible keypoint does not count
    loss.backward()
    assert pred.grad[0, 1].abs().sum() == 0 and pred.grad[0, 0].abs().sum() > 0


def test_joints3d_loss_is_pelvis_aligned_and_masked():
    torch.manual_seed(0)
    gt = torch.cat([torch.randn(2, 19, 3), torch.ones(2, 19, 1)], dim=-1)
    shifted = gt[..., :3] + torch.tensor([1.0, -2.0, 3.0])
    assert losses.joints3d_loss(shifted, gt, torch.ones(2)).item() == pytest.approx(0.0, abs=1e-10)
    pred = (gt[..., :3] + 0.1 * torch.randn(2, 19, 3)).requires_grad_()
    loss = losses.joints3d_loss(pred, gt, torch.ones(2))
    assert loss.item() > 0
    loss.backward()
    assert pred.grad[:, 14:].abs().sum() == 0  # only LSP's 14 joints count
    assert losses.joints3d_loss(pred, gt, torch.zeros(2)).item() == 0  # no sample has 3D


def test_smpl_loss_zero_at_ground_truth_with_gradients():
    pose = torch.randn(3, 72) * 0.3
    betas = torch.randn(3, 10)
    rot = rodrigues(pose.view(3, 24, 3))
    assert losses.smpl_loss(rot, betas, rot, betas, torch.ones(3)).item() == pytest.approx(0.0, abs=1e-10)
    pred_betas = (betas + 1).requires_grad_()
    loss = losses.smpl_loss(rot, pred_betas, rot, betas, torch.tensor([1.0, 0.0, 1.0]))
    # 0.5 * mean over 2 samples x 226 numbers of the squared error (10 betas off by 1 each)
    assert loss.item() == pytest.approx(0.5 * 20 / (2 * 226))
    loss.backward()
    assert pred_betas.grad[1].abs().sum() == 0 and pred_betas.grad[0].abs().sum() > 0


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["synthetic_smoke.yaml", "synthetic.yaml", "hmr_paper.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.train.batch_size > 0 and config.data.train


def test_paper_defaults():
    c = load_config(None)
    assert (c.optim.encoder_lr, c.optim.discriminator_lr, c.train.batch_size) == (1e-5, 1e-4, 64)
    assert (c.loss.keypoint_weight, c.loss.joints3d_weight, c.loss.adversarial_weight) == (60, 60, 1)
    assert c.model.backbone == "resnet50" and c.model.ief_iters == 3


def test_overrides_and_errors_name_the_key():
    c = load_config(CONFIGS / "synthetic_smoke.yaml", ["train.steps=7", "optim.encoder_lr=1e-3",
                                                        "data.prior=[a.npz, b]", "model.pretrained=null"])
    assert c.train.steps == 7 and c.optim.encoder_lr == 1e-3 and c.data.prior == ["a.npz", "b"]
    assert isinstance(config_to_dict(c)["data"]["train"][0], dict)
    with pytest.raises(ConfigError, match="'model.bakbone'"):
        load_config(None, ["model.bakbone=resnet18"])
    with pytest.raises(ConfigError, match="'train.steps'.*integer"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="'model.pose_repr'"):
        load_config(None, ["model.pose_repr=quaternion"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


@pytest.mark.parametrize("override, message", [
    ("train.steps=-5", "'train.steps' must be >= 1, got -5"),
    ("train.batch_size=0", "'train.batch_size' must be >= 1, got 0"),
    ("optim.encoder_lr=-0.001", "'optim.encoder_lr' must be >= 0.0, got -0.001"),
    ("model.dropout=1.5", "'model.dropout' must be in [0.0, 0.99], got 1.5"),
    ("data.train=[{weight: -1}]", "'data.train[0].weight' must be >= 0.0, got -1.0"),
    ("optim.grad_clip=.nan", "'optim.grad_clip' must be a number"),
])
def test_out_of_range_numbers_are_refused_naming_the_key_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_a_packaged_config_is_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("synthetic_smoke") == load_config(CONFIGS / "synthetic_smoke.yaml")
    with pytest.raises(ConfigError, match="not found .*packaged config: .*synthetic_smoke"):
        load_config("synthetic_smok")


# ---------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------
def test_smoke_training_loss_falls(synth_dir, tmp_path):
    """Overfit 16 synthetic images: the keypoint loss must fall clearly within 30 steps."""
    records = _train(synth_dir, tmp_path / "run", "augment.enabled=false", "optim.encoder_lr=1e-3",
                     "train.batch_size=8", steps=30)
    kp = [r["loss/keypoints"] for r in _loss_records(records).values()]
    assert len(kp) == 30
    first, last = np.mean(kp[:5]), np.mean(kp[-5:])
    assert last < 0.75 * first, kp
    assert all(np.isfinite(r["loss/total"]) for r in _loss_records(records).values())
    final = records[-1]
    assert {"eval/pa_mpjpe_mm", "eval/mpjpe_mm", "eval/pck@0.05"} <= set(final)
    assert (tmp_path / "run" / "tb").is_dir() and (tmp_path / "run" / "last.pt").is_file()


def test_resume_continues_exactly(synth_dir, tmp_path):
    """4 steps straight vs 2 steps, stop, --resume to 4: steps 3 and 4 give identical losses
    (augmentation, dropout, the prior draws and both optimizers all continue exactly)."""
    straight = _loss_records(_train(synth_dir, tmp_path / "a", "train.checkpoint_every=2", steps=4))
    _train(synth_dir, tmp_path / "b", steps=2)
    resumed = _loss_records(_train(synth_dir, tmp_path / "b", steps=4, resume=True))
    for step in (3, 4):
        for key in ("loss/total", "loss/keypoints", "loss/adversarial", "loss/disc_real", "loss/disc_fake"):
            assert resumed[step][key] == straight[step][key], (step, key)
    assert straight[3]["loss/total"] != straight[4]["loss/total"]  # the comparison is not vacuous
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["data"]["batches_consumed"] == 4


def test_init_fine_tunes_from_a_run_or_a_packed_checkpoint(synth_dir, tmp_path):
    """model.init: a new run starts from another run's HMR and discriminator weights (step 0,
    fresh optimizers); a packed checkpoint (float16 weights, no discriminator) works too."""
    from hmr_fast.model.checkpoint import pack_checkpoint as pack
    from hmr_fast.training.train import Trainer

    _train(synth_dir, tmp_path / "a", steps=2)
    source = tmp_path / "a" / "last.pt"
    saved = torch.load(source, weights_only=True)
    trainer = Trainer(load_config(SMOKE, TINY + [f"model.init={source}"]), synth_dir, tmp_path / "b")
    assert trainer.step == 0 and not trainer.e_opt.state
    own = trainer.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved["model"].items())
    disc = trainer.discriminator.state_dict()
    assert all(torch.equal(disc[k], v) for k, v in saved["discriminator"].items())

    packed = pack(source, tmp_path / "packed.pt")
    trainer = Trainer(load_config(SMOKE, TINY + [f"model.init={packed}"]), synth_dir, tmp_path / "c")
    own = trainer.model.state_dict()
    for k, v in saved["model"].items():
        assert own[k].dtype == v.dtype and torch.equal(own[k], v.half().to(v.dtype)), k
    fresh = trainer.discriminator.state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in saved["discriminator"].items())
    records = _loss_records(_train(synth_dir, tmp_path / "d", f"model.init={packed}", steps=2))
    assert sorted(records) == [1, 2] and all(np.isfinite(r["loss/total"]) for r in records.values())


def test_resuming_a_packed_checkpoint_says_to_use_model_init(synth_dir, tmp_path, capsys):
    from hmr_fast.model.checkpoint import pack_checkpoint

    _train(synth_dir, tmp_path / "a", steps=1)
    (tmp_path / "b").mkdir()
    pack_checkpoint(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    err = _user_error(_train_argv(synth_dir, tmp_path / "b", steps=2, resume=True), capsys)
    assert "cannot be resumed" in err and "model.init=" in err


def test_init_that_does_not_fit_is_an_error_naming_the_key(synth_dir, tmp_path):
    from hmr_fast.training.train import Trainer

    with pytest.raises(ConfigError, match="model.init: checkpoint .*missing.pt not found"):
        Trainer(load_config(SMOKE, TINY + [f"model.init={tmp_path / 'missing.pt'}"]), synth_dir, tmp_path / "x")
    _train(synth_dir, tmp_path / "a", steps=1)
    init = f"model.init={tmp_path / 'a' / 'last.pt'}"
    with pytest.raises(ConfigError, match="model.init: .* model.backbone='resnet18', this config 'resnet34'"):
        Trainer(load_config(SMOKE, TINY + [init, "model.backbone=resnet34"]), synth_dir, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_refuses_to_overwrite_a_run_without_resume(synth_dir, tmp_path, capsys):
    _train(synth_dir, tmp_path / "r", steps=1)
    assert "--resume" in _user_error(_train_argv(synth_dir, tmp_path / "r", steps=2), capsys)
    with pytest.raises(FileExistsError, match="--resume"):
        cli.main(_train_argv(synth_dir, tmp_path / "r", "--debug", steps=2))


def test_corrupt_image_is_skipped_and_counted(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    names = np.load(data / "train.npz")["imgname"]
    (data / names[3]).write_bytes(b"\xff\xd8 truncated jpeg")
    (data / names[7]).unlink()
    records = _train(data, tmp_path / "run", steps=4)  # 4 x 4 = one epoch of the 16 images
    assert _loss_records(records)[4]["skipped_images"] == 2


def test_npz_with_missing_key_fails_before_training(synth_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    arrays = dict(np.load(data / "train.npz"))
    del arrays["part"]
    np.savez(data / "train.npz", **arrays)
    assert "'part'" in _user_error(_train_argv(data, tmp_path / "run", steps=2), capsys)
    with pytest.raises(DataError, match="'part'"):
        cli.main(_train_argv(data, tmp_path / "run", "--debug", steps=2))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_eval_command_prints_metrics(synth_dir, tmp_path, capsys):
    _train(synth_dir, tmp_path / "run", steps=1)
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(synth_dir),
                     "--device", "cpu", "--workers", "0", "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    for name in ("MPJPE", "PA-MPJPE", "PCK@0.05", "PCK@0.1"):
        assert name in printed
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["samples"] == 4 and result["pa_mpjpe_mm"] <= result["mpjpe_mm"] + 1e-6


# ---------------------------------------------------------------------------------------
# What a killed run leaves behind
# ---------------------------------------------------------------------------------------
def _killed_atomic_write(target: Path) -> Path:
    """The temp file a process SIGKILLed inside atomic_path(target) leaves (as a checkpoint write does)."""
    import subprocess
    import sys

    from hmr_fast import atomic

    # atomic.py alone (importing the package would import torch: seconds per call)
    code = ("import importlib.util, os, signal, sys\n"
            "spec = importlib.util.spec_from_file_location('atomic', sys.argv[2])\n"
            "atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)\n"
            "with atomic.atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half a checkpoint' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = set(target.parent.iterdir()) if target.parent.is_dir() else set()
    assert subprocess.run([sys.executable, "-c", code, str(target), atomic.__file__]).returncode == -9
    (left,) = set(target.parent.iterdir()) - before
    assert left.name.startswith(f".{target.name}.") and left.name.endswith(".tmp")
    return left


def test_resume_removes_the_temp_files_of_a_killed_checkpoint_write(synth_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hmr_fast.train")
    run = tmp_path / "run"
    stale = [_killed_atomic_write(run / "last.pt")]  # killed before its first checkpoint was written
    _train(synth_dir, run, steps=1)  # a fresh run into that folder cleans up too
    assert not stale[0].exists() and "removed 1 temp file(s)" in caplog.text and stale[0].name in caplog.text
    assert list(run.glob(".*.tmp")) == []

    stale = [_killed_atomic_write(run / name) for name in ("last.pt", "last.pt", "metrics.jsonl", "config.yaml")]
    others = [run / ".last.pt.tmp", run / "x.last.pt.abcd1234.tmp", run / ".best.pt.abcd1234.tmp",
              run / ".last.pt.abcd1234.tmp.bak", run / "notes.txt"]  # not temps atomic_path made for the run's files
    for p in others:
        p.write_text("keep")
    caplog.clear()
    records = _train(synth_dir, run, steps=2, resume=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    assert "removed 4 temp file(s)" in caplog.text and all(p.name in caplog.text for p in stale)
    assert [r["step"] for r in records if "loss/total" in r] == [1, 2]


def test_resume_after_a_kill_logs_each_step_once(synth_dir, tmp_path):
    """A run killed after logging steps its checkpoint does not hold: the resumed run logs them
    again, and metrics.jsonl and TensorBoard show each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    _train(synth_dir, run, steps=2)  # checkpoint at step 2
    checkpoint = (run / "last.pt").read_bytes()
    _train(synth_dir, run, steps=3, resume=True)  # logs step 3 (and its eval) ...
    (run / "last.pt").write_bytes(checkpoint)  # ... and is killed before that step's checkpoint
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss/tot')  # and while writing a line
    records = _train(synth_dir, run, steps=4, resume=True)
    assert [r["step"] for r in records if "loss/total" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval/mpjpe_mm" in r] == [2, 4]
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4]
    logged = {r["step"]: r["loss/total"] for r in records if "loss/total" in r}
    assert [e.value for e in events.Scalars("loss/total")] == pytest.approx([logged[s] for s in (1, 2, 3, 4)])
    assert [e.step for e in events.Scalars("eval/mpjpe_mm")] == [2, 4]


def _children(pid: int) -> set:
    """The pids of a process's children (Linux: the parent field of /proc/*/stat)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (killed, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="Linux: workers die with their parent there")
def test_data_workers_die_with_a_killed_trainer(synth_dir, tmp_path):
    """SIGKILL a training process: its DataLoader workers go with it at once (torch's own
    watchdog would notice only after up to 5 s)."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    argv = _train_argv(synth_dir, run, "data.num_workers=2", steps=100_000)
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hmr_fast.cli", *argv], stdout=subprocess.DEVNULL, stderr=err)
    workers = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers = {c for c in _children(proc.pid) if _comm(c) == "pt_data_worker"}
            if len(workers) == 2 and (run / "metrics.jsonl").is_file():  # training, the workers busy
                break
            time.sleep(0.1)
        assert proc.poll() is None and len(workers) == 2, (tmp_path / "stderr.txt").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(2.0)
        assert [w for w in workers if _running(w)] == []
    finally:
        for pid in [proc.pid, *workers]:  # the processes this test started, and only those
            if _running(pid) and (pid == proc.pid or _comm(pid) == "pt_data_worker"):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
