"""HMR's iterative error feedback (IEF) regressor.

Parameters theta = [camera (s, tx, ty), pose, betas]: 3 + 72 + 10 = 85 numbers with an
axis-angle pose (HMR), or 3 + 144 + 10 = 157 with SPIN's 6D rotations. Starting from a
learned mean theta_0, each iteration reads [image feature, theta_t] and adds a correction:
theta_{t+1} = theta_t + D(FC(FC([phi, theta_t]))). All iterations share weights.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from hmr_fast.body.model_data import NUM_JOINTS
from hmr_fast.rotations import rodrigues, rot6d_to_rotmat

POSE_REPRS = {"axis_angle": 3, "6d": 6}
# s = 0.9 (the body fills most of the crop), no translation, as HMR's mean.
MEAN_CAMERA = (0.9, 0.0, 0.0)


def upright_root(pose_repr: str) -> list:
    """The root rotation that shows SMPL (y up) upright in the image (y down): pi about x."""
    if pose_repr == "axis_angle":
        return [math.pi, 0.0, 0.0]
    # diag(1, -1, -1) as its first two columns, interleaved row by row (rot6d_to_rotmat's layout)
    return [1.0, 0.0, 0.0, -1.0, 0.0, 0.0]


def initial_theta(pose_repr: str, num_betas: int = 10) -> torch.Tensor:
    """HMR's starting point: s = 0.9, t = 0, the body upright in its rest pose, mean shape."""
    rest = [0.0, 0.0, 0.0] if pose_repr == "axis_angle" else [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    pose = upright_root(pose_repr) + rest * (NUM_JOINTS - 1)
    return torch.tensor(list(MEAN_CAMERA) + pose + [0.0] * num_betas)


class IEFRegressor(nn.Module):
    def __init__(self, feature_dim: int, pose_repr: str = "axis_angle", iterations: int = 3,
                 dropout: float = 0.5, num_betas: int = 10, hidden: int = 1024):
        super().__init__()
        if pose_repr not in POSE_REPRS:
            raise ValueError(f"pose_repr must be one of {sorted(POSE_REPRS)}, got {pose_repr!r}")
        if iterations < 1:
            raise ValueError(f"ief_iters must be >= 1, got {iterations}")
        self.pose_repr = pose_repr
        self.iterations = iterations
        self.num_betas = num_betas
        self.pose_dim = POSE_REPRS[pose_repr] * NUM_JOINTS
        self.param_dim = 3 + self.pose_dim + num_betas
        # FC 1024 -> dropout -> FC 1024 -> dropout -> FC params; HMR's fc layers are slim's
        # fully_connected, whose default activation is ReLU.
        self.fc1 = nn.Linear(feature_dim + self.param_dim, hidden)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, self.param_dim)
        # Small first corrections, so training starts at the mean body.
        nn.init.xavier_uniform_(self.decoder.weight, gain=0.01)
        nn.init.zeros_(self.decoder.bias)
        # theta_0 is a parameter: HMR learns its mean (initialised upright, s = 0.9).
        self.mean_theta = nn.Parameter(initial_theta(pose_repr, num_betas))

    def ief_step(self, features: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """One iteration: theta + the correction predicted from [features, theta]."""
        x = torch.cat([features.to(theta.dtype), theta], dim=1)
        x = self.drop1(torch.relu(self.fc1(x)))
        x = self.drop2(torch.relu(self.fc2(x)))
        # theta accumulates in float32 even under bf16 autocast: bf16 would round the root's
        # pi to 3.14 and swallow the small corrections of later iterations.
        return theta + self.decoder(x).to(theta.dtype)

    def forward(self, features: torch.Tensor) -> list:
        """theta after each iteration: a list of `iterations` tensors (B, param_dim)."""
        theta = self.mean_theta.expand(features.shape[0], -1)
        thetas = []
        for _ in range(self.iterations):
            theta = self.ief_step(features, theta)
            thetas.append(theta)
        return thetas

    def split(self, theta: torch.Tensor):
        """theta (B, P) -> (cam (B, 3), rotation matrices (B, 24, 3, 3), betas (B, NB))."""
        cam = theta[:, :3]
        pose = theta[:, 3:3 + self.pose_dim].reshape(-1, NUM_JOINTS, POSE_REPRS[self.pose_repr])
        betas = theta[:, 3 + self.pose_dim:]
        rot_mats = rodrigues(pose) if self.pose_repr == "axis_angle" else rot6d_to_rotmat(pose)
        return cam, rot_mats, betas


REGRESSORS = ("hmr", "spin")


def spin_initial_params(num_betas: int = 10):
    """SPIN's starting point when no smpl_mean_params.npz is given: the body upright in its
    rest pose (6D), mean shape, camera s = 0.9, t = 0: (pose (144,), shape (NB,), cam (3,))."""
    theta = initial_theta("6d", num_betas)
    return theta[3:3 + 6 * NUM_JOINTS], theta[3 + 6 * NUM_JOINTS:], theta[:3]


class SpinRegressor(nn.Module):
    """SPIN's IEF regressor (Kolotouros et al. 2019, its models/hmr.py), wired as SPIN wires it:

        x = fc1([phi, pose, shape, cam]) -> dropout -> fc2 -> dropout   (no activation)
        pose += decpose(x) (144, 6D); shape += decshape(x) (10); cam += deccam(x) (3)

    starting from the buffers init_pose / init_shape / init_cam (SPIN's smpl_mean_params.npz;
    not learned). Module and buffer names are SPIN's, so its weights load by name. Same
    interface as IEFRegressor: forward -> theta [cam, pose, betas] after each iteration,
    `split` -> (cam, rot_mats, betas). SPIN's 6D layout (two columns interleaved row by row,
    x.view(3, 2)) is rot6d_to_rotmat's.
    """

    pose_repr = "6d"

    def __init__(self, feature_dim: int, iterations: int = 3, dropout: float = 0.5, num_betas: int = 10,
                 hidden: int = 1024, mean_params=None):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"ief_iters must be >= 1, got {iterations}")
        self.iterations = iterations
        self.num_betas = num_betas
        self.pose_dim = 6 * NUM_JOINTS
        self.param_dim = 3 + self.pose_dim + num_betas
        self.fc1 = nn.Linear(feature_dim + self.pose_dim + num_betas + 3, hidden)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = nn.Dropout(dropout)
        self.decpose = nn.Linear(hidden, self.pose_dim)
        self.decshape = nn.Linear(hidden, num_betas)
        self.deccam = nn.Linear(hidden, 3)
        for layer in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
        pose, shape, cam = spin_initial_params(num_betas) if mean_params is None else mean_params
        self.register_buffer("init_pose", torch.as_tensor(pose, dtype=torch.float32).reshape(1, self.pose_dim))
        self.register_buffer("init_shape", torch.as_tensor(shape, dtype=torch.float32).reshape(1, num_betas))
        self.register_buffer("init_cam", torch.as_tensor(cam, dtype=torch.float32).reshape(1, 3))

    def forward(self, features: torch.Tensor) -> list:
        B = features.shape[0]
        # the parameters accumulate in float32 (as IEFRegressor's theta does) whatever the features' dtype
        pose, shape, cam = (p.float().expand(B, -1) for p in (self.init_pose, self.init_shape, self.init_cam))
        thetas = []
        for _ in range(self.iterations):
            x = torch.cat([features.to(self.fc1.weight.dtype), pose.to(self.fc1.weight.dtype),
                           shape.to(self.fc1.weight.dtype), cam.to(self.fc1.weight.dtype)], dim=1)
            x = self.drop2(self.fc2(self.drop1(self.fc1(x))))
            pose = pose + self.decpose(x).float()
            shape = shape + self.decshape(x).float()
            cam = cam + self.deccam(x).float()
            thetas.append(torch.cat([cam, pose, shape], dim=1))
        return thetas

    def split(self, theta: torch.Tensor):
        """theta (B, P) -> (cam (B, 3), rotation matrices (B, 24, 3, 3), betas (B, NB))."""
        cam = theta[:, :3]
        pose = theta[:, 3:3 + self.pose_dim].reshape(-1, NUM_JOINTS, 6)
        return cam, rot6d_to_rotmat(pose), theta[:, 3 + self.pose_dim:]
