"""Fuzzing the keypoint readers of `hmr-fast fit` (OpenPose json, COCO json, npz): every input
loads or raises DataError naming the file: no other exception, no hang, no code run.

The budget (HMR_FAST_FUZZ_EXAMPLES, HMR_FAST_FUZZ_SEED) is tests/fuzzing.py's.
"""
import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmr_fast.errors import DataError
from hmr_fast.fit import read_keypoints
from fuzzing import FUZZ

def _valid_files():
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [{"id": 3, "image_id": 1, "bbox": [1, 2, 30, 40], "keypoints": [5.0, 6.0, 2] * 17}]}
    openpose = {"version": 1.3, "people": [{"pose_keypoints_2d": [1.0, 2.0, 0.5] * 25}]}
    npz = io.BytesIO()
    np.savez(npz, keypoints=np.ones((2, 17, 3)), ids=np.array(["a", "b"]))
    return {"coco.json": json.dumps(coco).encode(), "op.json": json.dumps(openpose).encode(), "k.npz": npz.getvalue()}


VALID = _valid_files()


def _load(path):
    try:
        people = read_keypoints(path)
    except DataError as exc:
        assert path.name in str(exc) and "\n" not in str(exc)
        return
    assert people.keypoints.ndim == 3 and np.isfinite(people.keypoints).all()


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for pos, value, kind in edits:
        if not b:
            break
        pos %= len(b)
        if kind == 0:
            b[pos] = value
        elif kind == 1:
            del b[pos:pos + value % 16 + 1]
        else:
            b[pos:pos] = bytes([value]) * (value % 8 + 1)
    return bytes(b)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 2)), min_size=1, max_size=8)


@FUZZ
@given(name=st.sampled_from(sorted(VALID)), edits=EDITS)
def test_mutated_keypoint_files(tmp_path_factory, name, edits):
    path = tmp_path_factory.mktemp("kp") / name
    path.write_bytes(_mutate(VALID[name], edits))
    _load(path)


@FUZZ
@given(value=st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=20),
       key=st.sampled_from(["annotations", "people", "images"]))
def test_json_of_any_shape(tmp_path_factory, value, key):
    path = tmp_path_factory.mktemp("kp") / "x.json"
    path.write_text(json.dumps({key: value, "annotations" if key == "images" else "images": value}))
    _load(path)


@FUZZ
@given(shape=st.lists(st.integers(0, 30), min_size=0, max_size=4),
       dtype=st.sampled_from(["f4", "f8", "i4", "U3", "b1", "c8"]), key=st.sampled_from(["keypoints", "part", "x"]))
def test_npz_of_any_array(tmp_path_factory, shape, dtype, key):
    path = tmp_path_factory.mktemp("kp") / "x.npz"
    np.savez(path, **{key: np.zeros(shape, dtype=dtype)})
    _load(path)


def test_an_object_array_is_never_unpickled(tmp_path):
    """A pickled array in the npz would run code when loaded with allow_pickle=True."""
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("keypoints.npy", buf.getvalue())
    with pytest.raises(DataError, match="evil.npz"):
        read_keypoints(path)
