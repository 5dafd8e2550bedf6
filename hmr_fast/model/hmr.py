"""HMR (Kanazawa et al. 2018): ResNet encoder -> IEF regressor -> SMPL -> weak-perspective 2D."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from hmr_fast.body import SMPL
from hmr_fast.camera import project_weak_perspective
from hmr_fast.errors import UsageError

from .encoder import Encoder
from .regressor import REGRESSORS, IEFRegressor, SpinRegressor


@dataclass
class HMROutput:
    """The final iteration's prediction, plus every iteration's parameters for the losses."""

    rot_mats: torch.Tensor  # (B, 24, 3, 3) local joint rotations, root in the camera frame
    betas: torch.Tensor  # (B, 10)
    cam: torch.Tensor  # (B, 3) weak-perspective s, tx, ty
    joints3d: torch.Tensor  # (B, J, 3) the joint set, no translation
    keypoints2d: torch.Tensor  # (B, J, 2) normalised [-1, 1] crop coordinates
    vertices: Optional[torch.Tensor] = None  # (B, 6890, 3) only with return_verts=True
    thetas: list = field(default_factory=list)  # raw theta (B, P) after each IEF iteration
    iter_rot_mats: Optional[torch.Tensor] = None  # (T, B, 24, 3, 3) every iteration (discriminator)
    iter_betas: Optional[torch.Tensor] = None  # (T, B, 10)


class HMR(nn.Module):
    """images (B, 3, H, W), normalised with ImageNet's mean and std -> HMROutput.

    smpl: an hmr_fast.SMPL (or SmplxLayer); None builds SMPL() on the built-in mannequin.
    Its buffers are not part of the checkpoint (checkpoint.py): inference rebuilds the body
    model from the config. img_size is the crop size the model was trained on (recorded
    for inference; the network itself takes any size).
    """

    def __init__(self, backbone: str = "resnet50", pose_repr: str = "axis_angle", ief_iters: int = 3,
                 img_size: int = 224, joint_set: str = "hmr19", smpl=None, pretrained=None,
                 dropout: float = 0.5, regressor: str = "hmr", mean_params=None):
        super().__init__()
        if regressor not in REGRESSORS:
            raise ValueError(f"regressor must be one of {REGRESSORS}, got {regressor!r}")
        if backbone == "movenet" and (img_size <= 0 or img_size % 32):
            raise UsageError(f"model.img_size: backbone 'movenet' takes crops whose side is a multiple of 32, "
                             f"got {img_size}")
        if regressor == "spin" and pose_repr != "6d":
            raise ValueError(f"regressor 'spin' predicts 6D rotations: pose_repr must be '6d', got {pose_repr!r}")
        self.config = dict(backbone=backbone, pose_repr=pose_repr, ief_iters=ief_iters, img_size=img_size,
                           joint_set=joint_set, dropout=dropout, regressor=regressor)
        self.img_size = img_size
        self.joint_set = joint_set
        self.encoder = Encoder(backbone, pretrained)
        if regressor == "spin":
            self.regressor = SpinRegressor(self.encoder.feature_dim, ief_iters, dropout, mean_params=mean_params)
        else:
            self.regressor = IEFRegressor(self.encoder.feature_dim, pose_repr, ief_iters, dropout)
        self.smpl = SMPL(joint_set=joint_set) if smpl is None else smpl

    def forward(self, images: torch.Tensor, return_verts: bool = False) -> HMROutput:
        thetas = self.regressor(self.encoder(images))
        # The body model runs in float32 even under bf16 autocast: SMPL's sums over
        # thousands of vertices and its kinematic chain need the mantissa.
        with torch.autocast(images.device.type, enabled=False):
            params = [self.regressor.split(t.float()) for t in thetas]
            cam, rot_mats, betas = params[-1]
            vertices = None
            with torch.profiler.record_function("hmr.smpl"):  # a named range for profiles
                if return_verts:  # the whole mesh: one forward gives joints and vertices
                    vertices, joints3d = self.smpl.pose_body(betas, rot_mats, True, self.joint_set)
                    keypoints2d = project_weak_perspective(joints3d, cam)
                else:  # training: joints only (one fused op on CUDA)
                    joints3d, keypoints2d = self.smpl.joints_projected(betas, rot_mats, cam, self.joint_set)
        return HMROutput(
            rot_mats=rot_mats, betas=betas, cam=cam, joints3d=joints3d, keypoints2d=keypoints2d,
            vertices=vertices, thetas=thetas,
            iter_rot_mats=torch.stack([p[1] for p in params]), iter_betas=torch.stack([p[2] for p in params]))
