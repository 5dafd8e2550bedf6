"""smplx's SMPL layer behind hmr_fast.SMPL's interface: the baseline of the throughput
comparison (config `model.smpl_backend: smplx`). smplx must be installed; it always poses
all 6890 vertices (no joints-only path), which is the cost being compared.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from hmr_fast.camera import project_weak_perspective
from hmr_fast.kernels.reference import regress_joints
from hmr_fast.rotations import rodrigues

from .joint_sets import JOINT_SET_SIZES, joint_set_rows
from .mannequin import mannequin_path
from .model_data import NUM_JOINTS
from .model_file import load_model_file
from .smpl import SMPLOutput


class SmplxLayer(nn.Module):
    """smplx.SMPL with hmr_fast's joint sets; `forward`, `pose_body` and `joints_projected`
    as hmr_fast.SMPL's (same arguments, same outputs)."""

    backend = "smplx"

    def __init__(self, model_path=None, joint_set: str = "hmr19"):
        super().__init__()
        try:
            import smplx
        except ImportError as e:
            raise RuntimeError("model.smpl_backend 'smplx' needs the smplx package (pip install smplx)") from e
        if model_path is None:
            model_path = mannequin_path()
        data = load_model_file(model_path)
        self.layer = smplx.SMPL(model_path=str(model_path), num_betas=data.num_betas)
        # smplx registers default pose / shape parameters; here every input is given, so
        # they are constants (and DDP must not wait for their gradients).
        self.layer.requires_grad_(False)
        self.faces = data.faces.astype(np.int64)
        self.num_betas = data.num_betas
        self.default_joint_set = joint_set
        for name in JOINT_SET_SIZES:
            try:
                chain, regressor = joint_set_rows(name, data.num_vertices, data.extra_regressors)
            except ValueError:
                continue
            self.register_buffer(f"{name}_chain", torch.as_tensor(chain), persistent=False)
            self.register_buffer(f"{name}_regressor", torch.as_tensor(regressor, dtype=torch.float32),
                                 persistent=False)

    def forward(self, betas=None, body_pose=None, global_orient=None, transl=None, return_verts=True,
                pose2rot=True, joint_set=None, **unused) -> SMPLOutput:
        joint_set = joint_set or self.default_joint_set
        out = self.layer(betas=betas, body_pose=body_pose, global_orient=global_orient, transl=transl,
                         pose2rot=pose2rot, return_full_pose=True)
        chain = getattr(self, f"{joint_set}_chain")
        # smplx's joints start with the 24 chain joints; vertex rows read all posed vertices.
        joints = regress_joints(out.joints[:, :NUM_JOINTS], out.vertices, chain,
                                getattr(self, f"{joint_set}_regressor"))
        B = joints.shape[0]
        full_pose = out.full_pose.reshape(B, -1)
        rot_mats = rodrigues(full_pose.view(B, -1, 3)) if pose2rot else full_pose.view(B, -1, 3, 3)
        return SMPLOutput(vertices=out.vertices if return_verts else None, joints=joints, full_pose=out.full_pose,
                          betas=out.betas, global_orient=out.global_orient, body_pose=out.body_pose,
                          transl=transl, rot_mats=rot_mats)

    def pose_body(self, betas, rot_mats, return_verts: bool = True, joint_set: Optional[str] = None,
                  backend: Optional[str] = None):
        out = self(betas=betas, global_orient=rot_mats[:, :1], body_pose=rot_mats[:, 1:], pose2rot=False,
                   return_verts=return_verts, joint_set=joint_set)
        return out.vertices, out.joints

    def joints_projected(self, betas, rot_mats, cam, joint_set: Optional[str] = None):
        _, joints = self.pose_body(betas, rot_mats, False, joint_set)
        return joints, project_weak_perspective(joints, cam)
