"""Checkpoints: atomic writes, plain contents, loadable with torch.load(weights_only=True).

A checkpoint is a dict of tensors, dicts, lists, strings and numbers only:
  format        "hmr_fast.checkpoint/1"
  config        the training config as a plain dict (its "model" section rebuilds the HMR)
  model         HMR's state dict without the SMPL buffers (the body model is rebuilt from
                config["model"]["smpl_model"], the mannequin when that is null)
  step          optimisation steps done
  ...           whatever else the trainer passes (discriminator, optimizers, schedulers,
                rng states, data position); inference reads only config and model.
Writing goes to a temp file in the same folder, fsync, then os.replace: a crash mid-write
leaves the previous checkpoint intact, never a torn one.

Reading trusts nothing in the file: it must be the zip archive torch.save writes (a bare pickle
is refused unread), its pickle is read by torch's weights-only unpickler (a global outside
plain data is refused and nothing from the file runs), and every way it can fail - random
bytes, a truncated archive, another program's file, a config or weights that do not fit -
raises CheckpointError with one line naming the file, what was found and what is expected.
A missing file is FileNotFoundError.
"""
from __future__ import annotations

import pickletools
import re
import tempfile
import zipfile
from pathlib import Path

import torch

from hmr_fast.atomic import atomic_path
from hmr_fast.errors import CheckpointError, HmrFastError
from hmr_fast.body import SMPL
from hmr_fast.body.smplx_layer import SmplxLayer

from .hmr import HMR

FORMAT = "hmr_fast.checkpoint/1"
SMPL_PREFIX = "smpl."
# What every checkpoint holds, and what its config's model section needs to rebuild the HMR.
REQUIRED_KEYS = ("format", "config", "model")
MODEL_CONFIG_KEYS = {"backbone": str, "pose_repr": str, "ief_iters": int, "img_size": int, "joint_set": str}
EXPECTED = "an hmr_fast checkpoint (the zip archive `hmr-fast train` or `hmr-fast pack` writes)"
PLAIN_DATA = "tensors, dicts, lists, strings and numbers"


def model_state(model) -> dict:
    """The HMR's learnable state: everything but the body model's constant buffers."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return {k: v for k, v in model.state_dict().items() if not k.startswith(SMPL_PREFIX)}


def save_checkpoint(path, model, config: dict, step: int = 0, **state) -> None:
    """Write model + config (+ any trainer state given as keyword arguments) atomically."""
    payload = {"format": FORMAT, "config": config, "model": model_state(model), "step": int(step), **state}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def read_checkpoint(path, map_location="cpu") -> dict:
    """The raw checkpoint dict; never unpickles code (weights_only=True).

    FileNotFoundError when there is no such file; CheckpointError (one line naming the file)
    for anything that is not a readable hmr_fast checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected {EXPECTED}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # every failure here is the file's: say so, without torch's advice
        raise CheckpointError(f"{path}: {_load_failure(exc)}; expected {EXPECTED}") from None
    _check_payload(payload, path)
    return payload


# torch.save's legacy (pre-zip, torch < 1.6) files begin with a protocol-2 pickle of this number.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little")


def load_torch_file(path, expected: str, map_location="cpu"):
    """What torch.save wrote to `path` (a zip archive, or the legacy format older torch
    wrote), read with torch's weights-only unpickler: a global outside plain data is refused
    and nothing from the file runs. Anything else is refused unread. FileNotFoundError when
    missing; CheckpointError (one line naming the file and `expected`) for a file that is not
    such a torch file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected {expected}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected {expected}")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or exc}); expected {expected}") from None
    if not head.startswith(LEGACY_MAGIC):
        _check_archive(path, expected)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: {_load_failure(exc)}; expected {expected}") from None


def _a(value) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiouAEIOU' else 'a'} {name}"


def _one_line(text, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_archive(path: Path, expected: str = EXPECTED) -> None:
    """Refuse, before torch sees them, files that are not a torch zip archive (torch would
    fall back to unpickling them as a legacy file) and archives without their data.pkl."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or exc}); expected {expected}") from None
    if not head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{path} is not a checkpoint: it is {_describe(head)}, not a zip archive; "
                              f"nothing in it was loaded; expected {expected}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception as exc:  # zipfile's errors on damaged archives vary (BadZipFile, ValueError, ...)
        raise CheckpointError(f"{path} is a truncated or damaged zip archive ({_one_line(exc, 120)}): copy or "
                              f"download it again; expected {expected}") from None
    pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
    if not pickles:
        listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint: it has no data.pkl "
                              f"(found {len(names)} entries: {listed or 'none'}); expected {expected}")
    # torch reads members without checking their CRC-32: read the (small) pickle here, where
    # zipfile checks it, so bytes damaged on disk are named as such before anything is unpickled.
    try:
        with zipfile.ZipFile(path) as archive:
            archive.read(pickles[0])
    except Exception as exc:  # BadZipFile (bad CRC-32, bad local header), zlib.error, EOFError, ...
        raise CheckpointError(f"{path}: its member {pickles[0]} is damaged ({_one_line(exc, 120)}): copy or "
                              f"download it again; nothing from the file ran; expected {expected}") from None


def _describe(head: bytes) -> str:
    """What a file that is not a zip archive looks like, from its first bytes (nothing is run)."""
    if not head:
        return "empty (0 bytes)"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        found = _pickle_globals(head)
        asks = f" that asks for {', '.join(found)}" if found else ""
        return f"a bare pickle{asks} (refused unread: checkpoints are never bare pickles)"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy array"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        return "a text file"
    return f"unknown bytes (starting {head[:8].hex(' ')})"


def _pickle_globals(head: bytes, limit: int = 3) -> list:
    """The globals a pickle's first bytes name, read with pickletools (nothing is unpickled)."""
    found, strings = [], []
    try:
        for op, arg, _pos in pickletools.genops(head):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
            if len(found) >= limit:
                break
    except Exception:  # the head is cut off, or not a pickle after all: report what was seen
        pass
    return [_one_line(name, 60) for name in found]


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(.+)")


_MEMBER = re.compile(r"failed reading (?:zip archive|file) ([\w./-]+)")


def _raised_in_unpickler(exc: Exception) -> bool:
    """Whether exc was raised by torch's weights-only unpickler itself while reading data.pkl's
    opcodes (a damaged pickle's IndexError, ValueError, ...), not by something it called."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.endswith("_weights_only_unpickler.py")


def _load_failure(exc: Exception) -> str:
    """What went wrong in torch.load, in our words: never torch's advice to load unsafely.
    The member that failed is named wherever it can be told: data.pkl for whatever the
    unpickler raised, the record torch's reader names for a storage it could not read."""
    message = str(exc)
    refused = _GLOBAL.search(message)
    if refused:
        return (f"its pickle asks for the global {refused.group(1)}, which is refused: a checkpoint holds only "
                f"{PLAIN_DATA}; unpickling stopped there and nothing from the file ran")
    if ("weights_only" in message or isinstance(exc, (EOFError, KeyError)) or "nickl" in type(exc).__name__
            or _raised_in_unpickler(exc)):
        reason = _UNPICKLER_REASON.search(message)
        detail = _one_line(reason.group(1), 80) if reason else _one_line(f"{type(exc).__name__}: {exc}", 80)
        if "weights_only" in detail or "safe_globals" in detail:
            detail = type(exc).__name__
        return f"its pickle (data.pkl) cannot be read as plain {PLAIN_DATA} ({detail}); nothing from the file ran"
    detail = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", _one_line(message, 160))
    if "weights_only" in detail or "safe_globals" in detail:
        detail = type(exc).__name__
    member = _MEMBER.search(message)
    where = f"its member {member.group(1)} cannot be read" if member else "the archive is damaged or truncated"
    return f"{where} ({type(exc).__name__}: {detail})"


def _check_payload(payload, path: Path) -> None:
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not an hmr_fast checkpoint: it holds {_a(payload)}, "
                              f"expected a dict with format {FORMAT!r}")
    if payload.get("format") != FORMAT:
        keys = ", ".join(_one_line(repr(k), 40) for k in list(payload)[:6])
        raise CheckpointError(f"{path} is not an hmr_fast checkpoint: format {_one_line(repr(payload.get('format')), 60)}"
                              f" (expected {FORMAT!r}); its keys: {keys or 'none'}")
    for key in REQUIRED_KEYS:
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint is missing key {key!r} (an hmr_fast checkpoint has "
                                  f"{', '.join(map(repr, REQUIRED_KEYS))})")
    config = payload["config"]
    model_config = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model_config, dict):
        found = (f"config is {_a(config)}" if not isinstance(config, dict)
                 else "config has no model section" if "model" not in config
                 else f"config['model'] is {_a(model_config)}")
        raise CheckpointError(f"{path}: the checkpoint's {found}; expected config['model'] to be a dict "
                              f"({', '.join(MODEL_CONFIG_KEYS)}, ...)")
    for key, kind in MODEL_CONFIG_KEYS.items():
        value = model_config.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            found = "missing" if key not in model_config else f"{_one_line(repr(value), 60)}"
            raise CheckpointError(f"{path}: the checkpoint's config['model'][{key!r}] is {found}; expected "
                                  f"{'an int' if kind is int else 'a string'}")
    _check_state(payload["model"], path, "model")


def _check_state(state, source, name: str = "model") -> None:
    """A state dict: string keys, tensor values."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: the checkpoint's {name!r} is {_a(state)}; expected a dict "
                              "of weight tensors (a state dict)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: the checkpoint's {name!r} has entry {_one_line(repr(key), 60)} holding "
                                  f"{_a(value)}; expected a dict of weight tensors (a state dict)")


def build_smpl(model_config: dict, device=None):
    """The body model a config names: hmr_fast's SMPL (any backend) or smplx's layer."""
    backend = model_config.get("smpl_backend", "auto")
    joint_set = model_config.get("joint_set", "hmr19")
    if backend == "smplx":
        smpl = SmplxLayer(model_config.get("smpl_model"), joint_set=joint_set)
    else:
        smpl = SMPL(model_config.get("smpl_model"), backend=backend, joint_set=joint_set)
    return smpl.to(device) if device is not None else smpl


def build_model(model_config: dict, smpl=None, pretrained: bool = True):
    """An HMR from a config's "model" section (pretrained=False skips loading backbone
    weights, e.g. when a checkpoint's weights follow)."""
    regressor = model_config.get("regressor") or "hmr"  # checkpoints before SPIN's wiring have no key
    mean_params = model_config.get("mean_params") if pretrained and regressor == "spin" else None
    return HMR(backbone=model_config["backbone"], pose_repr=model_config["pose_repr"],
               ief_iters=model_config["ief_iters"], img_size=model_config["img_size"],
               joint_set=model_config["joint_set"], dropout=model_config.get("dropout", 0.5),
               pretrained=model_config.get("pretrained") if pretrained else None,
               smpl=smpl if smpl is not None else build_smpl(model_config),
               regressor=regressor, mean_params=read_mean_params(mean_params) if mean_params else None)


MEAN_PARAMS_KEYS = {"pose": (144,), "shape": (10,), "cam": (3,)}


def read_mean_params(path):
    """SPIN's smpl_mean_params.npz -> (pose (144,), shape (10,), cam (3,)) float32 tensors;
    read with allow_pickle=False. A missing file is FileNotFoundError, a wrong one a
    CheckpointError naming the key."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.mean_params: {path} not found (SPIN's release puts it at "
                                "data/smpl_mean_params.npz, from fetch_data.sh's data.tar.gz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in MEAN_PARAMS_KEYS if k in npz.files}
    except Exception as exc:  # not an npz, damaged, or an object array
        raise CheckpointError(f"{path}: not SPIN's smpl_mean_params.npz ({type(exc).__name__}: "
                              f"{_one_line(exc, 100)})") from None
    out = []
    for key, shape in MEAN_PARAMS_KEYS.items():
        if key not in arrays:
            raise CheckpointError(f"{path}: missing key {key!r}; smpl_mean_params.npz holds pose (144,), "
                                  "shape (10,) and cam (3,)")
        a = arrays[key].reshape(-1) if arrays[key].size == shape[0] else arrays[key]
        if a.shape != shape or a.dtype.kind not in "fiu" or not np.isfinite(a).all():
            raise CheckpointError(f"{path}: key {key!r} has shape {arrays[key].shape} dtype {arrays[key].dtype}; "
                                  f"expected {shape} finite numbers")
        out.append(torch.as_tensor(a, dtype=torch.float32))
    return tuple(out)


def load_checkpoint(path, map_location="cpu", smpl=None, smpl_backend: str = "auto"):
    """(HMR in eval mode with the checkpoint's weights, the config dict) on map_location.

    The body model is config["model"]["smpl_model"] (the mannequin when null) with
    `smpl_backend` ("auto": the Triton kernels on CUDA), whatever backend training used;
    pass `smpl` to supply one instead.
    """
    payload = read_checkpoint(path, "cpu")  # moved below: a device error is then never taken for the file's
    config = payload["config"]
    try:
        if smpl is None:
            smpl = build_smpl({**config["model"], "smpl_backend": smpl_backend})
        model = build_model(config["model"], smpl=smpl, pretrained=False)
    except HmrFastError:  # the body model file it names is bad: that error names the file
        raise
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's config['model'] does not build a model "
                              f"({type(exc).__name__}: {_one_line(exc, 160)})") from None
    load_weights(model, payload["model"], path, skip_prefix=SMPL_PREFIX)
    return model.to(map_location).eval(), config


def load_weights(module, state: dict, source, skip_prefix: str = "") -> None:
    """Load `state` into `module` (its keys under skip_prefix excepted), every key and shape
    matching; float16 weights (packed checkpoints) are cast to the module's dtypes.
    CheckpointError (a ValueError), naming `source` and the first misfits, when they do not fit:
    weights saved from another architecture (backbone, pose representation, joint set)."""
    _check_state(state, source)
    own = {k: v for k, v in module.state_dict().items() if not (skip_prefix and k.startswith(skip_prefix))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    retyped = sorted(k for k in set(own) & set(state) if k not in reshaped
                     and own[k].is_floating_point() != (state[k].is_floating_point() and not state[k].is_complex()))
    if missing or unexpected or reshaped or retyped:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped[:3]]
        raise CheckpointError(
            f"{source}: weights do not fit the model (missing {missing[:5]}"
            f"{_more(missing)}, unexpected {unexpected[:5]}{_more(unexpected)}, other shapes {reshaped[:5]}"
            f"{_more(reshaped)}{' [' + '; '.join(shapes) + '] (file vs model)' if shapes else ''}"
            f"{f', other dtypes {retyped[:5]}' if retyped else ''}): they are from another architecture "
            "(backbone, pose_repr, ief_iters, joint_set) than the model they are loaded into")
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=False)


def _more(keys: list) -> str:
    return f" and {len(keys) - 5} more" if len(keys) > 5 else ""


def pack_checkpoint(src, dst) -> Path:
    """A checkpoint packed for shipping: what inference reads, float16 weights, deflated.

    Keeps format, config, model and step (drops the discriminator, optimizers, RNG states),
    stores floating-point weights as float16 (inference and model.init load them into a
    float32 model), and re-zips the torch archive with DEFLATE: torch.load reads compressed
    archives (not with mmap=True), and the demo checkpoint fits the package's 25 MB budget.
    """
    ckpt = read_checkpoint(src)
    model = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    dst = Path(dst)
    with atomic_path(dst) as packed, tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        plain = Path(tmp) / "plain.pt"
        torch.save({"format": FORMAT, "config": ckpt["config"], "model": model, "step": ckpt.get("step", 0)}, plain)
        with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info.filename))
    return dst


# `hmr-fast pack SRC DST`
def add_arguments(parser) -> None:
    parser.add_argument("src", help="a checkpoint written by hmr-fast train (e.g. RUN/last.pt)")
    parser.add_argument("dst", help="the packed checkpoint to write")


def run(args) -> int:
    if not Path(args.src).is_file():
        raise SystemExit(f"hmr-fast pack: {args.src} not found")
    out = pack_checkpoint(args.src, args.dst)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
