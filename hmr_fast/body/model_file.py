"""Read SMPL model files into `SMPLModelData`: official .pkl, smplx-style .npz, smplx folders.

The official files are Python 2 pickles of chumpy objects. chumpy does not import on current
numpy, and `pickle.load` on a file from the internet runs whatever the file names. So the
pickle is read by `_ModelUnpickler`, whose `find_class` hands out only an explicit list of
harmless objects: numpy's array rebuilders (behind checks), stand-in classes that merely keep
the state of chumpy objects and scipy sparse matrices, and a few plain builtins. Every other
global raises `UnsafePickleError` before anything is called. The arrays are then pulled out of
the stand-ins with plain numpy (seven common chumpy expression types are evaluated by hand).

Public: `load_model_file`, `validate_model_data`, `ModelFileError`, `UnsafePickleError`.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import pickletools
import re
from pathlib import Path

import numpy as np

from hmr_fast.errors import HmrFastError

from .model_data import NUM_JOINTS, NUM_POSE_FEATURES, SMPLModelData

GENDERS = ("neutral", "male", "female")

# SPIN's extra vertex regressors, looked for beside the model file: name -> file name.
EXTRA_REGRESSOR_FILES = {"h36m": "J_regressor_h36m.npy", "extra": "J_regressor_extra.npy"}
# Row counts of the regressors we know; any other name only has to be (J, V).
EXTRA_REGRESSOR_JOINTS = {"h36m": 17, "extra": 9, "hmr19": 19}

_REQUIRED_KEYS = ("v_template", "f", "J_regressor", "kintree_table", "weights", "shapedirs",
                  "posedirs")
_OPTIONAL_KEYS = ("cocoplus_regressor", "bs_style", "bs_type")

# Weights may carry float noise; a row sum further than this from 1 is a broken file.
_WEIGHT_SUM_TOLERANCE = 1e-3
_NEGATIVE_WEIGHT_TOLERANCE = 1e-6
# Deepest chumpy expression we evaluate; real files nest two or three levels.
_MAX_EXPRESSION_DEPTH = 32


class ModelFileError(HmrFastError, ValueError):
    """A model file that cannot be read, or model arrays that are not a valid SMPL model."""


class UnsafePickleError(pickle.UnpicklingError, ModelFileError):
    """A model pickle that names a global outside the allow-list; nothing in it was run."""


# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------

class _PickledState:
    """Base of the stand-ins: keeps constructor args and pickled state, runs nothing.

    Subclasses are made per pickled class name by `_ModelUnpickler`; `pickled_name` says
    which class the file meant ("chumpy.ch.Ch", "scipy.sparse.csc.csc_matrix", ...).
    """

    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = {}
        return obj

    def __init__(self, *args, **kwargs):
        # The REDUCE form `Cls(*args)` lands here; __new__ already kept the args.
        pass

    def __setstate__(self, state):
        # BUILD hands us either the instance dict or a (dict, slots dict) pair.
        if isinstance(state, tuple) and len(state) == 2:
            for part in state:
                if isinstance(part, dict):
                    self.state.update(part)
        elif isinstance(state, dict):
            self.state.update(state)
        else:
            self.state["__state__"] = state

    def __repr__(self):
        return f"<stand-in for {self.pickled_name}>"


class _ChumpyObject(_PickledState):
    """Stand-in for any chumpy class (chumpy.ch.Ch, chumpy.ch_ops.add, ...)."""


class _SparseObject(_PickledState):
    """Stand-in for a scipy.sparse csc/csr matrix; `sparse_format` is "csc" or "csr"."""

    sparse_format = "csc"


class _CheckedCallable:
    """A callable the unpickler may hand out. Slotted and with a refusing __setstate__, so a
    BUILD opcode aimed at it cannot change its behaviour (a plain function would let a pickle
    overwrite its __defaults__ or __dict__)."""

    __slots__ = ("_fn", "_name")

    def __init__(self, name, fn):
        self._name = name
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise UnsafePickleError(f"pickle tried to set state on {self._name}")

    def __repr__(self):
        return f"<checked {self._name}>"


_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar


# numpy's C __setstate__ of dtypes and arrays trusts its input: a malformed state (found by
# fuzzing: a 6-tuple dtype state) crashes the interpreter. So a pickled dtype becomes an inert
# `_PickledDtype` whose state is checked here, and arrays are rebuilt as `_CheckedArray`s
# whose __setstate__ checks (version, shape, dtype, order, bytes) before numpy sees them.
_DTYPE_DESCR = re.compile(r"[biufc][1-9][0-9]?|[SU][0-9]{1,6}|\?")


class _PickledDtype:
    """A pickled numpy dtype: the type string from `dtype(descr, align, copy)` and the byte
    order from its BUILD state; `resolve()` makes the numpy dtype (numeric, bool, bytes and
    str kinds only: no objects, no structured dtypes)."""

    __slots__ = ("descr", "byteorder")

    def __init__(self, descr, align=False, copy=False):
        if isinstance(descr, bytes):
            descr = descr.decode("latin1")
        if not isinstance(descr, str) or not _DTYPE_DESCR.fullmatch(descr):
            raise UnsafePickleError(f"numpy dtype {descr!r} is not allowed (numbers, bools and strings only)")
        self.descr, self.byteorder = descr, "="

    def __setstate__(self, state):
        # (3, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)):
            raise UnsafePickleError(f"numpy dtype {self.descr!r} with a malformed state {_clip(state)}")
        self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.descr)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _clip(value, limit: int = 80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _real_dtype(dtype, where: str) -> np.dtype:
    if isinstance(dtype, _PickledDtype):
        return dtype.resolve()
    if isinstance(dtype, np.dtype) and not dtype.hasobject and dtype.names is None and dtype.subdtype is None:
        return dtype
    raise UnsafePickleError(f"{where} with dtype {_clip(dtype)} is not allowed")


class _CheckedArray(np.ndarray):
    """What numpy's _reconstruct builds here: a plain ndarray whose pickled state is checked
    before numpy's own __setstate__ gets it (viewed back as a plain ndarray on use)."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError(f"numpy array with a malformed state {_clip(state)}")
        version, shape, dtype, is_fortran, raw = state
        dtype = _real_dtype(dtype, "numpy array")
        if isinstance(raw, str):  # Python 2 pickles keep the bytes in a str (read as latin1)
            raw = raw.encode("latin1")
        if not (version == 1 and isinstance(shape, tuple) and len(shape) <= 32
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
                and isinstance(is_fortran, (bool, int)) and isinstance(raw, bytes)):
            raise UnsafePickleError(f"numpy array with a malformed state {_clip(state)}")
        if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(raw):
            raise ModelFileError(f"numpy array of shape {shape} and dtype {dtype} with {len(raw)} bytes of data")
        super().__setstate__((1, shape, dtype, bool(is_fortran), raw))


def _reconstruct_array(subtype, shape, dtype):
    # numpy's own rebuilder, but only for plain ndarrays (it would accept any subtype), and
    # building a _CheckedArray so the state that follows is checked.
    if subtype is not _CHECKED["ndarray"]:
        raise UnsafePickleError(f"numpy _reconstruct asked for {subtype!r}, not numpy.ndarray")
    if shape != (0,) or dtype not in (b"b", "b"):
        raise UnsafePickleError(f"numpy _reconstruct({_clip(shape)}, {_clip(dtype)}): only the (0,), b'b' "
                                "placeholder numpy writes is allowed")
    return _NUMPY_RECONSTRUCT(_CheckedArray, (0,), b"b")


def _refuse_ndarray_call(*args):
    raise UnsafePickleError("numpy.ndarray called directly; only numpy's _reconstruct form of arrays is allowed")


def _numpy_scalar(dtype, *data):
    dtype = _real_dtype(dtype, "numpy scalar")
    if len(data) != 1:
        raise UnsafePickleError(f"numpy scalar with {len(data)} data arguments")
    raw = data[0].encode("latin1") if isinstance(data[0], str) else data[0]
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise ModelFileError(f"numpy scalar of dtype {dtype} with {_clip(raw, 40)} as its data")
    return _NUMPY_SCALAR(dtype, raw)


def _frombuffer(buf, dtype, shape, order):
    # Protocol-5 arrays (Python 3.14 pickles by default with it).
    dtype = _real_dtype(dtype, "numpy _frombuffer")
    if order not in ("C", "F"):
        raise UnsafePickleError(f"numpy _frombuffer with order {order!r}")
    if not isinstance(buf, (bytes, bytearray)):
        raise UnsafePickleError(f"numpy _frombuffer of a {type(buf).__name__}")
    try:
        # From a bytes copy: a view exporting the pickle's bytearray makes CPython complain
        # ("deallocated bytearray object has exported buffers") when a later opcode fails.
        return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"numpy _frombuffer: {exc}") from None


def _latin1_bytes(text, encoding):
    # Python 3 protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _reconstruct_object(cls, base, state):
    # copyreg._reconstructor(cls, base, state) calls base.__new__(cls, state) and
    # base.__init__: here only for our stand-ins on plain `object`, never a real constructor.
    if not (isinstance(cls, type) and issubclass(cls, _PickledState)) or base is not object \
            or state is not None:
        raise UnsafePickleError(
            f"copyreg._reconstructor({cls!r}, {base!r}, ...) is allowed only for chumpy and "
            "scipy.sparse objects on builtins.object")
    return cls.__new__(cls)


_CHECKED = {
    "_reconstruct": _CheckedCallable("numpy _reconstruct", _reconstruct_array),
    "scalar": _CheckedCallable("numpy scalar", _numpy_scalar),
    "_frombuffer": _CheckedCallable("numpy _frombuffer", _frombuffer),
    "dtype": _CheckedCallable("numpy dtype", _PickledDtype),
    # numpy.ndarray only as _reconstruct's first argument: calling it (ndarray(shape, dtype,
    # buffer, offset, strides)) is refused.
    "ndarray": _CheckedCallable("numpy.ndarray", _refuse_ndarray_call),
    "encode": _CheckedCallable("_codecs.encode", _latin1_bytes),
    "_reconstructor": _CheckedCallable("copyreg._reconstructor", _reconstruct_object),
}

# (module, name) -> what find_class returns. Types here are immutable builtins.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _CHECKED["_reconstruct"],
    ("numpy._core.multiarray", "_reconstruct"): _CHECKED["_reconstruct"],
    ("numpy.core.multiarray", "scalar"): _CHECKED["scalar"],
    ("numpy._core.multiarray", "scalar"): _CHECKED["scalar"],
    ("numpy.core.numeric", "_frombuffer"): _CHECKED["_frombuffer"],
    ("numpy._core.numeric", "_frombuffer"): _CHECKED["_frombuffer"],
    ("numpy", "ndarray"): _CHECKED["ndarray"],
    ("numpy", "dtype"): _CHECKED["dtype"],
    ("_codecs", "encode"): _CHECKED["encode"],
    ("copyreg", "_reconstructor"): _CHECKED["_reconstructor"],
    ("builtins", "object"): object,
    ("builtins", "set"): set,  # Python 2 pickled sets (chumpy's _dirty_vars) as set(list)
    ("builtins", "frozenset"): frozenset,
}

_SPARSE_MODULES = {"scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr",
                   "scipy.sparse._csr", "scipy.sparse.compressed", "scipy.sparse._compressed"}
_SPARSE_CLASSES = {"csc_matrix": "csc", "csc_array": "csc", "csr_matrix": "csr",
                   "csr_array": "csr"}

# Python 2 module names that Python 3's Unpickler would translate (ours bypasses that).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _ModelUnpickler(pickle.Unpickler):
    """Unpickler whose find_class admits only `_ALLOWED_GLOBALS`, chumpy and scipy sparse."""

    def __init__(self, file):
        super().__init__(file, encoding="latin1")
        self._stand_in_classes = {}  # per load, so nothing a file does outlives it

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if (module == "chumpy" or module.startswith("chumpy.")) and name.isidentifier():
            return self._stand_in(_ChumpyObject, module, name)
        if module in _SPARSE_MODULES and name in _SPARSE_CLASSES:
            return self._stand_in(_SparseObject, module, name,
                                  sparse_format=_SPARSE_CLASSES[name])
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}': an SMPL model pickle may only hold "
            "numpy arrays, scipy.sparse csc/csr matrices and chumpy arrays")

    def _stand_in(self, base, module, name, **attributes):
        key = (module, name)
        if key not in self._stand_in_classes:
            attributes["pickled_name"] = f"{module}.{name}"
            self._stand_in_classes[key] = type(name, (base,), attributes)
        return self._stand_in_classes[key]


def _reason(exc: BaseException, limit: int = 160) -> str:
    """A library's complaint about a file as one short line, without advice to load it
    unsafely (numpy suggests allow_pickle=True for object arrays; we never do)."""
    text = " ".join(str(exc).split())
    if "allow_pickle" in text or "pickle.load" in text:
        return "it holds pickled Python objects, which are refused"
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _check_memo_indices(data: bytes) -> None:
    """Refuse memo indices beyond the pickle's opcode count before unpickling: the C unpickler
    grows its memo table to any index a PUT names (found by fuzzing: `p` followed by a long
    number stalled a load for many seconds on one large allocation). A pickler numbers its
    memo entries 0, 1, 2, ..., at most one per opcode, so real files never do this."""
    ops = 0
    for op, arg, _pos in pickletools.genops(data):  # reads the opcodes only; nothing is built
        ops += 1
        if op.name in _MEMO_OPS and isinstance(arg, int) and not 0 <= arg <= ops:
            raise ValueError(f"memo index {arg} at opcode {ops} (a pickler numbers them from 0)")
        if op.name == "STOP":
            return


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        data = f.read()
    try:
        _check_memo_indices(data)
    except Exception as exc:  # genops' complaints about a malformed pickle: a bad file
        raise ModelFileError(f"{path}: not a readable SMPL model pickle ({_reason(exc)})") from None
    with io.BytesIO(data) as f:
        try:
            raw = _ModelUnpickler(f).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {' '.join(str(exc).split())}") from None
        except Exception as exc:  # a corrupt pickle can fail in many ways; all mean "bad file"
            raise ModelFileError(f"{path}: not a readable SMPL model pickle ({_reason(exc)})") from exc
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path}: expected a pickled dict, found {type(raw).__name__}")
    return raw


def _read_npz(path: Path) -> dict:
    # Read only the keys we use: smplx's npz files may hold object arrays we never need.
    # numpy's readers fail on damaged files in many ways (EOFError, SyntaxError from the
    # header, zipfile and zlib errors, ...); with allow_pickle=False none of them runs code.
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive of named arrays")
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable .npz file ({_reason(exc)})") from exc
    with npz:
        raw = {}
        for key in _REQUIRED_KEYS + _OPTIONAL_KEYS:
            if key in npz.files:
                try:
                    raw[key] = npz[key]
                except Exception as exc:  # object arrays refuse to load without pickle; damaged members
                    raise ModelFileError(f"{path}: entry '{key}' cannot be read ({_reason(exc)})") from exc
        return raw


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # as in _read_npz: every failure means a damaged file
        raise ModelFileError(f"{path}: not a readable .npy array ({_reason(exc)})") from exc
    if not isinstance(array, np.ndarray):
        array.close()
        raise ModelFileError(f"{path}: expected a .npy array, found an .npz archive")
    return array


# --------------------------------------------------------------------------------------
# From pickled objects to arrays
# --------------------------------------------------------------------------------------

def _to_array(value, key: str, depth: int = 0) -> np.ndarray:
    """Turn what the file stored under `key` (array, chumpy, sparse, list) into an ndarray."""
    if depth > _MAX_EXPRESSION_DEPTH:
        raise ModelFileError(f"'{key}': chumpy expression nested deeper than "
                             f"{_MAX_EXPRESSION_DEPTH} levels (or cyclic)")
    if isinstance(value, np.ndarray):
        return value.view(np.ndarray) if type(value) is not np.ndarray else value
    if isinstance(value, _SparseObject):
        return _sparse_to_dense(value, key, depth)
    if isinstance(value, _ChumpyObject):
        return _chumpy_value(value, key, depth)
    if isinstance(value, (np.generic, int, float, list, tuple)):
        try:
            return np.asarray(value)
        except (ValueError, TypeError, RecursionError) as exc:  # ragged or self-nested lists
            raise ModelFileError(f"'{key}': cannot read {type(value).__name__} as an array "
                                 f"({exc})") from exc
    raise ModelFileError(f"'{key}': cannot read a {type(value).__name__} as an array")


def _chumpy_value(obj: _ChumpyObject, key: str, depth: int) -> np.ndarray:
    """The value of a pickled chumpy object: its stored 'x', or a known expression evaluated."""
    state = obj.state
    if "x" in state:  # Ch and every leaf keep their value in 'x'
        return _to_array(state["x"], key, depth + 1)
    kind = obj.pickled_name.rsplit(".", 1)[-1]
    if kind in _CHUMPY_EXPRESSIONS:
        def term(name):
            if name not in state:
                raise ModelFileError(f"'{key}': chumpy {obj.pickled_name} has no '{name}' term")
            return _to_array(state[name], key, depth + 1)
        try:
            return np.asarray(_CHUMPY_EXPRESSIONS[kind](term, state))
        except (ValueError, IndexError, TypeError, KeyError, AttributeError) as exc:
            raise ModelFileError(f"'{key}': cannot evaluate chumpy {obj.pickled_name}: "
                                 f"{exc}") from exc
    if obj.args:  # the REDUCE form Ch(array)
        return _to_array(obj.args[0], key, depth + 1)
    raise ModelFileError(
        f"'{key}': chumpy {obj.pickled_name} stores no value 'x' and is not an expression "
        f"this loader evaluates ({', '.join(sorted(_CHUMPY_EXPRESSIONS))}); "
        "re-save the model with plain numpy arrays")


def _select(term, state):
    result = term("a").ravel()[np.asarray(term("idxs"), dtype=np.int64)]
    if "preferred_shape" in state:
        result = result.reshape(tuple(state["preferred_shape"]))
    return result


# chumpy expression class name -> evaluation from its terms, as chumpy's compute_r does.
_CHUMPY_EXPRESSIONS = {
    "add": lambda term, state: term("a") + term("b"),
    "subtract": lambda term, state: term("a") - term("b"),
    "multiply": lambda term, state: term("a") * term("b"),
    "negative": lambda term, state: -term("a"),
    "Reshape": lambda term, state: term("a").reshape(state["newshape"]),
    "transpose": lambda term, state: np.transpose(term("a"), state.get("axes")),
    "Select": _select,
}


def _sparse_to_dense(obj: _SparseObject, key: str, depth: int) -> np.ndarray:
    """Densify a pickled csc/csr matrix with numpy, checking every index first (scipy's
    own densify trusts the indices, so a hostile file could make it write out of bounds)."""
    state = obj.state
    shape = state.get("_shape", state.get("shape"))
    try:
        n_rows, n_cols = (int(s) for s in shape)
        data = _to_array(state["data"], key, depth + 1)
        indices = np.asarray(_to_array(state["indices"], key, depth + 1), np.int64).ravel()
        indptr = np.asarray(_to_array(state["indptr"], key, depth + 1), np.int64).ravel()
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"'{key}': malformed {obj.pickled_name} ({exc})") from exc
    _require_numeric(data, key, "iuf")
    n_major, n_minor = (n_cols, n_rows) if obj.sparse_format == "csc" else (n_rows, n_cols)
    data = data.ravel()
    ok = (n_rows >= 0 and n_cols >= 0 and indptr.shape == (n_major + 1,)
          and indptr[0] == 0 and np.all(np.diff(indptr) >= 0)
          and indptr[-1] == indices.size == data.size
          and np.all((indices >= 0) & (indices < n_minor)))
    if not ok:
        raise ModelFileError(f"'{key}': {obj.pickled_name} of shape {(n_rows, n_cols)} has "
                             "inconsistent indptr/indices/data")
    major = np.repeat(np.arange(n_major), np.diff(indptr))
    rows, cols = (indices, major) if obj.sparse_format == "csc" else (major, indices)
    dense = np.zeros((n_rows, n_cols), dtype=np.float64)
    np.add.at(dense, (rows, cols), data)  # add, as scipy does for duplicate entries
    return dense


def _require_numeric(array: np.ndarray, key: str, kinds: str) -> None:
    if array.dtype.kind not in kinds:
        wanted = "an integer" if kinds == "iu" else "a numeric"
        raise ModelFileError(f"'{key}': expected {wanted} array, found dtype {array.dtype} "
                             f"with shape {array.shape}")


def _float_field(raw: dict, key: str) -> np.ndarray:
    array = _to_array(raw[key], key)
    _require_numeric(array, key, "iuf")
    return np.ascontiguousarray(array, dtype=np.float64)


def _int_field(raw: dict, key: str) -> np.ndarray:
    array = _to_array(raw[key], key)
    # Accept whole-valued floats (some conversions store indices as float).
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64)
    _require_numeric(array, key, "iu")
    # uint64 values past int64 wrap negative here; validation rejects them as out of range.
    return np.ascontiguousarray(array, dtype=np.int64)


def _parents_from_kintree(kintree: np.ndarray) -> np.ndarray:
    """Row 0 of the (2, 24) kintree_table; the root's stored parent (4294967295 as uint32 in
    the official files, -1 elsewhere) becomes -1."""
    if kintree.shape != (2, NUM_JOINTS):
        raise ModelFileError(f"'kintree_table': expected shape (2, {NUM_JOINTS}), found "
                             f"{kintree.shape} (dtype {kintree.dtype})")
    if not np.array_equal(kintree[1], np.arange(NUM_JOINTS)):
        # Row 1 names the joint of each column; SMPL stores them in order, and the parents
        # row is only joint-indexed if they are.
        raise ModelFileError(f"'kintree_table': row 1 must list joints 0..{NUM_JOINTS - 1} in "
                             f"order, found {kintree[1].tolist()}")
    parents = kintree[0].copy()
    if not 0 <= parents[0] < NUM_JOINTS:
        parents[0] = -1
    return parents


def _check_blend_style(raw: dict, source: str) -> None:
    # Official files record how they were made; our skinning is LBS with (R - I) pose features.
    for key, wanted in (("bs_style", "lbs"), ("bs_type", "lrotmin")):
        value = raw.get(key)
        if isinstance(value, np.ndarray) and value.dtype.kind in "US" and value.size == 1:
            value = value.item()  # an npz stores strings as 0-d arrays
        if isinstance(value, bytes):
            value = value.decode("latin1")
        if isinstance(value, str) and value != wanted:
            raise ModelFileError(f"{source}: '{key}' is {value!r}; only {wanted!r} SMPL models "
                                 "are supported")


def _model_from_raw(raw: dict, source: str) -> SMPLModelData:
    missing = [key for key in _REQUIRED_KEYS if key not in raw]
    if missing:
        raise ModelFileError(f"{source}: missing {missing}; an SMPL model file needs "
                             f"{list(_REQUIRED_KEYS)} (found keys {sorted(map(str, raw))})")
    _check_blend_style(raw, source)
    extra = {}
    if "cocoplus_regressor" in raw:  # HMR's neutral_smpl_with_cocoplus_reg.pkl
        extra["hmr19"] = _float_field(raw, "cocoplus_regressor")
    return SMPLModelData(
        v_template=_float_field(raw, "v_template"),
        faces=_int_field(raw, "f"),
        J_regressor=_float_field(raw, "J_regressor"),
        parents=_parents_from_kintree(_int_field(raw, "kintree_table")),
        weights=_float_field(raw, "weights"),
        shapedirs=_float_field(raw, "shapedirs"),
        posedirs=_float_field(raw, "posedirs"),
        extra_regressors=extra,
        source=source,
    )


# --------------------------------------------------------------------------------------
# Finding the file
# --------------------------------------------------------------------------------------

def _check_gender(gender) -> str:
    if not isinstance(gender, str) or gender.lower() not in GENDERS:
        raise ModelFileError(f"gender must be one of {GENDERS}, got {gender!r}")
    return gender.lower()


def _resolve_model_path(given: Path, gender: str) -> Path:
    """A file is taken as is; a folder is searched in smplx's layout (DIR/smpl/SMPL_X.pkl),
    or as the smpl/ folder itself."""
    if given.is_file():
        return given
    if not given.is_dir():
        raise FileNotFoundError(f"SMPL model file or folder not found: {given}")
    name = f"SMPL_{gender.upper()}"
    candidates = [folder / f"{name}.{ext}" for folder in (given / "smpl", given)
                  for ext in ("pkl", "npz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {gender} SMPL model in {given}: looked for "
                            + ", ".join(str(c) for c in candidates))


def _read_model_file(path: Path) -> dict:
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        return _read_pickle(path)
    if suffix == ".npz":
        return _read_npz(path)
    raise ModelFileError(f"{path}: unknown model file type {suffix!r}; expected .pkl or .npz")


def _find_extra_regressors(model_path: Path, given: Path, num_vertices: int) -> dict:
    """SPIN's J_regressor_h36m.npy / J_regressor_extra.npy beside the model file, or in the
    folder the caller named (SPIN keeps them in data/, the models in data/smpl/); each is
    checked here, so an error names its file."""
    folders = [model_path.parent]
    if given.is_dir() and given.resolve() != model_path.parent.resolve():
        folders.append(given)
    found = {}
    for name, filename in EXTRA_REGRESSOR_FILES.items():
        for folder in folders:
            path = folder / filename
            if path.is_file():
                array = _read_npy(path)
                _require_numeric(array, f"extra_regressors['{name}'] ({path})", "iuf")
                joints = EXTRA_REGRESSOR_JOINTS.get(name)
                _check_array(f"extra_regressors['{name}'] ({path})", array, (joints, num_vertices),
                             f"({joints if joints else 'J'}, V={num_vertices})", "iuf")
                found[name] = np.ascontiguousarray(array, dtype=np.float64)
                break
    return found


def load_model_file(path, gender: str = "neutral") -> SMPLModelData:
    """Load an SMPL model: an official .pkl (chumpy not needed, no pickled code run), an
    smplx-style .npz, or a folder in smplx's layout (`DIR/smpl/SMPL_{GENDER}.{pkl,npz}`).

    SPIN's J_regressor_h36m.npy / J_regressor_extra.npy next to the model become
    extra_regressors "h36m" / "extra"; HMR's cocoplus_regressor becomes "hmr19".
    Raises FileNotFoundError (naming the paths tried), UnsafePickleError (a pickle naming
    a global outside the allow-list) or ModelFileError (anything else wrong with the file).
    """
    gender = _check_gender(gender)
    given = Path(os.fspath(path))
    model_path = _resolve_model_path(given, gender)
    source = str(model_path.resolve())
    try:
        data = validate_model_data(_model_from_raw(_read_model_file(model_path), source))
        extras = {**data.extra_regressors,
                  **_find_extra_regressors(model_path, given, data.v_template.shape[0])}
        _check_extra_regressors(extras, data.v_template.shape[0])
        return dataclasses.replace(data, extra_regressors=extras)
    except ModelFileError as exc:
        # Messages about an array ('weights': ...) name the field; add the file they came from
        # (errors about a regressor file beside the model name that file).
        message = " ".join(str(exc).split())
        if any(str(named) in message for named in (model_path, source, model_path.parent, given)):
            raise
        raise type(exc)(f"{model_path}: {message}") from None


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

def _field_error(name: str, array, expected: str) -> ModelFileError:
    found = (f"shape {array.shape}, dtype {array.dtype}" if isinstance(array, np.ndarray)
             else f"a {type(array).__name__}")
    return ModelFileError(f"SMPL model field '{name}': expected {expected}, found {found}")


def _check_array(name: str, array, shape: tuple, shape_text: str, kinds: str) -> None:
    """`shape` holds ints or None (any size); `kinds` the allowed numpy dtype kinds."""
    if not isinstance(array, np.ndarray):
        raise _field_error(name, array, f"a numpy array of shape {shape_text}")
    if array.dtype.kind not in kinds:
        wanted = "integer" if kinds == "iu" else "numeric"
        raise _field_error(name, array, f"a {wanted} dtype (shape {shape_text})")
    sizes_match = all(s is None or s == n for s, n in zip(shape, array.shape))
    if array.ndim != len(shape) or not sizes_match:
        raise _field_error(name, array, f"shape {shape_text}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise ModelFileError(f"SMPL model field '{name}' (shape {array.shape}) contains "
                             f"{n_nan} NaN and {n_inf} Inf values")


def _parents_error(message: str) -> ModelFileError:
    return ModelFileError(f"SMPL model field 'parents' (kintree_table row 0): {message}")


def _check_parents(parents: np.ndarray) -> None:
    """A tree rooted at joint 0 whose parents come before their children."""
    p = [int(x) for x in parents]
    if p[0] != -1:
        raise _parents_error(f"joint 0 is the root and must have parent -1, found {p[0]}")
    for joint in range(1, NUM_JOINTS):
        if p[joint] == -1:
            raise _parents_error(f"joint {joint} has parent -1, a second root; only joint 0 "
                                 "may be a root")
        if not 0 <= p[joint] < NUM_JOINTS:
            raise _parents_error(f"joint {joint} has parent {p[joint]}, outside "
                                 f"[0, {NUM_JOINTS})")
    for joint in range(1, NUM_JOINTS):
        chain = [joint]
        while chain[-1] != 0 and len(chain) <= NUM_JOINTS:
            chain.append(p[chain[-1]])
        if chain[-1] != 0:
            raise _parents_error(f"joint {joint} never reaches the root joint 0: its chain of "
                                 f"parents is cyclic ({chain[:8]}...)")
    for joint in range(1, NUM_JOINTS):
        if p[joint] >= joint:
            raise _parents_error(
                f"joint {joint} has parent {p[joint]} >= {joint}; the kinematic chain computes "
                "joints in index order, so every parent index must be smaller than its child's")


def _check_weights(weights: np.ndarray) -> None:
    if weights.min() < -_NEGATIVE_WEIGHT_TOLERANCE:
        row = int(np.argmin(weights.min(axis=1)))
        raise ModelFileError(f"SMPL model field 'weights' (shape {weights.shape}): skinning "
                             f"weights must be non-negative, vertex {row} has "
                             f"{weights[row].min()}")
    error = np.abs(weights.sum(axis=1) - 1.0)
    if error.max() > _WEIGHT_SUM_TOLERANCE:
        row = int(np.argmax(error))
        raise ModelFileError(f"SMPL model field 'weights' (shape {weights.shape}): each row "
                             f"must sum to 1, vertex {row} sums to {weights[row].sum()}")


def _check_extra_regressors(extra, num_vertices: int) -> None:
    if not isinstance(extra, dict):
        raise ModelFileError(f"SMPL model field 'extra_regressors': expected a dict, found "
                             f"a {type(extra).__name__}")
    for name, regressor in extra.items():
        joints = EXTRA_REGRESSOR_JOINTS.get(name)
        text = f"({joints if joints else 'J'}, V={num_vertices})"
        _check_array(f"extra_regressors['{name}']", regressor, (joints, num_vertices), text,
                     "iuf")


def validate_model_data(data: SMPLModelData) -> SMPLModelData:
    """Check shapes, dtypes, finiteness, the kinematic tree and the skinning weights; return
    `data` unchanged, or raise ModelFileError naming the field, what was found and what was
    expected. V comes from v_template; every other per-vertex array must agree with it."""
    if not isinstance(data, SMPLModelData):
        raise ModelFileError(f"expected SMPLModelData, found {type(data).__name__}")
    _check_array("v_template", data.v_template, (None, 3), "(V, 3)", "iuf")
    v = data.v_template.shape[0]
    if v == 0:
        raise _field_error("v_template", data.v_template, "at least one vertex")
    j, pf = NUM_JOINTS, NUM_POSE_FEATURES
    _check_array("faces", data.faces, (None, 3), "(F, 3)", "iu")
    _check_array("J_regressor", data.J_regressor, (j, v), f"({j}, V={v})", "iuf")
    _check_array("parents", data.parents, (j,), f"({j},)", "iu")
    _check_array("weights", data.weights, (v, j), f"(V={v}, {j})", "iuf")
    _check_array("shapedirs", data.shapedirs, (v, 3, None), f"(V={v}, 3, num_betas)", "iuf")
    _check_array("posedirs", data.posedirs, (v, 3, pf), f"(V={v}, 3, {pf})", "iuf")
    if data.shapedirs.shape[2] == 0:
        raise _field_error("shapedirs", data.shapedirs, "at least one shape direction")
    if data.faces.size and (data.faces.min() < 0 or data.faces.max() >= v):
        raise ModelFileError(f"SMPL model field 'faces' (shape {data.faces.shape}): vertex "
                             f"indices must lie in [0, V={v}), found [{data.faces.min()}, "
                             f"{data.faces.max()}]")
    _check_parents(data.parents)
    _check_weights(data.weights)
    _check_extra_regressors(data.extra_regressors, v)
    if not isinstance(data.source, str):
        raise ModelFileError(f"SMPL model field 'source': expected a str, found "
                             f"{type(data.source).__name__}")
    return data
