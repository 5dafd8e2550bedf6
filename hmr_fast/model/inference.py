"""`InferenceModel`: HMR as every inference backend and export runs it.

encoder -> IEF (all iterations, the last kept) -> one SMPL forward with vertices and the
joint set -> weak-perspective keypoints. Outputs, in this order (OUTPUT_NAMES):
    rot_mats (B, 24, 3, 3)  betas (B, 10)  cam (B, 3)  joints3d (B, J, 3)
    keypoints2d (B, J, 2) normalised crop coordinates  vertices (B, V, 3) (or None)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from hmr_fast.camera import project_weak_perspective

OUTPUT_NAMES = ("rot_mats", "betas", "cam", "joints3d", "keypoints2d", "vertices")


class InferenceModel(nn.Module):
    """`hmr`'s encoder, regressor and body model for inference.

    dtype: the encoder + regressor's compute type; the body model always runs in float32
    (its sums need the mantissa). smpl_backend: None lets the body model choose (the fused
    Triton kernels on CUDA); "reference" runs the plain-torch math, what the ONNX and
    AOTInductor exports trace.
    """

    def __init__(self, hmr, dtype: torch.dtype = torch.float32, smpl_backend: Optional[str] = None,
                 with_vertices: bool = True):
        super().__init__()
        if smpl_backend not in (None, "reference"):
            raise ValueError(f"smpl_backend must be None or 'reference', got {smpl_backend!r}")
        self.encoder = hmr.encoder.to(dtype)
        self.regressor = hmr.regressor.to(dtype)
        self.smpl = hmr.smpl
        self.joint_set = hmr.joint_set
        self.img_size = hmr.img_size
        self.dtype = dtype
        self.smpl_backend = smpl_backend
        self.with_vertices = with_vertices

    def forward(self, images: torch.Tensor):
        theta = self.regressor(self.encoder(images.to(self.dtype)))[-1]
        cam, rot_mats, betas = self.regressor.split(theta.float())
        vertices, joints = self.smpl.pose_body(betas, rot_mats, self.with_vertices, self.joint_set,
                                               backend=self.smpl_backend)
        return rot_mats, betas, cam, joints, project_weak_perspective(joints, cam), vertices
