"""Fuzzing the loaders of untrusted bytes: SMPL model files and checkpoints.

Every input - random bytes, valid files with flipped, overwritten, inserted, deleted or cut
bytes (aimed mostly at the structure: pickle opcodes, zip headers), pickles that reference
os.system, exec, open and other globals - must either load or raise the project's own error
with a one-line message naming the file: ModelFileError (UnsafePickleError for a refused
global) for model files, CheckpointError for checkpoints; never another exception, never
torch's advice to load with weights_only=False, never a hang (a per-example deadline), and
never code run (a canary file / environment variable each attack would create).

CI runs a bounded, derandomized number of examples. Scale up with the environment:
    HMR_FAST_FUZZ_EXAMPLES=2000 HMR_FAST_FUZZ_SEED=123 pytest tests/test_fuzz_model_files.py
or run benchmarks/fuzz_loaders.py (minutes; random seeds, printed).
"""
from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import pickletools
import signal
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hmr_fast.body import SMPL, load_model_file
from hmr_fast.body.model_file import ModelFileError, UnsafePickleError
from hmr_fast.errors import CheckpointError
from hmr_fast.model.checkpoint import load_checkpoint, read_checkpoint
from fuzzing import EXAMPLES, FUZZ, SEED, SEEDED
from test_model_file import random_arrays

EXAMPLE_SECONDS = float(os.environ.get("HMR_FAST_FUZZ_DEADLINE", "15"))

CANARY_ENV = "HMR_FAST_FUZZ_CANARY"
V, F, NB = 12, 20, 4  # a small model: the arrays do not drown the pickle's structure


class Deadline(Exception):
    """An example ran past its deadline (a hang, or a pathological slowdown)."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise Deadline in this (main) thread after `seconds` of wall time."""
    def expired(signum, frame):
        raise Deadline(f"example ran longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------
# Valid model files
# ---------------------------------------------------------------------------------------

def model_arrays(seed: int = 0, v: int = V) -> dict:
    """A random but valid SMPL model in the official file's layout (kintree as uint32), small
    and with float32 posedirs, so that the pickle's structure is most of the file."""
    arrays = random_arrays(np.random.default_rng(seed), v, F, NB, regressor_density=0.3)
    return {**arrays, "posedirs": arrays["posedirs"].astype(np.float32)}


@contextlib.contextmanager
def _fake_chumpy():
    """A throwaway `chumpy.ch` module whose Ch pickles like chumpy's (BUILD of its dict), so
    official-style pickles can be written without chumpy; removed afterwards."""
    module = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)
            self._dirty_vars = {"x"}

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    module.Ch = Ch
    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"] = types.ModuleType("chumpy")
    sys.modules["chumpy.ch"] = module
    try:
        yield Ch
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


def model_file_bytes(kind: str, seed: int = 0) -> bytes:
    """A valid model file: "pkl2"/"pkl0"/"pkl4"/"pkl5" (plain dict, csc J_regressor),
    "chumpy" (official style: chumpy Ch objects, protocol 2), "npz", "npz_compressed"."""
    arrays = model_arrays(seed)
    if kind.startswith("pkl"):
        payload = {**arrays, "J_regressor": sp.csc_matrix(arrays["J_regressor"]),
                   "bs_style": "lbs", "bs_type": "lrotmin"}
        return pickle.dumps(payload, protocol=int(kind[3:]))
    if kind == "chumpy":
        with _fake_chumpy() as Ch:
            payload = {**{k: Ch(arrays[k]) for k in ("v_template", "weights", "shapedirs", "posedirs")},
                       "J_regressor": sp.csc_matrix(arrays["J_regressor"]), "f": arrays["f"],
                       "kintree_table": arrays["kintree_table"], "bs_style": "lbs", "bs_type": "lrotmin"}
            return pickle.dumps(payload, protocol=2)
    if kind in ("npz", "npz_compressed"):
        buf = io.BytesIO()
        (np.savez_compressed if kind == "npz_compressed" else np.savez)(buf, **arrays, bs_style="lbs")
        return buf.getvalue()
    raise ValueError(kind)


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# Where the structure is: mutations aimed there find more than flips inside float arrays
# ---------------------------------------------------------------------------------------

def pickle_hot_spots(data: bytes) -> list:
    """Byte offsets of a pickle's opcodes (and their first argument byte)."""
    spots = []
    with contextlib.suppress(Exception):
        for _op, _arg, pos in pickletools.genops(data):
            spots += [pos, pos + 1]
    return sorted({p for p in spots if p < len(data)}) or [0]


def zip_hot_spots(data: bytes, pickle_members=("data.pkl",)) -> list:
    """Offsets of a zip's local headers, its central directory and end record, the first
    bytes of each member, and every opcode of the members named like a pickle."""
    spots = set(range(max(0, len(data) - 200), len(data)))
    with contextlib.suppress(Exception), zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        for info in infos:
            start = info.header_offset
            spots.update(range(start, start + 30 + len(info.filename) + 8))
            local_extra = int.from_bytes(data[start + 28:start + 30], "little")
            body = start + 30 + len(info.filename) + local_extra
            spots.update(range(body, body + min(info.compress_size, 160)))
            if info.filename.endswith(pickle_members) and info.compress_type == zipfile.ZIP_STORED:
                member = data[body:body + info.compress_size]
                spots.update(body + p for p in pickle_hot_spots(member))
        if infos:
            cd = infos[-1].header_offset + 30 + len(infos[-1].filename) + infos[-1].compress_size
            spots.update(range(cd, len(data)))
    return sorted(p for p in spots if 0 <= p < len(data)) or [0]


@st.composite
def mutated(draw, data: bytes, hot: list, max_ops: int = 4) -> bytes:
    """`data` with 1..max_ops edits: flip bits, overwrite, insert, delete, truncate; offsets
    drawn mostly from `hot` (the structure), sometimes anywhere."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        if not out:
            break
        if hot and draw(st.integers(0, 3)):
            pos = min(draw(st.sampled_from(hot)), len(out) - 1)
        else:
            pos = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["flip", "flip", "overwrite", "insert", "delete", "truncate"]))
        if op == "flip":
            out[pos] ^= draw(st.integers(1, 255))
        elif op == "overwrite":
            blob = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(INTERESTING))
            out[pos:pos + len(blob)] = blob
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16) | st.sampled_from(INTERESTING))
        elif op == "delete":
            del out[pos:pos + draw(st.integers(1, 64))]
        else:
            del out[pos:]
    return bytes(out)


# Values that tend to break parsers: huge/negative sizes, pickle opcodes, zip signatures.
INTERESTING = [b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff" * 8, b"\x00" * 8, b"(", b"t", b"R", b"b",
               b"0", b"2", b"h\x00", b"q\xff", b"\x94", b"\x93", b"\x8c\x02os\x8c\x06system\x93",
               b"cposix\nsystem\n", b"PK\x03\x04", b"PK\x05\x06", b"PK\x01\x02", b"}", b"]", b"."]


# ---------------------------------------------------------------------------------------
# Hostile pickles: each would leave a canary (a file, an environment variable) if it ran
# ---------------------------------------------------------------------------------------

class Reduces:
    """Pickles as `func(*args)`."""

    def __init__(self, func, args):
        self.func, self.args = func, tuple(args)

    def __reduce__(self):
        return self.func, self.args


def attacks(canary: Path) -> dict:
    """name -> an object whose unpickling would leave `canary` (or set CANARY_ENV)."""
    touch = f"touch {canary}"
    set_env = f"import os; os.environ[{CANARY_ENV!r}] = '1'; open({str(canary)!r}, 'w').close()"
    return {
        "os.system": Reduces(os.system, [touch]),
        "exec": Reduces(exec, [set_env]),
        "eval": Reduces(eval, [f"exec({set_env!r})"]),
        "open": Reduces(open, [str(canary), "w"]),
        "putenv": Reduces(os.putenv, [CANARY_ENV, "1"]),
        "Path.touch": Reduces(Path.touch, [canary]),
        "getattr-chain": Reduces(getattr, [Reduces(__import__, ["os"]), "system"]),
        "copyreg": Reduces(copyreg._reconstructor, [Path, object, None]),
        "np.load": Reduces(np.load, [str(canary)]),
        "np.save": Reduces(np.save, [str(canary), np.zeros(1)]),
    }


def canary_tripped(canary: Path) -> bool:
    return canary.exists() or os.environ.get(CANARY_ENV) is not None


@st.composite
def hostile_model_pickle(draw, canary: Path) -> bytes:
    """A valid model dict with an attack hidden in it (as a value, a nested value, or a key's
    replacement), pickled with any protocol."""
    name = draw(st.sampled_from(sorted(attacks(canary))))
    payload = attacks(canary)[name]
    raw = {**model_arrays(draw(st.integers(0, 3))), "bs_style": "lbs"}
    where = draw(st.sampled_from(["extra", "replace", "nested", "top"]))
    if where == "top":
        obj = payload
    elif where == "replace":
        obj = {**raw, draw(st.sampled_from(sorted(raw))): payload}
    elif where == "nested":
        obj = {**raw, "J_regressor": [raw["J_regressor"], {"x": payload}]}
    else:
        obj = {"zz": payload, **raw} if draw(st.booleans()) else {**raw, "zz": payload}
    return pickle.dumps(obj, protocol=draw(st.sampled_from([0, 1, 2, 3, 4, 5])))


# ---------------------------------------------------------------------------------------
# The property: load, or refuse with our error naming the file; nothing runs, nothing hangs
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    path = tmp_path_factory.mktemp("canary") / "CANARY"
    os.environ.pop(CANARY_ENV, None)
    yield path
    os.environ.pop(CANARY_ENV, None)


def load_or_refuse(load, path: Path, errors, canary: Path, named=None):
    """load(path) within the deadline; returns the result or the (checked) error, whose
    message must name `path` (or `named`). Any other exception propagates and fails the test."""
    cwd = os.getcwd()
    os.chdir(canary.parent)  # a stray relative `touch` would land where the canary is looked for
    try:
        with deadline(EXAMPLE_SECONDS):
            return load(path)
    except errors as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} without a message"
        assert "\n" not in message, f"message on several lines: {message!r}"
        files = {str(path), str(path.resolve())} | ({str(named), str(named.resolve())} if named else set())
        assert any(f in message for f in files), f"file not named: {message}"
        assert "weights_only" not in message, message
        return exc
    finally:
        os.chdir(cwd)
        assert not canary_tripped(canary), "a pickle ran code"


MODEL_ERRORS = ModelFileError  # UnsafePickleError is one
MODEL_KINDS = ["pkl0", "pkl2", "pkl4", "pkl5", "chumpy", "npz", "npz_compressed"]
SUFFIX = {"npz": ".npz", "npz_compressed": ".npz"}
_VALID_MODELS = {}


def valid_model(kind: str):
    """(bytes, hot spots) of a valid small model file of this kind (built once)."""
    if kind not in _VALID_MODELS:
        data = model_file_bytes(kind)
        hot = zip_hot_spots(data, (".npy",)) if kind.startswith("npz") else pickle_hot_spots(data)
        _VALID_MODELS[kind] = data, hot
    return _VALID_MODELS[kind]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_valid_model_files_load(tmp_path, kind):
    path = tmp_path / f"SMPL_NEUTRAL{SUFFIX.get(kind, '.pkl')}"
    path.write_bytes(valid_model(kind)[0])
    assert load_model_file(path).v_template.shape == (V, 3)


@FUZZ
@SEEDED
@given(data=st.binary(max_size=4096),
       prefix=st.sampled_from([b"", b"\x80\x02", b"\x80\x04\x95", b"\x80\x05", b"(dp0\n", b"PK\x03\x04",
                               b"\x93NUMPY\x01\x00"]),
       suffix=st.sampled_from([".pkl", ".pickle", ".npz"]))
def test_random_bytes_as_model_file(tmp_path_factory, canary, data, prefix, suffix):
    path = tmp_path_factory.mktemp("m") / f"SMPL_NEUTRAL{suffix}"
    path.write_bytes(prefix + data)
    load_or_refuse(load_model_file, path, MODEL_ERRORS, canary)


@FUZZ
@SEEDED
@given(st.data(), st.sampled_from(MODEL_KINDS))
def test_mutated_model_files(tmp_path_factory, canary, data, kind):
    valid, hot = valid_model(kind)
    path = tmp_path_factory.mktemp("m") / f"SMPL_NEUTRAL{SUFFIX.get(kind, '.pkl')}"
    path.write_bytes(data.draw(mutated(valid, hot), label="file"))
    load_or_refuse(load_model_file, path, MODEL_ERRORS, canary)


@FUZZ
@SEEDED
@given(st.data())
def test_mutated_extra_regressor_beside_a_model(tmp_path_factory, canary, data):
    folder = tmp_path_factory.mktemp("m")
    (folder / "SMPL_NEUTRAL.pkl").write_bytes(valid_model("pkl2")[0])
    npy = npy_bytes(np.full((17, V), 1.0 / V))
    (folder / "J_regressor_h36m.npy").write_bytes(data.draw(mutated(npy, list(range(128))), label="npy"))
    result = load_or_refuse(load_model_file, folder / "SMPL_NEUTRAL.pkl", MODEL_ERRORS, canary,
                            named=folder / "J_regressor_h36m.npy")
    if not isinstance(result, Exception):
        assert result.extra_regressors["h36m"].shape == (17, V)


@FUZZ
@SEEDED
@given(st.data())
def test_hostile_model_pickles_are_refused_and_nothing_runs(tmp_path_factory, canary, data):
    hostile = data.draw(hostile_model_pickle(canary), label="pickle")
    path = tmp_path_factory.mktemp("m") / "SMPL_NEUTRAL.pkl"
    path.write_bytes(hostile)
    assert isinstance(load_or_refuse(load_model_file, path, MODEL_ERRORS, canary), UnsafePickleError)
    path.write_bytes(data.draw(mutated(hostile, pickle_hot_spots(hostile)), label="mutated"))
    load_or_refuse(load_model_file, path, MODEL_ERRORS, canary)


@settings(FUZZ, max_examples=max(5, EXAMPLES // 6))
@SEEDED
@given(st.data())
def test_mutated_mannequin(tmp_path_factory, canary, data):
    from hmr_fast.body.mannequin import mannequin_path

    valid = mannequin_path().read_bytes()
    path = tmp_path_factory.mktemp("m") / "SMPL_NEUTRAL.pkl"
    path.write_bytes(data.draw(mutated(valid, pickle_hot_spots(valid), max_ops=2), label="file"))
    load_or_refuse(load_model_file, path, MODEL_ERRORS, canary)


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """(bytes, hot spots) of a real checkpoint (random resnet18 weights, 64 px crops)."""
    from random_checkpoint import make_checkpoint

    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "real.pt")
    data = Path(path).read_bytes()
    return data, zip_hot_spots(data)


@pytest.fixture(scope="module")
def reference_smpl():
    return SMPL(joint_set="hmr19", backend="reference")


def _load_checkpoint_with(smpl):
    return lambda path: load_checkpoint(path, smpl=smpl)


CHECKPOINT_ERRORS = CheckpointError


@FUZZ
@SEEDED
@given(data=st.binary(max_size=4096),
       prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x05", b"\x93NUMPY"]))
def test_random_bytes_as_checkpoint(tmp_path_factory, canary, data, prefix):
    path = tmp_path_factory.mktemp("c") / "model.pt"
    path.write_bytes(prefix + data)
    assert isinstance(load_or_refuse(read_checkpoint, path, CHECKPOINT_ERRORS, canary), CheckpointError)


@FUZZ
@SEEDED
@given(st.data())
def test_mutated_checkpoints(tmp_path_factory, canary, real_checkpoint, reference_smpl, data):
    valid, hot = real_checkpoint
    path = tmp_path_factory.mktemp("c") / "model.pt"
    path.write_bytes(data.draw(mutated(valid, hot), label="file"))
    result = load_or_refuse(_load_checkpoint_with(reference_smpl), path, CHECKPOINT_ERRORS, canary)
    if not isinstance(result, Exception):
        model, config = result
        assert isinstance(config, dict) and not model.training


def _with_data_pkl(archive_bytes: bytes, data_pkl: bytes) -> bytes:
    """The archive with its data.pkl replaced (the other members kept, in order)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else zin.read(info))
    return out.getvalue()


_HOSTILE = {}


def _hostile_checkpoint(canary, name, where, form, protocol) -> bytes:
    """Built once per combination: torch.save writes a random serialization id, and the
    examples must be the same bytes each time hypothesis replays them."""
    key = (name, where, form, protocol)
    if key not in _HOSTILE:
        payload = attacks(canary)[name]
        obj = [payload, {"format": "hmr_fast.checkpoint/1", "config": {"model": payload}, "model": {}},
               {"format": "hmr_fast.checkpoint/1", "config": {}, "model": {}, "zz": [payload]}][where]
        if form == "torch.save":
            buf = io.BytesIO()
            torch.save(obj, buf)
            blob = buf.getvalue()
        elif form == "bare pickle":
            blob = pickle.dumps(obj, protocol=protocol)
        else:
            small = io.BytesIO()
            torch.save({"w": torch.zeros(1)}, small)
            blob = _with_data_pkl(small.getvalue(), pickle.dumps(obj, protocol=2))
        _HOSTILE[key] = blob
    return _HOSTILE[key]


@FUZZ
@SEEDED
@given(st.data())
def test_hostile_checkpoints_are_refused_and_nothing_runs(tmp_path_factory, canary, real_checkpoint, data):
    name = data.draw(st.sampled_from(sorted(attacks(canary))), label="attack")
    where = data.draw(st.integers(0, 2), label="where")
    form = data.draw(st.sampled_from(["torch.save", "bare pickle", "data.pkl"]), label="form")
    protocol = data.draw(st.sampled_from([0, 2, 4, 5]), label="protocol")
    blob = _hostile_checkpoint(canary, name, where, form, protocol)
    path = tmp_path_factory.mktemp("c") / "model.pt"
    path.write_bytes(blob)
    error = load_or_refuse(read_checkpoint, path, CHECKPOINT_ERRORS, canary)
    assert isinstance(error, CheckpointError)
    if form != "bare pickle" and name in ("os.system", "exec", "eval", "open"):
        assert "global" in str(error) and "refused" in str(error), str(error)
    path.write_bytes(data.draw(mutated(blob, zip_hot_spots(blob) if blob[:2] == b"PK" else pickle_hot_spots(blob)),
                               label="mutated"))
    load_or_refuse(read_checkpoint, path, CHECKPOINT_ERRORS, canary)
