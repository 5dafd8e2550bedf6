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
"""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import torch

from hmr_fast.atomic import atomic_path
from hmr_fast.body import SMPL
from hmr_fast.body.smplx_layer import SmplxLayer

from .hmr import HMR

FORMAT = "hmr_fast.checkpoint/1"
SMPL_PREFIX = "smpl."


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
    """The raw checkpoint dict; never unpickles code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an hmr_fast checkpoint (format {FORMAT!r} expected)")
    for key in ("config", "model"):
        if key not in payload:
            raise ValueError(f"{path}: checkpoint is missing key {key!r}")
    return payload


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
    return HMR(backbone=model_config["backbone"], pose_repr=model_config["pose_repr"],
               ief_iters=model_config["ief_iters"], img_size=model_config["img_size"],
               joint_set=model_config["joint_set"], dropout=model_config.get("dropout", 0.5),
               pretrained=model_config.get("pretrained") if pretrained else None,
               smpl=smpl if smpl is not None else build_smpl(model_config))


def load_checkpoint(path, map_location="cpu", smpl=None, smpl_backend: str = "auto"):
    """(HMR in eval mode with the checkpoint's weights, the config dict) on map_location.

    The body model is config["model"]["smpl_model"] (the mannequin when null) with
    `smpl_backend` ("auto": the Triton kernels on CUDA), whatever backend training used;
    pass `smpl` to supply one instead.
    """
    payload = read_checkpoint(path, map_location)
    config = payload["config"]
    if smpl is None:
        smpl = build_smpl({**config["model"], "smpl_backend": smpl_backend})
    model = build_model(config["model"], smpl=smpl, pretrained=False)
    load_weights(model, payload["model"], path, skip_prefix=SMPL_PREFIX)
    return model.to(map_location).eval(), config


def load_weights(module, state: dict, source, skip_prefix: str = "") -> None:
    """Load `state` into `module` (its keys under skip_prefix excepted), every key and shape
    matching; float16 weights (packed checkpoints) are cast to the module's dtypes.
    ValueError, naming `source` and the first misfits, when they do not fit."""
    own = {k: v for k, v in module.state_dict().items() if not (skip_prefix and k.startswith(skip_prefix))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        raise ValueError(f"{source}: weights do not fit the model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, other shapes {reshaped[:5]})")
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=False)


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
        torch.save({"format": FORMAT, "config": ckpt["config"], "model": model, "step": ckpt["step"]}, plain)
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
