"""HMR (Kanazawa et al. 2018): ResNet encoder -> IEF regressor -> SMPL -> weak-perspective 2D."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from hmr_fast.body.reference import project_weak_perspective

from .encoder import Encoder
from .regressor import IEFRegressor


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
    iter_cams: Optional[torch.Tensor] = None  # (T, B, 3)


def fused_smpl_kernel(smpl, device):
    """hmr_fast.kernels.smpl_joints_projected when it applies (hmr_fast's SMPL with backend
    auto/triton, a CUDA device, the kernels importable and Triton usable there), else None."""
    if device.type != "cuda" or getattr(smpl, "backend", None) not in ("auto", "triton"):
        return None
    try:
        from hmr_fast.kernels import smpl_joints_projected as fused, triton_usable
    except ImportError:
        return None
    return fused if triton_usable(device)[0] else None


def smpl_joints_projected(smpl, betas, rot_mats, cam, joint_set: str):
    """(joints3d (B, J, 3), keypoints2d (B, J, 2)) of posed bodies, joints only.

    The one place the SMPL implementation is chosen: the fused Triton kernel (joints,
    projection and their backward in one op) where `fused_smpl_kernel` finds it; anything
    else (CPU, the reference backend, smplx's layer) runs the module and the reference
    weak-perspective projection.
    """
    fused = fused_smpl_kernel(smpl, rot_mats.device)
    if fused is not None:
        joints, keypoints, _ = fused(smpl, betas, rot_mats.reshape(rot_mats.shape[0], -1), None, cam, False, joint_set)
        return joints, keypoints
    out = smpl(betas=betas, global_orient=rot_mats[:, :1], body_pose=rot_mats[:, 1:], pose2rot=False,
               return_verts=False, joint_set=joint_set)
    return out.joints, project_weak_perspective(out.joints, cam)


class HMR(nn.Module):
    """images (B, 3, H, W), normalised with ImageNet's mean and std -> HMROutput.

    smpl: an hmr_fast.SMPL (or SmplxLayer); None builds SMPL() on the built-in mannequin.
    Its buffers are not part of the checkpoint (checkpoint.py): inference rebuilds the body
    model from the config. img_size is the crop size the model was trained on (recorded
    for inference; the network itself takes any size).
    """

    def __init__(self, backbone: str = "resnet50", pose_repr: str = "axis_angle", ief_iters: int = 3,
                 img_size: int = 224, joint_set: str = "hmr19", smpl=None, pretrained=None,
                 dropout: float = 0.5):
        super().__init__()
        self.config = dict(backbone=backbone, pose_repr=pose_repr, ief_iters=ief_iters, img_size=img_size,
                           joint_set=joint_set, dropout=dropout)
        self.img_size = img_size
        self.joint_set = joint_set
        self.encoder = Encoder(backbone, pretrained)
        self.regressor = IEFRegressor(self.encoder.feature_dim, pose_repr, ief_iters, dropout)
        if smpl is None:
            from hmr_fast.body import SMPL

            smpl = SMPL(joint_set=joint_set)
        self.smpl = smpl

    def forward(self, images: torch.Tensor, return_verts: bool = False) -> HMROutput:
        thetas = self.regressor(self.encoder(images))
        # The body model runs in float32 even under bf16 autocast: SMPL's sums over
        # thousands of vertices and its kinematic chain need the mantissa.
        with torch.autocast(images.device.type, enabled=False):
            params = [self.regressor.split(t.float()) for t in thetas]
            cam, rot_mats, betas = params[-1]
            vertices = None
            with torch.profiler.record_function("hmr.smpl"):  # a named range for profiles
                if return_verts:  # the whole mesh: one full forward gives joints and vertices
                    body = self.smpl(betas=betas, global_orient=rot_mats[:, :1], body_pose=rot_mats[:, 1:],
                                     pose2rot=False, return_verts=True, joint_set=self.joint_set)
                    vertices, joints3d = body.vertices, body.joints
                    keypoints2d = project_weak_perspective(joints3d, cam)
                else:  # training: joints only
                    joints3d, keypoints2d = smpl_joints_projected(self.smpl, betas, rot_mats, cam, self.joint_set)
        return HMROutput(
            rot_mats=rot_mats, betas=betas, cam=cam, joints3d=joints3d, keypoints2d=keypoints2d,
            vertices=vertices, thetas=thetas,
            iter_rot_mats=torch.stack([p[1] for p in params]), iter_betas=torch.stack([p[2] for p in params]),
            iter_cams=torch.stack([p[0] for p in params]))
