"""Fuzzing the loaders of untrusted bytes (issue 15 §2): a dataset npz, a COCO json, a prior
npz and a config YAML either load or raise the project's own error (DataError /
ConfigError) with a message; never another exception, never a hang, never code run.

The budget (HMR_FAST_FUZZ_EXAMPLES, HMR_FAST_FUZZ_SEED) is tests/fuzzing.py's.
"""
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hmr_fast.data.coco import CocoDataset
from hmr_fast.data.prior import PosePrior
from hmr_fast.data.spin_npz import SpinDataset
from hmr_fast.errors import DataError
from hmr_fast.training.config import ConfigError, load_config
from fuzzing import FUZZ

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _expect(error_type, load):
    """load() returns, or raises error_type with a one-line message; anything else fails."""
    try:
        load()
    except error_type as exc:
        assert str(exc) and "\n" not in str(exc), repr(exc)


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _spin_arrays(n=3) -> dict:
    return {"imgname": np.array([f"{i}.jpg" for i in range(n)]), "center": np.full((n, 2), 50.0),
            "scale": np.ones(n), "part": np.ones((n, 24, 3)), "S": np.ones((n, 24, 4)), "pose": np.zeros((n, 72)),
            "shape": np.zeros((n, 10)), "has_smpl": np.ones(n)}


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)
# Arrays of any dtype a user might save (no object arrays: np.savez would pickle them; see below).
dtypes = st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.boolean_dtypes(), hnp.complex_number_dtypes(),
                   hnp.unicode_string_dtypes(max_len=4), hnp.byte_string_dtypes(max_len=4))
any_array = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))


def _spin_like(n):
    """Arrays with the right keys and mostly right shapes, with extreme float values."""
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
    return st.fixed_dictionaries({
        "imgname": st.just(np.array([f"{i}.jpg" for i in range(n)])),
        "center": hnp.arrays(np.float64, (n, 2), elements=floats),
        "scale": hnp.arrays(np.float64, (n,), elements=floats),
        "part": hnp.arrays(np.float32, (n, 24, 3), elements=st.floats(-2, 2, width=32) | st.just(np.nan)),
    }, optional={"S": hnp.arrays(np.float64, (n, 24, 4), elements=floats),
                 "has_smpl": hnp.arrays(np.float64, (n,), elements=st.sampled_from([0.0, 1.0, 0.5, np.nan])),
                 "openpose": hnp.arrays(np.float64, (n, 25, 3), elements=st.floats(-1, 2))})


# ---------------------------------------------------------------------------------------
# Dataset npz
# ---------------------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=2000))
def test_fuzz_npz_random_bytes(tmp_path, data):
    (tmp_path / "t.npz").write_bytes(data)
    _expect(DataError, lambda: SpinDataset(tmp_path / "t.npz", tmp_path))


@FUZZ
@given(edit=edits)
def test_fuzz_npz_corrupted_file(tmp_path, edit):
    (tmp_path / "t.npz").write_bytes(_mutate(_npz_bytes(_spin_arrays()), edit))
    _expect(DataError, lambda: SpinDataset(tmp_path / "t.npz", tmp_path))


@FUZZ
@given(key=st.sampled_from(["imgname", "center", "scale", "part", "S", "pose", "shape", "has_smpl", "openpose"]),
       value=any_array, drop=st.booleans())
def test_fuzz_npz_key_with_any_array(tmp_path, key, value, drop):
    arrays = _spin_arrays()
    arrays[key] = value
    (tmp_path / "t.npz").write_bytes(_npz_bytes(arrays))
    _expect(DataError, lambda: SpinDataset(tmp_path / "t.npz", tmp_path, drop_bad_labels=drop))


@FUZZ
@given(arrays=st.integers(1, 4).flatmap(_spin_like), drop=st.booleans())
def test_fuzz_npz_label_values(tmp_path, arrays, drop):
    (tmp_path / "t.npz").write_bytes(_npz_bytes(arrays))
    try:
        ds = SpinDataset(tmp_path / "t.npz", tmp_path, drop_bad_labels=drop)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    # what loads is clean: finite, in range (training never sees a bad label)
    assert np.isfinite(ds.center).all() and (ds.box_size > 0).all() and np.isfinite(ds.box_size).all()
    assert np.isfinite(ds.keypoints).all() and ((ds.keypoints[..., 2] >= 0) & (ds.keypoints[..., 2] <= 1)).all()


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, (os.environ["HMR_FAST_FUZZ_MARKER"],))


def test_pickled_arrays_are_never_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    monkeypatch.setenv("HMR_FAST_FUZZ_MARKER", str(marker))
    arrays = _spin_arrays()
    arrays["imgname"] = np.array([_RunsCode()] * 3, dtype=object)
    np.savez(tmp_path / "t.npz", **arrays)  # np.savez pickles object arrays
    with pytest.raises(DataError, match="key 'imgname' is an object array, which cannot be read without unpickling"):
        SpinDataset(tmp_path / "t.npz", tmp_path)
    np.savez(tmp_path / "p.npz", poses=np.array([_RunsCode()], dtype=object), betas=np.zeros(10))
    with pytest.raises(DataError, match="key 'poses' is an object array"):
        PosePrior(tmp_path / "p.npz")
    np.save(tmp_path / "single.npy", np.array([_RunsCode()], dtype=object))  # not a zip: a pickled .npy
    with pytest.raises(DataError, match="object array"):
        SpinDataset(tmp_path / "single.npy", tmp_path)
    assert not marker.exists()


def test_a_zip_member_that_is_not_npy_data_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as z:
        for key, value in _spin_arrays().items():
            buf = io.BytesIO()
            np.save(buf, value)
            z.writestr(f"{key}.npy" if key != "part" else "part", buf.getvalue() if key != "part" else b"plain bytes")
    with pytest.raises(DataError, match="key 'part' is not a numpy array"):
        SpinDataset(tmp_path / "t.npz", tmp_path)


# ---------------------------------------------------------------------------------------
# COCO json
# ---------------------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=4), max_leaves=20)
numbers = st.one_of(st.integers(-3, 3), st.floats(), st.integers(-2**70, 2**70))


def _coco_like():
    kp = st.one_of(st.lists(numbers, min_size=51, max_size=51), st.lists(st.sampled_from([0, 1, 2]), min_size=51,
                                                                        max_size=51), json_values)
    ann = st.fixed_dictionaries({"image_id": st.sampled_from([1, "a", 2.0, None, [1]]), "keypoints": kp,
                                 "bbox": st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values)},
                                optional={"iscrowd": json_values})
    image = st.fixed_dictionaries({"id": st.sampled_from([1, "a", 3]), "file_name": st.sampled_from(["x.jpg", 3])})
    return st.fixed_dictionaries({"images": st.lists(image, max_size=3) | json_values,
                                  "annotations": st.lists(ann | json_values, max_size=5)})


@FUZZ
@given(data=st.binary(max_size=500))
def test_fuzz_coco_random_bytes(tmp_path, data):
    (tmp_path / "c.json").write_bytes(data)
    _expect(DataError, lambda: CocoDataset(tmp_path / "c.json", tmp_path))


@FUZZ
@given(value=json_values)
def test_fuzz_coco_any_json(tmp_path, value):
    (tmp_path / "c.json").write_text(json.dumps(value))
    _expect(DataError, lambda: CocoDataset(tmp_path / "c.json", tmp_path))


@FUZZ
@given(coco=_coco_like(), drop=st.booleans(), min_keypoints=st.integers(0, 3))
def test_fuzz_coco_structure(tmp_path, coco, drop, min_keypoints):
    (tmp_path / "c.json").write_text(json.dumps(coco))
    try:
        ds = CocoDataset(tmp_path / "c.json", tmp_path, min_keypoints=min_keypoints, drop_bad_labels=drop)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    for _, center, box, keypoints in ds.samples:
        assert np.isfinite(center).all() and np.isfinite(box) and box > 0 and np.isfinite(keypoints).all()


@FUZZ
@given(edit=edits)
def test_fuzz_coco_corrupted_text(tmp_path, edit):
    kp = [1.0, 2.0, 2] * 17
    text = json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                       "annotations": [{"image_id": 1, "keypoints": kp, "bbox": [0, 0, 9, 9], "iscrowd": 0}]})
    (tmp_path / "c.json").write_bytes(_mutate(text.encode(), edit))
    _expect(DataError, lambda: CocoDataset(tmp_path / "c.json", tmp_path, min_keypoints=1))


# ---------------------------------------------------------------------------------------
# Pose prior npz
# ---------------------------------------------------------------------------------------
@FUZZ
@given(edit=edits, plain=st.booleans())
def test_fuzz_prior_corrupted_file(tmp_path, edit, plain):
    arrays = ({"pose": np.zeros((4, 72)), "shape": np.zeros((4, 10))} if plain else
              {"poses": np.zeros((4, 156)), "betas": np.zeros(16), "mocap_framerate": np.array(60.0)})
    (tmp_path / "p.npz").write_bytes(_mutate(_npz_bytes(arrays), edit))
    _expect(DataError, lambda: PosePrior(tmp_path / "p.npz"))


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(["poses", "betas", "pose", "shape", "trans"]), any_array, max_size=3),
       drop=st.booleans(), stride=st.integers(1, 3))
def test_fuzz_prior_any_arrays(tmp_path, arrays, drop, stride):
    (tmp_path / "p.npz").write_bytes(_npz_bytes(arrays))
    _expect(DataError, lambda: PosePrior(tmp_path / "p.npz", frame_stride=stride, drop_bad_labels=drop))


@FUZZ
@given(poses=hnp.arrays(np.float64, st.tuples(st.integers(0, 5), st.sampled_from([66, 72, 156])),
                        elements=st.floats(width=64)),
       betas=hnp.arrays(np.float32, st.sampled_from([(16,), (10,), (3,), (5, 16)]), elements=st.floats(width=32)),
       drop=st.booleans())
def test_fuzz_prior_values(tmp_path, poses, betas, drop):
    np.savez(tmp_path / "p.npz", poses=poses, betas=betas)
    try:
        prior = PosePrior(tmp_path / "p.npz", drop_bad_labels=drop)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    import torch

    assert len(prior) > 0 and torch.isfinite(prior.poses).all() and torch.isfinite(prior.betas).all()


# ---------------------------------------------------------------------------------------
# Config YAML
# ---------------------------------------------------------------------------------------
SMOKE_TEXT = (CONFIGS / "synthetic_smoke.yaml").read_text()
SMOKE_VALUES = yaml.safe_load(SMOKE_TEXT)
LEAVES = [(section, key) for section, values in SMOKE_VALUES.items() for key in values]
yaml_values = st.recursive(st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                      max_size=3), max_leaves=10)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_config_random_bytes(tmp_path, data):
    (tmp_path / "c.yaml").write_bytes(data)
    _expect(ConfigError, lambda: load_config(tmp_path / "c.yaml"))


@FUZZ
@given(edit=edits)
def test_fuzz_config_corrupted_text(tmp_path, edit):
    (tmp_path / "c.yaml").write_bytes(_mutate(SMOKE_TEXT.encode(), edit))
    _expect(ConfigError, lambda: load_config(tmp_path / "c.yaml"))


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(LEAVES), yaml_values), min_size=1, max_size=3))
def test_fuzz_config_values(tmp_path, changes):
    values = yaml.safe_load(SMOKE_TEXT)
    for (section, key), value in changes:
        values[section][key] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    _expect(ConfigError, lambda: load_config(tmp_path / "c.yaml"))


@pytest.mark.parametrize("text, message", [
    (b"model: [unclosed", "not a YAML file"), (b"model: \xc3\x28", "not a YAML file"),
    (b"[" * 5000, "not a YAML file"), (b"? [a, b]\n: 1\n", "not a YAML file"),
    (b"optim: {encoder_lr: 1e999}", "'optim.encoder_lr' must be a number, got inf"),
    (b"optim: {grad_clip: " + b"9" * 400 + b"}", "'optim.grad_clip' must be a number, got 999"),
])
def test_config_yaml_findings_are_config_errors(tmp_path, text, message):
    (tmp_path / "c.yaml").write_bytes(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(tmp_path / "c.yaml")
