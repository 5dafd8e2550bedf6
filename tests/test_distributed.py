"""The README's multi-GPU promise, `torchrun --nproc_per_node N -m hmr_fast.training.train`,
run for real: two processes on the CPU (gloo), with tiny settings so that it takes seconds."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hmr_fast.data.synth import synthesize
from hmr_fast.training.train import WEIGHTS_DIGEST_ENV, weights_digest
from test_training import SMOKE, TINY

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo")
LAUNCH_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, num_images=20, num_val=4, num_prior=200, img_size=64, seed=1)
    return out


def _torchrun(data, out, digests, steps, *extra, resume=False):
    """Two processes of `python -m hmr_fast.training.train`; each writes its final weights'
    digest to digests/rank<R>.json. Returns rank 0's and rank 1's."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", "hmr_fast.training.train", "--config", SMOKE, "--data", str(data), "--out", str(out),
            "--steps", str(steps), *TINY, *extra] + (["--resume"] if resume else [])
    env = {**os.environ, WEIGHTS_DIGEST_ENV: str(digests), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads((Path(digests) / f"rank{r}.json").read_text()) for r in range(2)]


def _loss_records(out):
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss/total" in r}, records


def _checkpoint_digest(out):
    ckpt = torch.load(Path(out) / "last.pt", weights_only=True)
    return ckpt, weights_digest(ckpt["model"], ckpt["discriminator"])


def test_two_processes_train_one_model_and_resume_exactly(synth_dir, tmp_path):
    """2 ranks x 2 images a step: rank 0 alone writes the checkpoint and the logs, both ranks
    end with the same weights (the checkpoint's), and 2 steps + --resume to 4 gives the
    uninterrupted run's losses and weights exactly."""
    straight = tmp_path / "straight"
    ranks = _torchrun(synth_dir, straight, tmp_path / "d_straight", 4, "train.checkpoint_every=2")
    assert [(d["rank"], d["world"], d["step"]) for d in ranks] == [(0, 2, 4), (1, 2, 4)]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas in step
    ckpt, digest = _checkpoint_digest(straight)
    assert digest == ranks[0]["weights"] and ckpt["step"] == 4
    assert ckpt["data"]["batches_consumed"] == 4 and len(ckpt["rng"]) == 2  # every rank's RNG
    # one writer: one checkpoint, one metrics log with each step once, one TensorBoard file
    assert sorted(p.name for p in straight.iterdir()) == ["config.yaml", "last.pt", "metrics.jsonl", "tb"]
    assert len(list((straight / "tb").iterdir())) == 1
    losses, records = _loss_records(straight)
    assert [r["step"] for r in records if "loss/total" in r] == [1, 2, 3, 4]
    assert losses[3]["loss/total"] != losses[4]["loss/total"]

    resumed = tmp_path / "resumed"
    first = _torchrun(synth_dir, resumed, tmp_path / "d_first", 2)
    assert first[0]["weights"] == first[1]["weights"] != ranks[0]["weights"]
    again = _torchrun(synth_dir, resumed, tmp_path / "d_again", 4, resume=True)
    assert again[0]["weights"] == again[1]["weights"] == ranks[0]["weights"]  # bit for bit the straight run's
    assert _checkpoint_digest(resumed)[1] == ranks[0]["weights"]
    resumed_losses, records = _loss_records(resumed)
    assert [r["step"] for r in records if "loss/total" in r] == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss/total", "loss/keypoints", "loss/adversarial", "loss/disc_real", "loss/disc_fake"):
            assert resumed_losses[step][key] == losses[step][key], (step, key)


def test_spin_fits_are_shared_by_both_processes(synth_dir, tmp_path):
    """SPIN's table of fits: each rank fits the samples it draws, and every rank stores every
    rank's fits, so rank 0's table (the checkpoint's) knows the samples both ranks drew:
    3 steps x 2 ranks x 2 samples, all different within the epoch's permutation."""
    labels = dict(np.load(synth_dir / "train.npz"))
    for key in ("S", "pose", "shape", "has_smpl"):  # 2D keypoints only: every sample is fitted
        labels.pop(key)
    np.savez(synth_dir / "train2d_spin.npz", **labels)
    assert len(labels["imgname"]) >= 12
    out = tmp_path / "spin"
    ranks = _torchrun(synth_dir, out, tmp_path / "d_spin", 3, "spin.enabled=true", "spin.fit_iters=2",
                      "spin.torso_iters=0", "data.train=[{kind: spin, path: train2d_spin.npz, images: .}]")
    assert ranks[0]["weights"] == ranks[1]["weights"]
    ckpt, _ = _checkpoint_digest(out)
    assert int(ckpt["spin"]["known"].sum()) == 3 * 2 * 2  # rank 0's own draws alone would be 6
