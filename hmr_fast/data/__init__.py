"""Datasets, augmentation, the pose prior, the pose sampler and the synthetic set.

- spin_npz.SpinDataset: SPIN-style npz + image root (keypoints -> HMR's 19; keypoints.py)
- coco.CocoDataset: COCO keypoints json + image folder
- prior.PosePrior: AMASS npz / plain SMPL npz, the discriminator's real samples
- augment: crop matrix, scale / rotation / flip / colour, the flip_* label mirrors
- loader: mixed datasets, the resumable batch sampler, DataLoaders
- pose_sampler.sample_poses: human poses (activities, joint limits, correlated joints)
- synth: `hmr-fast synth`, rendered mannequin training sets
"""
from hmr_fast.errors import DataError

from .coco import CocoDataset
from .dataset import AugmentSettings, PersonCropDataset
from .prior import PosePrior
from .spin_npz import SpinDataset

__all__ = ["SpinDataset", "CocoDataset", "PosePrior", "PersonCropDataset", "AugmentSettings", "DataError"]
