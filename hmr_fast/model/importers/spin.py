"""SPIN's released checkpoint (Kolotouros et al. 2019, github nkolot/SPIN) -> hmr_fast.

SPIN's `data/model_checkpoint.pt` (fetch_data.sh) is what its CheckpointSaver writes:
    {"model": state dict, "optimizer": ..., "epoch", "batch_idx", "batch_size", "dataset_perm",
     "total_step_count"}
and its "model" holds (models/hmr.py):
    conv1, bn1, layer1..layer4   the ResNet-50, with torchvision's key names (no fc)
    fc1 (2048 + 144 + 10 + 3 -> 1024; input [feature, pose, shape, cam]), fc2 (1024 -> 1024)
    decpose (1024 -> 144, 6D), decshape (1024 -> 10), deccam (1024 -> 3)
    init_pose (1, 144), init_shape (1, 10), init_cam (1, 3)   buffers from smpl_mean_params.npz
Its forward: 3 IEF iterations, no activation between fc1 and fc2, dropout after each; the
pose is SPIN's 6D (x.view(-1, 3, 2): two columns, interleaved row by row, rebuilt by
Gram-Schmidt), which is hmr_fast's rot6d_to_rotmat layout, so the weights are taken as they
are: the model is HMR(regressor="spin", pose_repr="6d", ief_iters=3) and only the key
prefixes change (encoder.net.*, regressor.*). The file may be torch's zip archive or the
legacy format (SPIN's release predates torch 1.6); either is read with the weights-only
unpickler, so nothing in it runs. The optimizer and counters are not imported.
"""
from __future__ import annotations

from pathlib import Path

import torch

from hmr_fast.errors import CheckpointError

from ..checkpoint import load_torch_file

NAME = "spin"
DESCRIPTION = "SPIN's model_checkpoint.pt (nkolot/SPIN, fetch_data.sh puts it in data/)"
EXPECTED = "SPIN's checkpoint (a dict whose 'model' entry is SPIN's HMR state dict)"

REGRESSOR_SHAPES = {
    "fc1.weight": (1024, 2048 + 144 + 10 + 3), "fc1.bias": (1024,),
    "fc2.weight": (1024, 1024), "fc2.bias": (1024,),
    "decpose.weight": (144, 1024), "decpose.bias": (144,),
    "decshape.weight": (10, 1024), "decshape.bias": (10,),
    "deccam.weight": (3, 1024), "deccam.bias": (3,),
    "init_pose": (1, 144), "init_shape": (1, 10), "init_cam": (1, 3),
}
BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def model_config(smpl_model=None, joint_set: str = "hmr19") -> dict:
    """The hmr_fast model config SPIN's network is: ResNet-50, SPIN's regressor, 6D, 3 iterations, 224."""
    return {"backbone": "resnet50", "pretrained": None, "pose_repr": "6d", "ief_iters": 3, "img_size": 224,
            "joint_set": joint_set, "dropout": 0.5, "regressor": "spin", "smpl_model": smpl_model,
            "smpl_backend": "auto"}


def spin_state_dict(payload, path) -> dict:
    """SPIN's model state dict out of the loaded file, checked: one line naming what is missing."""
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: holds {type(payload).__name__}, not a dict; expected {EXPECTED}")
    fmt = payload.get("format")
    if isinstance(fmt, str) and fmt.startswith("hmr_fast"):
        raise CheckpointError(f"{path}: is already an hmr_fast checkpoint ({fmt}): use it as it is; expected {EXPECTED}")
    state = payload.get("model") if "model" in payload else None
    if state is None and all(isinstance(k, str) for k in payload) and "fc1.weight" in payload:
        state = payload  # a bare state dict (someone saved checkpoint["model"] on its own)
    if state is None:
        keys = ", ".join(repr(k) for k in list(payload)[:6])
        raise CheckpointError(f"{path}: has no 'model' entry (its keys: {keys or 'none'}); expected {EXPECTED}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict of tensors; expected {EXPECTED}")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    missing = [k for k in REGRESSOR_SHAPES if k not in state]
    if missing:
        raise CheckpointError(f"{path}: SPIN's regressor weights {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                              f"are missing from its 'model' state dict; expected {EXPECTED}")
    for key, shape in REGRESSOR_SHAPES.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(state[key].shape)}, SPIN's is {shape}; "
                                  f"expected {EXPECTED} (ResNet-50 features, 24 joints in 6D, 10 betas)")
    if not any(k.startswith("layer4.") for k in state):
        raise CheckpointError(f"{path}: its 'model' state dict has no ResNet-50 weights (no layer4.*); "
                              f"expected {EXPECTED}")
    return state


def convert_state(state: dict) -> dict:
    """SPIN's key names -> hmr_fast's HMR (regressor='spin') key names."""
    out = {}
    for key, value in state.items():
        if key.startswith(BACKBONE_PREFIXES):
            out[f"encoder.net.{key}"] = value
        elif key in REGRESSOR_SHAPES:
            out[f"regressor.{key}"] = value
        elif key.startswith("fc."):  # an ImageNet classifier left in: not part of SPIN's network
            continue
        else:
            raise CheckpointError(f"unexpected key {key!r} in SPIN's state dict")
    return out


def convert(path, smpl_model=None, joint_set: str = "hmr19"):
    """(model config, HMR state dict) from SPIN's checkpoint file."""
    path = Path(path)
    payload = load_torch_file(path, EXPECTED)
    state = spin_state_dict(payload, path)
    try:
        converted = convert_state(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}; expected {EXPECTED}") from None
    return model_config(smpl_model, joint_set), {k: v.float() if v.is_floating_point() else v
                                                 for k, v in converted.items()}
