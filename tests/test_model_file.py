"""Tests for hmr_fast.body.model_file: SMPL model files in the formats users bring.

No real SMPL files exist here, so every test writes its own files in those formats, with
random arrays of a small vertex count (the loader supports any V).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from hmr_fast.body.model_data import SMPL_PARENTS, SMPLModelData
from hmr_fast.body.model_file import (
    ModelFileError,
    UnsafePickleError,
    load_model_file,
    validate_model_data,
)

V, F, NB = 100, 150, 10  # vertices, faces, shape directions


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)  # the test's fixed seed (conftest), printed when it fails


def random_arrays(rng, v=V, faces=F, num_betas=NB, regressor_density=0.1) -> dict:
    """A random but valid SMPL model, stored the way the official files store it."""
    weights = rng.random((v, 24)) ** 4  # mostly small, like real skinning weights
    weights /= weights.sum(axis=1, keepdims=True)
    j_regressor = rng.random((24, v)) * (rng.random((24, v)) < regressor_density)
    j_regressor[np.arange(24), np.arange(24) % v] += 1.0  # no empty rows
    j_regressor /= j_regressor.sum(axis=1, keepdims=True)
    return {
        "v_template": rng.normal(size=(v, 3)),
        "f": rng.integers(0, v, size=(faces, 3)).astype(np.uint32),
        "J_regressor": j_regressor,
        # The official files store the root's parent -1 as uint32: 4294967295.
        "kintree_table": np.array([SMPL_PARENTS, range(24)], dtype=np.int64).astype(np.uint32),
        "weights": weights,
        "shapedirs": rng.normal(size=(v, 3, num_betas)) * 0.01,
        "posedirs": rng.normal(size=(v, 3, 207)) * 0.01,
    }


def assert_loaded(data: SMPLModelData, arrays: dict) -> None:
    np.testing.assert_array_equal(data.v_template, arrays["v_template"])
    np.testing.assert_array_equal(data.faces, arrays["f"])
    np.testing.assert_array_equal(data.J_regressor, arrays["J_regressor"])
    np.testing.assert_array_equal(data.weights, arrays["weights"])
    np.testing.assert_array_equal(data.shapedirs, arrays["shapedirs"])
    np.testing.assert_array_equal(data.posedirs, arrays["posedirs"])
    assert data.parents.tolist() == list(SMPL_PARENTS)
    for name in ("v_template", "J_regressor", "weights", "shapedirs", "posedirs"):
        assert getattr(data, name).dtype == np.float64, name
    assert data.faces.dtype == np.int64 and data.parents.dtype == np.int64
    assert isinstance(data.J_regressor, np.ndarray)


def write_pickle(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def plain_pickle_dict(arrays: dict) -> dict:
    """What smplx's clean_ch.py leaves: ndarrays, a scipy.sparse J_regressor, strings."""
    return {**arrays, "J_regressor": sp.csc_matrix(arrays["J_regressor"]),
            "bs_style": "lbs", "bs_type": "lrotmin"}


# --------------------------------------------------------------------------------------
# A stand-in chumpy, importable only while the official-style pickle is written
# --------------------------------------------------------------------------------------

FAKE_CHUMPY = {
    "__init__.py": "from .ch import Ch\n",
    "ch.py": '''
        import numpy as np

        class Ch(object):
            """Pickles like chumpy.ch.Ch: default object pickling of the instance dict, whose
            __getstate__ drops the weakref-holding _parents and _cache."""
            dterms = ["x"]

            def __init__(self, x=None, **terms):
                d = self.__dict__
                d["_dirty_vars"] = set(["x"])
                d["_itr"] = None
                d["_parents"] = {}
                d["_cache"] = {"r": None, "drs": {}}
                d["_depends_on_deps"] = {}
                d["_make_dense"] = False
                d["_make_sparse"] = False
                if x is not None:
                    d["x"] = np.asarray(x, dtype=np.float64)
                d.update(terms)

            def __getstate__(self):
                state = dict(self.__dict__)
                del state["_parents"]
                del state["_cache"]
                return state

            def __setstate__(self, state):
                self.__dict__.update(state)
        ''',
    "ch_ops.py": '''
        from .ch import Ch

        class add(Ch):
            dterms = ["a", "b"]

        class reduced(Ch):
            """Pickles in the REDUCE form Ch(array) rather than by its state."""
            def __reduce__(self):
                return Ch, (self.x,)

        class mystery(Ch):
            dterms = ["a"]
        ''',
    "reordering.py": '''
        from .ch import Ch

        class Select(Ch):
            dterms = ["a"]

        class Reshape(Ch):
            dterms = ["a"]

        class transpose(Ch):
            dterms = ["a"]
        ''',
}


def _drop_chumpy_modules():
    for name in [n for n in sys.modules if n == "chumpy" or n.startswith("chumpy.")]:
        del sys.modules[name]


@contextlib.contextmanager
def fake_chumpy(tmp_path):
    """Yields the stand-in `chumpy` package; afterwards it is gone from sys.path/modules."""
    root = tmp_path / "fake_chumpy_site"
    (root / "chumpy").mkdir(parents=True)
    for filename, source in FAKE_CHUMPY.items():
        (root / "chumpy" / filename).write_text(textwrap.dedent(source))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield types.SimpleNamespace(
            ch=importlib.import_module("chumpy.ch"),
            ch_ops=importlib.import_module("chumpy.ch_ops"),
            reordering=importlib.import_module("chumpy.reordering"),
        )
    finally:
        sys.path.remove(str(root))
        _drop_chumpy_modules()
        importlib.invalidate_caches()


class Py2StylePickler(pickle._Pickler):
    """Writes protocol-2 pickles the way Python 2 did (SMPL's files are from 2015): byte and
    text strings as STRING opcodes, and Python 2 module names in globals."""

    NAMES = {"numpy._core.multiarray": "numpy.core.multiarray", "builtins": "__builtin__",
             "scipy.sparse._csc": "scipy.sparse.csc", "copyreg": "copy_reg"}
    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = self.NAMES.get(obj.__module__, obj.__module__)
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_string
    dispatch[str] = save_string
    dispatch[types.FunctionType] = save_global


def write_official_pickle(path, obj, style):
    if style == "py2":
        with open(path, "wb") as f:
            Py2StylePickler(f, protocol=2).dump(obj)
    else:
        write_pickle(path, obj, protocol=int(style.removeprefix("py3-protocol")))
    return path


# --------------------------------------------------------------------------------------
# Official pickles, loaded without chumpy
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["py2", "py3-protocol2", "py3-protocol0", "py3-protocol5"])
def test_official_chumpy_pickle_loads_without_chumpy(tmp_path, rng, style):
    arrays = random_arrays(rng)
    with fake_chumpy(tmp_path) as chumpy:
        ch = chumpy.ch.Ch
        official = {
            "v_template": ch(arrays["v_template"]),
            "shapedirs": ch(arrays["shapedirs"]),
            "posedirs": ch(arrays["posedirs"]),
            "weights": ch(arrays["weights"]),
            "J_regressor": sp.csc_matrix(arrays["J_regressor"]),
            "kintree_table": arrays["kintree_table"],
            "f": arrays["f"],
            "bs_style": "lbs",
            "bs_type": "lrotmin",
            # Keys the loader ignores, holding chumpy expressions it need not evaluate.
            "J": chumpy.ch_ops.mystery(a=ch(rng.normal(size=(24, 3)))),
            "J_regressor_prior": sp.csc_matrix(arrays["J_regressor"]),
            "weights_prior": ch(arrays["weights"]),
            "vert_sym_idxs": np.arange(V),
        }
        path = write_official_pickle(tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl",
                                     official, style)
    with pytest.raises(ImportError):
        importlib.import_module("chumpy")

    data = load_model_file(path)
    assert_loaded(data, arrays)
    assert data.extra_regressors == {}
    assert data.source == str(path.resolve())


def test_chumpy_expressions_are_evaluated(tmp_path, rng):
    arrays = random_arrays(rng)
    order = rng.permutation(V * 24)
    with fake_chumpy(tmp_path) as chumpy:
        ch, reordering = chumpy.ch.Ch, chumpy.reordering
        half = rng.normal(size=(V, 3))
        official = plain_pickle_dict(arrays)
        official.update({
            "v_template": chumpy.ch_ops.add(a=ch(half), b=ch(arrays["v_template"] - half)),
            "shapedirs": reordering.Reshape(a=ch(arrays["shapedirs"].ravel()),
                                            newshape=(V, 3, NB)),
            "posedirs": reordering.transpose(a=ch(arrays["posedirs"].transpose(1, 2, 0)),
                                             axes=(2, 0, 1)),
            "J_regressor": chumpy.ch_ops.reduced(arrays["J_regressor"]),
            "f": chumpy.ch_ops.reduced(arrays["f"]),  # Ch stores floats; faces come back int
            "weights": reordering.Select(a=ch(arrays["weights"].ravel()[np.argsort(order)]),
                                         idxs=order, preferred_shape=(V, 24)),
        })
        path = write_official_pickle(tmp_path / "SMPL_NEUTRAL.pkl", official, "py2")
    data = load_model_file(path)
    np.testing.assert_allclose(data.v_template, arrays["v_template"], atol=1e-12)
    np.testing.assert_array_equal(data.shapedirs, arrays["shapedirs"])
    np.testing.assert_array_equal(data.posedirs, arrays["posedirs"])
    np.testing.assert_array_equal(data.weights, arrays["weights"])
    np.testing.assert_array_equal(data.J_regressor, arrays["J_regressor"])
    np.testing.assert_array_equal(data.faces, arrays["f"])


def test_unknown_chumpy_expression_for_a_needed_key_is_named(tmp_path, rng):
    arrays = random_arrays(rng)
    with fake_chumpy(tmp_path) as chumpy:
        official = plain_pickle_dict(arrays)
        official["weights"] = chumpy.ch_ops.mystery(a=chumpy.ch.Ch(arrays["weights"]))
        path = write_official_pickle(tmp_path / "SMPL_NEUTRAL.pkl", official, "py2")
    with pytest.raises(ModelFileError, match=r"'weights'.*chumpy\.ch_ops\.mystery"):
        load_model_file(path)


def test_plain_pickle_with_hmr_cocoplus_regressor(tmp_path, rng):
    arrays = random_arrays(rng)
    cocoplus = rng.random((19, V)) * (rng.random((19, V)) < 0.05)
    path = write_pickle(tmp_path / "neutral_smpl_with_cocoplus_reg.pkl",
                        {**plain_pickle_dict(arrays),
                         "cocoplus_regressor": sp.csc_matrix(cocoplus)})
    data = load_model_file(path)
    assert_loaded(data, arrays)
    np.testing.assert_array_equal(data.extra_regressors["hmr19"], cocoplus)
    assert data.extra_regressors["hmr19"].dtype == np.float64


def test_csr_regressor_and_real_scipy_pickle_roundtrip(tmp_path, rng):
    arrays = random_arrays(rng)
    raw = {**plain_pickle_dict(arrays), "J_regressor": sp.csr_matrix(arrays["J_regressor"])}
    data = load_model_file(write_pickle(tmp_path / "m.pkl", raw, protocol=4))
    np.testing.assert_array_equal(data.J_regressor, arrays["J_regressor"])


def test_sparse_matrix_with_out_of_range_indices_is_refused(tmp_path, rng):
    arrays = random_arrays(rng)
    bad = sp.csc_matrix(arrays["J_regressor"])
    bad.indices[3] = 24 + 1000  # scipy's own densify would write out of bounds
    path = write_pickle(tmp_path / "m.pkl", {**plain_pickle_dict(arrays), "J_regressor": bad})
    with pytest.raises(ModelFileError, match="'J_regressor'.*inconsistent"):
        load_model_file(path)


def test_pickle_that_is_not_a_dict(tmp_path):
    with pytest.raises(ModelFileError, match="expected a pickled dict"):
        load_model_file(write_pickle(tmp_path / "m.pkl", [1, 2, 3]))


def test_truncated_pickle(tmp_path, rng):
    path = write_pickle(tmp_path / "m.pkl", plain_pickle_dict(random_arrays(rng)))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a readable SMPL model pickle"):
        load_model_file(path)


# --------------------------------------------------------------------------------------
# Malicious pickles: refused by name, and nothing runs
# --------------------------------------------------------------------------------------

class _Reduces:
    """Pickles as `func(*args)`, which an unrestricted unpickler would call."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attack_payloads(sentinel):
    touch = f"touch {sentinel}"
    return {
        "os.system": (_Reduces(os.system, (touch,)), rf"{os.system.__module__}\.system"),
        "eval": (_Reduces(eval, (f"__import__('os').system({touch!r})",)), r"builtins\.eval"),
        # Protocols < 3 write subprocess under its Python 2 name, commands.
        "subprocess": (_Reduces(subprocess.call, (["touch", str(sentinel)],)),
                       r"(subprocess|commands)\.call"),
    }


@pytest.mark.parametrize("attack", ["os.system", "eval", "subprocess"])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, rng, attack, protocol):
    sentinel = tmp_path / "SENTINEL"
    payload, global_name = _attack_payloads(sentinel)[attack]
    # Hidden among valid entries, after arrays the loader would happily read.
    raw = {**plain_pickle_dict(random_arrays(rng, v=30)), "zz_payload": payload}
    path = write_pickle(tmp_path / "SMPL_NEUTRAL.pkl", raw, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match=global_name) as info:
        load_model_file(path)
    assert isinstance(info.value, UnsafePickleError)
    assert not sentinel.exists()


@pytest.mark.parametrize("payload, named", [
    (b"cos\nsystem\n(S'touch SENTINEL'\ntR.", r"os\.system"),
    (b"cposix\nsystem\n(S'touch SENTINEL'\ntR.", r"posix\.system"),
    (b"c__builtin__\ngetattr\n(c__builtin__\nobject\nS'__subclasses__'\ntR.",
     r"builtins\.getattr"),
    (b"c__builtin__\n__import__\n(S'os'\ntR.", r"builtins\.__import__"),
    (b"csubprocess\nPopen\n((S'touch'\nS'SENTINEL'\nltR.", r"subprocess\.Popen"),
    (b"cnumpy\nload\n(S'x.npy'\ntR.", r"numpy\.load"),
    (b"cscipy.sparse\ncoo_matrix\n(tR.", r"scipy\.sparse\.coo_matrix"),
    (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93.", r"os\.system"),
    # Allowed globals used outside their safe forms.
    (b"ccopy_reg\n_reconstructor\n(cnumpy\nndarray\ncnumpy\nndarray\n(I3\nttR.",
     r"copyreg\._reconstructor"),
    (b"cnumpy.core.multiarray\n_reconstruct\n(c__builtin__\nset\n(I0\ntS'b'\ntR.",
     r"_reconstruct asked for"),
    (b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.", r"_codecs\.encode"),
    # BUILD aimed at an allowed callable, to rewrite it for later loads.
    (b"cnumpy.core.multiarray\n_reconstruct\n(S'__defaults__'\n(I1\ntdb.", r"set state"),
])
def test_crafted_pickles_are_refused(tmp_path, monkeypatch, payload, named):
    monkeypatch.chdir(tmp_path)  # so a stray `touch SENTINEL` would land where we look
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=named):
        load_model_file(path)
    assert not (tmp_path / "SENTINEL").exists()


def test_chumpy_class_names_only_build_inert_stand_ins(tmp_path):
    # Any chumpy.* name gets a stand-in that stores its arguments and runs nothing.
    path = tmp_path / "m.pkl"
    path.write_bytes(b"\x80\x02cchumpy.ch\nCh\nX\x0b\x00\x00\x00rm -rf /tmp\x85R.")
    with pytest.raises(ModelFileError, match="expected a pickled dict, found Ch"):
        load_model_file(path)


# --------------------------------------------------------------------------------------
# smplx's .npz and folder layout; SPIN's extra regressors
# --------------------------------------------------------------------------------------

def write_npz(path, arrays):
    np.savez(path, **arrays, bs_style="lbs", bs_type="lrotmin")
    return path


def test_npz_loads(tmp_path, rng):
    arrays = random_arrays(rng)
    arrays["kintree_table"] = arrays["kintree_table"].astype(np.int64).astype(np.int32)
    arrays["kintree_table"][0, 0] = -1  # npz writers may store the root as a plain -1
    data = load_model_file(write_npz(tmp_path / "SMPL_NEUTRAL.npz", arrays))
    assert_loaded(data, arrays)


def test_npz_with_object_array_is_refused(tmp_path, rng):
    arrays = random_arrays(rng)
    arrays["v_template"] = np.array([object()] * 3, dtype=object)
    path = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match="'v_template'"):
        load_model_file(path)


def test_smplx_folder_layout_by_gender(tmp_path, rng):
    models = {gender: random_arrays(rng) for gender in ("neutral", "male", "female")}
    (tmp_path / "models" / "smpl").mkdir(parents=True)
    smpl_dir = tmp_path / "models" / "smpl"
    write_npz(smpl_dir / "SMPL_NEUTRAL.npz", models["neutral"])
    write_npz(smpl_dir / "SMPL_MALE.npz", models["male"])
    write_pickle(smpl_dir / "SMPL_FEMALE.pkl", plain_pickle_dict(models["female"]))
    for gender, arrays in models.items():
        assert_loaded(load_model_file(tmp_path / "models", gender=gender), arrays)
        assert_loaded(load_model_file(str(smpl_dir), gender=gender.upper()), arrays)
    expected_source = str((smpl_dir / "SMPL_NEUTRAL.npz").resolve())
    assert load_model_file(tmp_path / "models").source == expected_source


def test_bad_gender_and_missing_files_name_what_was_looked_for(tmp_path, rng):
    (tmp_path / "smpl").mkdir()
    write_npz(tmp_path / "smpl" / "SMPL_NEUTRAL.npz", random_arrays(rng))
    with pytest.raises(ModelFileError, match=r"gender.*'neutral', 'male', 'female'.*'kid'"):
        load_model_file(tmp_path, gender="kid")
    with pytest.raises(FileNotFoundError, match=r"smpl/SMPL_MALE\.pkl.*SMPL_MALE\.npz"):
        load_model_file(tmp_path, gender="male")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model_file(tmp_path / "nowhere" / "SMPL_NEUTRAL.pkl")
    (tmp_path / "model.txt").write_text("not a model")
    with pytest.raises(ModelFileError, match=r"'\.txt'"):
        load_model_file(tmp_path / "model.txt")


def test_spin_regressors_beside_the_model(tmp_path, rng):
    arrays = random_arrays(rng)
    h36m, extra = rng.random((17, V)), rng.random((9, V))
    path = write_pickle(tmp_path / "SMPL_NEUTRAL.pkl", plain_pickle_dict(arrays))
    np.save(tmp_path / "J_regressor_h36m.npy", h36m.astype(np.float32))
    np.save(tmp_path / "J_regressor_extra.npy", extra)
    data = load_model_file(path)
    assert sorted(data.extra_regressors) == ["extra", "h36m"]
    np.testing.assert_array_equal(data.extra_regressors["h36m"], h36m.astype(np.float32))
    np.testing.assert_array_equal(data.extra_regressors["extra"], extra)
    assert all(r.dtype == np.float64 for r in data.extra_regressors.values())


def test_spin_data_folder_layout(tmp_path, rng):
    # SPIN: data/smpl/SMPL_NEUTRAL.pkl with data/J_regressor_extra.npy one level up.
    arrays = random_arrays(rng)
    (tmp_path / "data" / "smpl").mkdir(parents=True)
    write_pickle(tmp_path / "data" / "smpl" / "SMPL_NEUTRAL.pkl", plain_pickle_dict(arrays))
    extra = rng.random((9, V))
    np.save(tmp_path / "data" / "J_regressor_extra.npy", extra)
    data = load_model_file(tmp_path / "data")
    np.testing.assert_array_equal(data.extra_regressors["extra"], extra)


def test_extra_regressor_of_wrong_shape_is_named(tmp_path, rng):
    path = write_pickle(tmp_path / "SMPL_NEUTRAL.pkl", plain_pickle_dict(random_arrays(rng)))
    np.save(tmp_path / "J_regressor_h36m.npy", rng.random((17, V + 1)))
    with pytest.raises(ModelFileError, match=r"extra_regressors\['h36m'\].*\(17, 101\)"):
        load_model_file(path)


def test_extra_regressor_saved_with_pickle_is_refused(tmp_path, rng):
    path = write_pickle(tmp_path / "SMPL_NEUTRAL.pkl", plain_pickle_dict(random_arrays(rng)))
    np.save(tmp_path / "J_regressor_extra.npy", np.array([None] * 3, dtype=object))
    with pytest.raises(ModelFileError, match="J_regressor_extra.npy"):
        load_model_file(path)


# --------------------------------------------------------------------------------------
# Errors found while reading a file
# --------------------------------------------------------------------------------------

def test_missing_key_is_named(tmp_path, rng):
    arrays = random_arrays(rng)
    del arrays["posedirs"]
    with pytest.raises(ModelFileError, match=r"missing \['posedirs'\]"):
        load_model_file(write_npz(tmp_path / "m.npz", arrays))


def test_non_lbs_model_is_refused(tmp_path, rng):
    raw = {**plain_pickle_dict(random_arrays(rng)), "bs_style": "dqs"}
    with pytest.raises(ModelFileError, match="'bs_style' is 'dqs'"):
        load_model_file(write_pickle(tmp_path / "m.pkl", raw))


@pytest.mark.parametrize("kintree, named", [
    (np.zeros((2, 23), np.int64), r"'kintree_table'.*\(2, 23\)"),
    (np.array([SMPL_PARENTS, np.arange(24)[::-1]]), r"'kintree_table': row 1"),
    (np.array([[-1, 2, 1] + list(SMPL_PARENTS[3:]), range(24)]), r"'parents'.*cyclic"),
    (np.array([["a"] * 24, ["b"] * 24]), r"'kintree_table'.*integer.*<U1"),
])
def test_bad_kintree_in_a_file(tmp_path, rng, kintree, named):
    arrays = {**random_arrays(rng), "kintree_table": kintree}
    with pytest.raises(ModelFileError, match=named):
        load_model_file(write_npz(tmp_path / "m.npz", arrays))


def test_string_array_for_a_float_field_is_named(tmp_path, rng):
    arrays = {**random_arrays(rng), "shapedirs": np.full((V, 3, NB), "x")}
    with pytest.raises(ModelFileError, match=r"'shapedirs'.*numeric.*<U1"):
        load_model_file(write_npz(tmp_path / "m.npz", arrays))


# --------------------------------------------------------------------------------------
# validate_model_data
# --------------------------------------------------------------------------------------

def model_data(rng, v=V) -> SMPLModelData:
    a = random_arrays(rng, v=v)
    return SMPLModelData(
        v_template=a["v_template"], faces=a["f"].astype(np.int64), J_regressor=a["J_regressor"],
        parents=np.array(SMPL_PARENTS, dtype=np.int64), weights=a["weights"],
        shapedirs=a["shapedirs"], posedirs=a["posedirs"], source="test")


def test_valid_data_passes_unchanged(rng):
    data = model_data(rng)
    assert validate_model_data(data) is data


SHAPE_CASES = [
    ("v_template", lambda d: d.v_template[:, :2], "(V, 3)"),
    ("faces", lambda d: d.faces[:, :2], "(F, 3)"),
    ("J_regressor", lambda d: d.J_regressor[:23], f"(24, V={V})"),
    ("J_regressor", lambda d: d.J_regressor[:, :-1], f"(24, V={V})"),
    ("parents", lambda d: d.parents[:23], "(24,)"),
    ("weights", lambda d: d.weights[:-1], f"(V={V}, 24)"),
    ("weights", lambda d: d.weights[None], f"(V={V}, 24)"),
    ("shapedirs", lambda d: d.shapedirs[:, :2], f"(V={V}, 3, num_betas)"),
    ("shapedirs", lambda d: d.shapedirs[1:], f"(V={V}, 3, num_betas)"),
    ("posedirs", lambda d: d.posedirs[..., :206], f"(V={V}, 3, 207)"),
    ("posedirs", lambda d: d.posedirs[:-1], f"(V={V}, 3, 207)"),
]


@pytest.mark.parametrize("field, bad, expected", SHAPE_CASES)
def test_wrong_shape_names_field_found_and_expected(rng, field, bad, expected):
    data = model_data(rng)
    value = bad(data)
    with pytest.raises(ModelFileError) as info:
        validate_model_data(dataclasses.replace(data, **{field: value}))
    message = str(info.value)
    assert f"'{field}'" in message and str(value.shape) in message and expected in message


@pytest.mark.parametrize("field", ["v_template", "J_regressor", "weights", "shapedirs",
                                   "posedirs"])
@pytest.mark.parametrize("bad_value, word", [(np.nan, "1 NaN"), (np.inf, "1 Inf"),
                                             (-np.inf, "1 Inf")])
def test_non_finite_values_name_the_field(rng, field, bad_value, word):
    data = model_data(rng)
    value = getattr(data, field).copy()
    value.flat[7] = bad_value
    with pytest.raises(ModelFileError, match=f"'{field}'.*{word}"):
        validate_model_data(dataclasses.replace(data, **{field: value}))


@pytest.mark.parametrize("field, convert", [
    ("v_template", lambda a: a.astype(str)),
    ("posedirs", lambda a: a.astype(object)),
    ("weights", lambda a: a > 0.5),
    ("faces", lambda a: a.astype(np.float64)),
    ("parents", lambda a: a.astype(np.float32)),
    ("J_regressor", lambda a: a.tolist()),
])
def test_wrong_dtype_or_type_names_the_field(rng, field, convert):
    data = model_data(rng)
    with pytest.raises(ModelFileError, match=f"'{field}'"):
        validate_model_data(dataclasses.replace(data, **{field: convert(getattr(data, field))}))


def test_faces_out_of_range(rng):
    data = model_data(rng)
    for bad in (V, -1):
        faces = data.faces.copy()
        faces[3, 1] = bad
        with pytest.raises(ModelFileError, match=rf"'faces'.*\[0, V={V}\)"):
            validate_model_data(dataclasses.replace(data, faces=faces))


PARENT_CASES = [
    ({0: 0}, r"joint 0 is the root and must have parent -1"),
    ({0: 4294967295}, r"joint 0 is the root and must have parent -1"),
    ({5: -1}, r"joint 5 has parent -1, a second root"),
    ({5: 24}, r"joint 5 has parent 24, outside \[0, 24\)"),
    ({1: 2, 2: 1}, r"joint 1 never reaches the root joint 0.*cyclic"),
    ({4: 4}, r"joint 4 never reaches the root.*cyclic"),
    ({1: 3}, r"joint 1 has parent 3 >= 1; the kinematic chain computes joints in index order"),
]


@pytest.mark.parametrize("changes, message", PARENT_CASES)
def test_bad_kinematic_tree_names_parents(rng, changes, message):
    parents = np.array(SMPL_PARENTS, dtype=np.int64)
    for joint, parent in changes.items():
        parents[joint] = parent
    with pytest.raises(ModelFileError, match=r"'parents' \(kintree_table row 0\): " + message):
        validate_model_data(dataclasses.replace(model_data(rng), parents=parents))


def test_skinning_weights(rng):
    data = model_data(rng)
    noisy = data.weights * (1 + 5e-4)  # real files sum to 1 only approximately
    assert validate_model_data(dataclasses.replace(data, weights=noisy))
    for scale, message in ((1.01, r"each row must sum to 1"), (-1.0, r"non-negative")):
        weights = data.weights.copy()
        weights[11] *= scale
        with pytest.raises(ModelFileError, match=r"'weights' \(shape \(100, 24\)\).*" + message):
            validate_model_data(dataclasses.replace(data, weights=weights))


def test_extra_regressors_are_checked(rng):
    data = model_data(rng)
    good = {"h36m": rng.random((17, V)), "custom": rng.random((5, V))}
    assert validate_model_data(dataclasses.replace(data, extra_regressors=good))
    cases = (
        ({"hmr19": rng.random((18, V))}, r"'extra_regressors\['hmr19'\]'.*\(19, V=100\)"),
        ({"custom": rng.random((5, V - 1))}, r"'extra_regressors\['custom'\]'.*\(J, V=100\)"),
        ({"extra": np.full((9, V), np.nan)}, r"'extra_regressors\['extra'\]'.*NaN"),
        ([1, 2], r"'extra_regressors': expected a dict"),
    )
    for extra, message in cases:
        with pytest.raises(ModelFileError, match=message):
            validate_model_data(dataclasses.replace(data, extra_regressors=extra))


_BASE = None


def _base_data():
    global _BASE
    if _BASE is None:
        _BASE = model_data(np.random.default_rng(0), v=30)
    return _BASE


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-2, 25), min_size=24, max_size=24))
def test_any_parents_accepted_iff_rooted_tree_in_index_order(parents):
    ok = parents[0] == -1 and all(0 <= parents[i] < i for i in range(1, 24))
    data = dataclasses.replace(_base_data(), parents=np.array(parents, dtype=np.int64))
    if ok:
        validate_model_data(data)
    else:
        with pytest.raises(ModelFileError, match="'parents'"):
            validate_model_data(data)


@settings(max_examples=100, deadline=None)
@given(st.tuples(*[st.integers(0, i - 1) for i in range(1, 24)]))
def test_every_tree_in_index_order_is_accepted(tail):
    parents = np.array((-1,) + tail, dtype=np.int64)
    validate_model_data(dataclasses.replace(_base_data(), parents=parents))


# --------------------------------------------------------------------------------------
# Cross-check with smplx
# --------------------------------------------------------------------------------------

def test_smplx_reads_our_pickle_the_same_way(tmp_path, rng):
    smplx = pytest.importorskip("smplx")
    arrays = random_arrays(rng)
    path = write_pickle(tmp_path / "SMPL_NEUTRAL.pkl", plain_pickle_dict(arrays))
    ours = load_model_file(path)
    theirs = smplx.SMPL(model_path=str(path), num_betas=NB)
    np.testing.assert_array_equal(theirs.v_template.numpy(), ours.v_template.astype(np.float32))
    np.testing.assert_array_equal(theirs.J_regressor.numpy(), ours.J_regressor.astype(np.float32))
    np.testing.assert_array_equal(theirs.lbs_weights.numpy(), ours.weights.astype(np.float32))
    np.testing.assert_array_equal(theirs.shapedirs.numpy(), ours.shapedirs.astype(np.float32))
    np.testing.assert_array_equal(theirs.posedirs.numpy(),
                                  ours.posedirs.reshape(-1, 207).T.astype(np.float32))
    np.testing.assert_array_equal(theirs.parents.numpy(), ours.parents)
    np.testing.assert_array_equal(theirs.faces_tensor.numpy(), ours.faces)
