"""HMR's factorised pose and shape discriminator, trained with LSGAN losses.

Input: the 23 non-root joint rotations (B, 23, 3, 3) and the betas (B, 10). Output (B, 25):
23 per-joint scores, 1 all-joints score, 1 shape score (HMR's order). As in HMR's
Discriminator_separable_rotations: each rotation goes through a shared 1x1 convolution
9 -> 32 -> 32 (ReLU); a linear head per joint reads its 32 features; the all-joints head
reads all 23 x 32 through FC 1024 -> 1024 -> 1; the shape head is FC 10 -> 5 -> 1 (HMR's
slim stack is [10, 5]: a 10-wide layer, a 5-wide layer, then the score).
"""
from __future__ import annotations

import torch
from torch import nn

NUM_BODY_JOINTS = 23


class Discriminator(nn.Module):
    def __init__(self, num_joints: int = NUM_BODY_JOINTS, num_betas: int = 10, hidden: int = 1024):
        super().__init__()
        self.num_joints = num_joints
        # A 1x1 convolution over joints = one small MLP shared by every joint.
        self.joint_features = nn.Sequential(nn.Conv1d(9, 32, 1), nn.ReLU(), nn.Conv1d(32, 32, 1), nn.ReLU())
        # 23 per-joint linear heads, held as one grouped 1x1 convolution (one group per joint).
        self.joint_heads = nn.Conv1d(32 * num_joints, num_joints, 1, groups=num_joints)
        self.all_joints = nn.Sequential(nn.Linear(32 * num_joints, hidden), nn.ReLU(),
                                        nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.shape = nn.Sequential(nn.Linear(num_betas, 10), nn.ReLU(), nn.Linear(10, 5), nn.ReLU(),
                                   nn.Linear(5, 1))

    def forward(self, rot_mats: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        """rot_mats (B, 23, 3, 3), betas (B, NB) -> scores (B, 25); real -> 1, fake -> 0."""
        B = rot_mats.shape[0]
        if rot_mats.shape[1:] != (self.num_joints, 3, 3):
            raise ValueError(f"discriminator rot_mats must be (B, {self.num_joints}, 3, 3), got {tuple(rot_mats.shape)}")
        feats = self.joint_features(rot_mats.reshape(B, self.num_joints, 9).transpose(1, 2))  # (B, 32, 23)
        per_joint_input = feats.transpose(1, 2).reshape(B, -1)  # joint-major: joint j's 32 features together
        per_joint = self.joint_heads(per_joint_input.unsqueeze(-1)).squeeze(-1)  # (B, 23)
        all_joints = self.all_joints(per_joint_input)
        return torch.cat([per_joint, all_joints, self.shape(betas)], dim=1)


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor):
    """(real term, fake term): each the batch mean of sum over the 25 scores of (D - target)^2,
    real target 1, fake target 0 (HMR's d_loss_real and d_loss_fake)."""
    return ((real_scores - 1) ** 2).sum(1).mean(), (fake_scores ** 2).sum(1).mean()


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The encoder's adversarial loss: mean over the batch of sum of (D(fake) - 1)^2."""
    return ((fake_scores - 1) ** 2).sum(1).mean()
