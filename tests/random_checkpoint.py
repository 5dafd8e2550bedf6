"""Small checkpoints for the tests and benchmarks (random weights; nothing is trained or downloaded)."""
from __future__ import annotations

import torch

from hmr_fast.model import build_model, save_checkpoint


def make_checkpoint(path, backbone: str = "resnet18", img_size: int = 64, seed: int = 0,
                    pose_scale: float = 1.0) -> str:
    """Write an hmr_fast checkpoint with random weights.

    A freshly initialised IEF regressor barely moves from the mean body; `pose_scale`
    widens its last layer so the predicted poses, shapes and cameras vary from image to
    image as a trained model's do (tests of the exported graphs then cover real rotations,
    not only the rest pose).
    """
    torch.manual_seed(seed)
    model_cfg = dict(backbone=backbone, pose_repr="axis_angle", ief_iters=3, img_size=img_size, joint_set="hmr19",
                     dropout=0.5, smpl_model=None, smpl_backend="auto", pretrained=None)
    model = build_model(model_cfg, pretrained=False)
    with torch.no_grad():
        decoder = model.regressor.decoder
        decoder.weight.normal_(0.0, 0.02 * pose_scale)
        decoder.weight[:3] *= 0.1  # keep the camera near s = 0.9, so the body stays in the crop
    save_checkpoint(path, model, {"model": model_cfg})
    return str(path)
