"""Batched fitting of SMPL to 2D keypoints and 3D joints (SMPLify-style), and its priors.

    from hmr_fast import SMPL
    from hmr_fast.fit import fit_keypoints2d, read_keypoints

    people = read_keypoints("person_keypoints_val2017.json")        # or OpenPose / SPIN / npz
    result = fit_keypoints2d(SMPL(), people.keypoints, people.format, boxes=people.boxes)
    result.betas, result.body_pose, result.global_orient, result.camera, result.keypoints2d

`hmr-fast fit` runs the same on files (hmr_fast.infer.fitting). For COCO-17 keypoints the fit
starts from a learned guess (`initialize`, hmr_fast.fit.initializer) unless told otherwise
(`FitSettings(start="mean")`) or given a pose.
"""
from .fitter import (FitResult, FitSettings, Fit3DResult, KeypointFitter, Perspective, fit_joints3d, fit_keypoints2d,
                     people_boxes)
from .initializer import KeypointInitializer, default_initializer, initialize
from .formats import FORMATS, KeypointFormat, KeypointSet, keypoint_format, read_keypoints
from .priors import GaussianMixturePrior, bending_prior, default_pose_prior, shape_prior

__all__ = ["fit_keypoints2d", "fit_joints3d", "KeypointFitter", "FitSettings", "FitResult", "Fit3DResult",
           "Perspective", "people_boxes", "read_keypoints", "keypoint_format", "KeypointFormat", "KeypointSet",
           "FORMATS", "GaussianMixturePrior", "default_pose_prior", "shape_prior", "bending_prior", "initialize",
           "KeypointInitializer", "default_initializer"]
