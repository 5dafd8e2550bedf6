"""Bad labels are found when a dataset opens (issue 15 §2): SPIN npz, COCO json, the pose
prior; data.drop_bad_labels drops and counts them instead; a run whose loss turns NaN/Inf
stops with TrainingDiverged and keeps its last good checkpoint."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hmr_fast import cli
from hmr_fast.data.coco import CocoDataset
from hmr_fast.data.prior import PosePrior
from hmr_fast.data.spin_npz import SpinDataset, load_npz
from hmr_fast.data.synth import synthesize
from hmr_fast.errors import DataError, HmrFastError, TrainingDiverged
from hmr_fast.training import losses
from hmr_fast.training.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
SMOKE = str(CONFIGS / "synthetic_smoke.yaml")
TINY = ["model.img_size=64", "model.smpl_backend=reference", "data.num_workers=0", "train.batch_size=4",
        "train.log_every=1", "train.eval_every=1000", "data.val_max_samples=4", "train.cpu_threads=1"]


def _spin_arrays(n=50, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(n, 24, 4))
    S[..., 3] = 1
    return {"imgname": np.array([f"im{i}.jpg" for i in range(n)]), "center": rng.uniform(50, 100, (n, 2)),
            "scale": rng.uniform(0.5, 1.5, n), "part": np.concatenate([rng.uniform(0, 200, (n, 24, 2)),
                                                                       rng.integers(0, 2, (n, 24, 1))], -1),
            "openpose": np.zeros((n, 25, 3)), "S": S, "pose": rng.normal(size=(n, 72)) * 0.1,
            "shape": rng.normal(size=(n, 10)), "has_smpl": np.ones(n), "gender": np.array(["m"] * n)}


def _save(tmp_path, arrays, name="train.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _set(arrays, key, rows, value, index=(slice(None),)):
    a = arrays[key].astype(np.float64)
    a[(rows,) + index] = value
    arrays[key] = a
    return arrays


# ---------------------------------------------------------------------------------------
# SPIN npz
# ---------------------------------------------------------------------------------------
def test_clean_npz_loads_with_every_key(tmp_path):
    arrays = load_npz(_save(tmp_path, _spin_arrays()))
    assert len(arrays["imgname"]) == 50 and "gender" not in arrays  # ignored keys are not read


def test_nan_in_part_names_file_key_and_rows(tmp_path):
    path = _save(tmp_path, _set(_spin_arrays(), "part", [3, 17, 40], np.nan, (5, 0)))
    with pytest.raises(DataError) as err:
        SpinDataset(path, tmp_path)
    assert str(err.value).startswith(f"{path}: key 'part' has NaN/Inf in rows [3, 17, 40] (3 rows)")
    assert "data.drop_bad_labels=true" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key, rows, value, index, message", [
    ("center", [7], np.inf, (0,), "key 'center' has NaN/Inf in rows [7] (1 row)"),
    ("scale", [2, 9], 0.0, (), "key 'scale' has a zero or negative scale in rows [2, 9] (2 rows)"),
    ("scale", [4], -1.0, (), "key 'scale' has a zero or negative scale in rows [4] (1 row)"),
    ("scale", [4], np.nan, (), "key 'scale' has NaN/Inf in rows [4]"),
    ("part", [1], 1.5, (0, 2), "key 'part' has visibility outside [0, 1] in rows [1] (1 row)"),
    ("part", [1], -0.5, (3, 2), "key 'part' has visibility outside [0, 1] in rows [1]"),
    ("openpose", [0], np.nan, (3, 1), "key 'openpose' has NaN/Inf in rows [0]"),
    ("openpose", [5], 2.0, (3, 2), "key 'openpose' has confidence outside [0, 1] in rows [5]"),
    ("S", [8], 2.0, (0, 3), "key 'S' has confidence outside [0, 1] in rows [8]"),
    ("S", [8], -np.inf, (0, 1), "key 'S' has NaN/Inf in rows [8]"),
    ("pose", list(range(10, 20)), np.nan, (0,), "key 'pose' has NaN/Inf in rows [10, 11, 12, 13, 14, ...] (10 rows)"),
    ("shape", [49], np.nan, (9,), "key 'shape' has NaN/Inf in rows [49]"),
    ("has_smpl", [3], 0.5, (), "key 'has_smpl' has values other than 0 and 1 in rows [3]"),
    ("center", [6], 1e300, (1,), "key 'center' has values beyond float32's range in rows [6]"),
])
def test_bad_label_values_name_the_key_and_rows(tmp_path, key, rows, value, index, message):
    path = _save(tmp_path, _set(_spin_arrays(), key, rows, value, index))
    with pytest.raises(DataError) as err:
        load_npz(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


@pytest.mark.parametrize("key, value, message", [
    ("openpose", np.zeros((50, 24, 3)), "key 'openpose' must have shape (50, 25, 3)"),
    ("center", np.full((50, 2), "x"), "key 'center' must hold numbers, got dtype <U1"),
    ("imgname", np.array("one.jpg"), "key 'imgname' must be a 1-D array of strings"),
    ("imgname", np.array([], dtype=str), "has no samples"),
    ("scale", np.ones(50, dtype=complex), "key 'scale' must hold numbers"),
])
def test_wrong_shapes_and_dtypes_are_refused(tmp_path, key, value, message):
    arrays = _spin_arrays()
    arrays[key] = value
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_npz(_save(tmp_path, arrays))


def test_drop_bad_labels_drops_counts_and_logs(tmp_path, caplog):
    arrays = _set(_spin_arrays(), "part", [3, 17, 40], np.nan, (5, 0))
    arrays = _set(arrays, "scale", [17, 20], -2.0, ())
    path = _save(tmp_path, arrays)
    with caplog.at_level(logging.WARNING):
        ds = SpinDataset(path, tmp_path, drop_bad_labels=True)
    assert len(ds) == 46 and ds.dropped == 4
    assert list(ds.imgname[:4]) == ["im0.jpg", "im1.jpg", "im2.jpg", "im4.jpg"]
    assert np.isfinite(ds.keypoints).all() and (ds.box_size > 0).all()
    text = caplog.text
    assert f"{path}: key 'part' has NaN/Inf in 3 rows" in text and "key 'scale'" in text and "2 rows" in text
    clean = SpinDataset(_save(tmp_path, _spin_arrays(), "clean.npz"), tmp_path, drop_bad_labels=True)
    assert clean.dropped == 0 and len(clean) == 50


def test_drop_with_every_row_bad_is_still_an_error(tmp_path):
    path = _save(tmp_path, _set(_spin_arrays(n=4), "center", [0, 1, 2, 3], np.nan, (0,)))
    with pytest.raises(DataError, match="all 4 rows have bad labels"):
        SpinDataset(path, tmp_path, drop_bad_labels=True)


def test_validation_is_vectorised_for_a_million_rows(tmp_path):
    """A million-row npz is checked in well under a few seconds (no Python loop per row)."""
    import time

    n = 1_000_000
    arrays = {"imgname": np.full(n, "a.jpg"), "center": np.zeros((n, 2), np.float32),
              "scale": np.ones(n, np.float32), "part": np.zeros((n, 24, 3), np.float32)}
    arrays["part"][n - 1, 0, 0] = np.nan
    path = _save(tmp_path, arrays)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=rf"rows \[{n - 1}\] \(1 row\)"):
        load_npz(path)
    assert time.perf_counter() - t0 < 10


# ---------------------------------------------------------------------------------------
# COCO json
# ---------------------------------------------------------------------------------------
def _coco(n=4) -> dict:
    kp = np.zeros((17, 3))
    kp[:, :2] = np.arange(34).reshape(17, 2)
    kp[:, 2] = 2
    return {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": "two", "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1 if i % 2 else "two", "keypoints": kp.flatten().tolist(),
                             "bbox": [0, 0, 40, 20 + i], "iscrowd": 0} for i in range(n)]}


def _write_coco(tmp_path, coco, name="c.json"):
    path = tmp_path / name
    path.write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["annotations"][2]["keypoints"].__setitem__(4, float("nan")),
     "key 'keypoints' has NaN/Inf in annotations [2] (1 annotation)"),
    (lambda c: c["annotations"][1]["keypoints"].__setitem__(5, 3),
     "key 'keypoints' has a visibility v outside {0, 1, 2} in annotations [1]"),
    (lambda c: c["annotations"][3]["bbox"].__setitem__(2, 0),
     "key 'bbox' has a width or height <= 0 in annotations [3]"),
    (lambda c: c["annotations"][3]["bbox"].__setitem__(3, float("inf")), "key 'bbox' has NaN/Inf in annotations [3]"),
    (lambda c: c["annotations"][0].__setitem__("bbox", "0 0 4 4"),
     "key 'bbox' is not a list of 4 numbers [x, y, w, h] in annotations [0]"),
    (lambda c: c["annotations"][0].__setitem__("keypoints", [1, 2, 2]),
     "key 'keypoints' is not a list of 17 x 3 = 51 numbers in annotations [0]"),
    (lambda c: c["annotations"][0]["keypoints"].__setitem__(0, "1"), "key 'keypoints' is not a list of 17 x 3"),
    (lambda c: c["annotations"][1].pop("keypoints"), "key 'keypoints' is missing in annotations [1]"),
    (lambda c: c["annotations"][1].__setitem__("image_id", 99),
     "key 'image_id' refers to an image that 'images' does not list in annotations [1]"),
    (lambda c: c["annotations"].__setitem__(1, 7), "key 'annotations' has an entry that is not a JSON object"),
    (lambda c: c.__setitem__("annotations", {}), "key 'annotations' must be a list"),
    (lambda c: c["images"][0].pop("file_name"), "images[0] is not an object with 'id' and 'file_name'"),
    (lambda c: c["images"][0].__setitem__("id", [1]), "images[0] must have an integer or string 'id'"),
])
def test_bad_coco_labels_name_the_key_and_annotations(tmp_path, edit, message):
    coco = _coco()
    edit(coco)
    path = _write_coco(tmp_path, coco)
    with pytest.raises(DataError) as err:
        CocoDataset(path, tmp_path, min_keypoints=1)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


@pytest.mark.parametrize("text, message", [
    ('{"images": [', "not valid JSON"), ("[1, 2]", "must be a JSON object"), ("[" * 100_000, "nested too deeply"),
    ('{"images": []}', "missing key 'annotations'"),
])
def test_malformed_coco_json_is_a_data_error(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        CocoDataset(_write_coco(tmp_path, text), tmp_path)


def test_coco_crowd_and_unused_people_are_not_checked_and_drop_counts(tmp_path, caplog):
    coco = _coco(n=6)
    coco["annotations"][0]["iscrowd"] = 1
    coco["annotations"][0]["keypoints"][0] = float("nan")  # crowd: skipped, never read
    coco["annotations"][1]["keypoints"][2::3] = [0] * 17  # nobody labelled: unused, its empty box is fine
    coco["annotations"][1]["bbox"] = [0, 0, 0, 0]
    assert len(CocoDataset(_write_coco(tmp_path, coco), tmp_path, min_keypoints=1)) == 4
    coco["annotations"][2]["keypoints"][7] = float("inf")
    coco["annotations"][4]["bbox"][2] = -1
    path = _write_coco(tmp_path, coco)
    with caplog.at_level(logging.WARNING):
        ds = CocoDataset(path, tmp_path, min_keypoints=1, drop_bad_labels=True)
    assert len(ds) == 2 and ds.dropped == 2
    assert f"{path}: key 'keypoints' has NaN/Inf in 1 annotation" in caplog.text and "key 'bbox'" in caplog.text


# ---------------------------------------------------------------------------------------
# Pose prior
# ---------------------------------------------------------------------------------------
def test_prior_nan_names_file_key_and_rows_and_drop_counts(tmp_path, caplog):
    poses = np.random.default_rng(0).normal(size=(20, 156))
    poses[[4, 9], 10] = np.nan
    poses[5, 100] = np.nan  # a hand joint SMPL does not use: not a problem
    np.savez(tmp_path / "amass.npz", poses=poses, betas=np.zeros(16), trans=np.zeros((20, 3)))
    with pytest.raises(DataError) as err:
        PosePrior(tmp_path / "amass.npz")
    assert str(err.value).startswith(f"{tmp_path / 'amass.npz'}: key 'poses' has NaN/Inf in rows [4, 9] (2 rows)")
    with caplog.at_level(logging.WARNING):
        prior = PosePrior(tmp_path / "amass.npz", drop_bad_labels=True)
    assert len(prior) == 18 and prior.dropped == 2 and torch.isfinite(prior.poses).all()
    assert "key 'poses' has NaN/Inf in 2 rows" in caplog.text
    np.savez(tmp_path / "plain.npz", pose=np.zeros((3, 72)), shape=np.full((3, 10), np.inf))
    with pytest.raises(DataError, match=r"plain.npz: key 'shape' has NaN/Inf in rows \[0, 1, 2\] \(3 rows\)"):
        PosePrior(tmp_path / "plain.npz")


@pytest.mark.parametrize("arrays, message", [
    ({"poses": np.zeros((0, 156)), "betas": np.zeros(16)}, "key 'poses' has no rows"),
    ({"poses": np.zeros((5, 156)), "betas": np.zeros((4, 16))}, r"key 'betas' must be \(>=10,\) or \(T, >=10\)"),
    ({"poses": np.full((5, 156), "a"), "betas": np.zeros(16)}, "key 'poses' must hold numbers"),
    ({"pose": np.zeros((5, 72)), "betas": np.zeros(3)}, "key 'betas' must be"),
])
def test_prior_shapes_and_dtypes_are_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "p.npz", **arrays)
    with pytest.raises(DataError, match=message):
        PosePrior(tmp_path / "p.npz")


# ---------------------------------------------------------------------------------------
# Config and the training run
# ---------------------------------------------------------------------------------------
def test_drop_bad_labels_config_key():
    assert load_config(None).data.drop_bad_labels is False
    assert load_config(None, ["data.drop_bad_labels=true"]).data.drop_bad_labels is True
    with pytest.raises(ConfigError, match="'data.drop_bad_labels' must be true or false"):
        load_config(None, ["data.drop_bad_labels=3"])


def test_training_diverged_is_a_user_error():
    assert issubclass(TrainingDiverged, HmrFastError) and issubclass(TrainingDiverged, RuntimeError)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, num_images=12, num_val=4, num_prior=100, img_size=64, seed=2)
    return out


def _argv(data, out, *extra, steps=2):
    return ["train", "--config", SMOKE, "--data", str(data), "--out", str(out), "--steps", str(steps), *TINY, *extra]


def _user_error(argv, capsys) -> str:
    """The error line `hmr-fast` printed (exit 2, no traceback); the progress bar may precede it."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("hmr-fast ")]
    assert len(lines) == 1 and "Traceback" not in err and err.endswith(lines[0] + "\n"), err
    return lines[0]


def test_train_refuses_nan_labels_before_the_first_step_or_drops_them(synth_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    arrays = dict(np.load(data / "train.npz"))
    arrays["part"][[1, 5], 3, 1] = np.nan
    np.savez(data / "train.npz", **arrays)
    line = _user_error(_argv(data, tmp_path / "run"), capsys)
    assert line == (f"hmr-fast train: {data / 'train.npz'}: key 'part' has NaN/Inf in rows [1, 5] (2 rows); "
                    "fix the file, or drop such samples with data.drop_bad_labels=true")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert cli.main(_argv(data, tmp_path / "run2", "data.drop_bad_labels=true")) == 0
    records = [json.loads(x) for x in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["data/dropped_bad_labels"] == 2 and "data/dropped_bad_labels" not in records[1]
    assert all(np.isfinite(r["loss/total"]) for r in records if "loss/total" in r)


def _finite_checkpoint(path) -> int:
    ckpt = torch.load(path, weights_only=True)
    for part in ("model", "discriminator"):
        assert all(torch.isfinite(v).all() for v in ckpt[part].values() if v.is_floating_point()), part
    return ckpt["step"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synth_dir, tmp_path, capsys, monkeypatch):
    """The keypoint loss turns NaN at step 4 (checkpoints every 3, log lines every 2): the run
    stops at step 4 with one line; last.pt still holds step 3's finite weights."""
    real, calls = losses.keypoint_loss, []

    def keypoint_loss(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) >= 4 else loss

    monkeypatch.setattr(losses, "keypoint_loss", keypoint_loss)
    run = tmp_path / "run"
    line = _user_error(_argv(synth_dir, run, "train.log_every=2", "train.checkpoint_every=3", steps=8), capsys)
    assert line == (f"hmr-fast train: training diverged: the loss became NaN/Inf at step 4, in the log interval of "
                    f"steps 3-4; {run / 'last.pt'} (step 3) was kept, not overwritten. Try a lower optim.encoder_lr "
                    "(now 0.0001), gradient clipping with optim.grad_clip (e.g. 1.0; now off), and check the data")
    assert len(calls) == 4 and _finite_checkpoint(run / "last.pt") == 3
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and np.isnan(records[-1]["loss/total"])
    with pytest.raises(TrainingDiverged, match="at step 4"):  # --debug: the exception itself
        calls.clear()
        cli.main(_argv(synth_dir, tmp_path / "debug", "train.checkpoint_every=3", steps=8) + ["--debug"])


def test_nan_weights_are_never_saved(synth_dir, tmp_path, capsys, monkeypatch):
    """Gradients turn NaN at step 2 while its loss is finite: the checkpoint due at step 2 is
    refused, so last.pt keeps step 1."""
    from hmr_fast.training.train import Trainer

    real, calls = Trainer._clip, []

    def clip(self, params):
        params = list(params)
        calls.append(1)
        if len(calls) == 3:  # step 2's encoder step (each step clips the encoder, then the discriminator)
            for p in params:
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
        real(self, params)

    monkeypatch.setattr(Trainer, "_clip", clip)
    run = tmp_path / "run"
    line = _user_error(_argv(synth_dir, run, "train.log_every=5", "train.checkpoint_every=1", steps=4), capsys)
    assert "training diverged: the weights became NaN/Inf by step 2 (the losses were still finite)" in line
    assert f"{run / 'last.pt'} (step 1) was kept" in line
    assert _finite_checkpoint(run / "last.pt") == 1
