"""smplx's SMPL layer behind hmr_fast.SMPL's interface: the baseline of the throughput
comparison (config `model.smpl_backend: smplx`). smplx must be installed; it always poses
all 6890 vertices (no joints-only path), which is the cost being compared.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from hmr_fast.body import load_model_file
from hmr_fast.body.joint_sets import JOINT_SET_SIZES, joint_set_rows
from hmr_fast.body.reference import regress_joints


class SmplxLayer(nn.Module):
    backend = "smplx"

    def __init__(self, model_path=None, joint_set: str = "hmr19"):
        super().__init__()
        try:
            import smplx
        except ImportError as e:
            raise RuntimeError("model.smpl_backend 'smplx' needs the smplx package (pip install smplx)") from e
        if model_path is None:
            from hmr_fast.body.mannequin import mannequin_path

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
                pose2rot=True, joint_set=None, **unused):
        joint_set = joint_set or self.default_joint_set
        out = self.layer(betas=betas, body_pose=body_pose, global_orient=global_orient, transl=transl,
                         pose2rot=pose2rot)
        chain = getattr(self, f"{joint_set}_chain")
        # smplx's joints start with the 24 chain joints; vertex rows read all posed vertices.
        joints = regress_joints(out.joints[:, :24], out.vertices, chain, getattr(self, f"{joint_set}_regressor"))
        return SimpleNamespace(joints=joints, vertices=out.vertices if return_verts else None)
