"""SPIN-style dataset npz + image root (the layout SPIN's preprocessed datasets use).

Keys (N samples): imgname (N,) paths relative to the image root; center (N, 2) pixels;
scale (N,) = box side / 200; part (N, 24, 3) keypoints in SPIN's 24-joint order (see
keypoints.py) as x, y pixels + visibility. Optional: S (N, 24, 4) 3D joints in the camera
frame (metres + confidence), pose (N, 72) SMPL axis-angle, shape (N, 10) betas, has_smpl
(N,) 0/1 (when absent, pose + shape present means every sample has SMPL). openpose and
gender are ignored. HMR's 19 keypoints are SPIN24[0..13] + SPIN24[19..23]; SPIN's pelvis,
thorax, spine, jaw and H36M head have no HMR keypoint and are dropped.

The file is read with allow_pickle=False (a dataset file never runs code); an npz whose
imgname is a pickled object array must be re-saved with plain strings.
"""
from __future__ import annotations

import os

import numpy as np

from hmr_fast.errors import DataError

from .dataset import AugmentSettings, CropRecord, PersonCropDataset
from .keypoints import spin24_to_hmr19

REQUIRED = {"imgname": None, "center": (2,), "scale": (), "part": (24, 3)}
OPTIONAL = {"S": (24, 4), "pose": (72,), "shape": (10,), "has_smpl": ()}


def load_npz(path) -> dict:
    """The arrays of a SPIN-style npz, validated: missing keys or bad shapes name the key."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: dataset file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise DataError(f"{path}: cannot read without unpickling ({e}); save imgname as "
                                 "plain strings (np.array(list_of_str)), not an object array") from e
    for key in REQUIRED:
        if key not in arrays:
            raise DataError(f"{path}: missing required key {key!r} "
                                     f"(a SPIN-style npz needs {', '.join(REQUIRED)}); has {sorted(arrays)}")
    n = len(arrays["imgname"])
    for key, shape in {**REQUIRED, **OPTIONAL}.items():
        if key not in arrays or shape is None:
            continue
        a = arrays[key]
        if a.shape != (n,) + shape:
            raise DataError(f"{path}: key {key!r} must have shape {(n,) + shape} "
                                     f"(N={n} from imgname), got {a.shape}")
    if arrays["imgname"].dtype.kind not in "US":
        raise DataError(f"{path}: key 'imgname' must hold strings, got dtype {arrays['imgname'].dtype}")
    if ("pose" in arrays) != ("shape" in arrays):
        missing = "shape" if "pose" in arrays else "pose"
        raise DataError(f"{path}: has {'pose' if missing == 'shape' else 'shape'} but is missing "
                                 f"key {missing!r}; SMPL labels need both")
    if "has_smpl" not in arrays and "pose" in arrays:
        arrays["has_smpl"] = np.ones(n)
    return arrays


class SpinDataset(PersonCropDataset):
    """A SPIN-style npz as person crops with HMR's 19 keypoints (see the module docstring)."""

    def __init__(self, npz_path, image_root, img_size: int = 224, augment: AugmentSettings = None):
        super().__init__(img_size, augment)
        self.name = str(npz_path)
        self.image_root = str(image_root)
        a = load_npz(npz_path)
        self.imgname = np.char.decode(a["imgname"]) if a["imgname"].dtype.kind == "S" else a["imgname"]
        self.center = a["center"].astype(np.float64)
        self.box_size = a["scale"].astype(np.float64) * 200.0
        self.keypoints = spin24_to_hmr19(a["part"].astype(np.float64))
        self.joints3d = spin24_to_hmr19(a["S"].astype(np.float64)) if "S" in a else None
        self.pose = a["pose"].astype(np.float64) if "pose" in a else None
        self.betas = a["shape"].astype(np.float64) if "shape" in a else None
        self.has_smpl = a["has_smpl"].astype(bool) if "has_smpl" in a else np.zeros(len(self.imgname), bool)

    def __len__(self) -> int:
        return len(self.imgname)

    def record(self, i: int) -> CropRecord:
        has_smpl = self.pose is not None and self.has_smpl[i]
        joints3d = self.joints3d[i] if self.joints3d is not None else None
        return CropRecord(
            image_path=os.path.join(self.image_root, str(self.imgname[i])),
            center=self.center[i], box_size=float(self.box_size[i]), keypoints=self.keypoints[i],
            joints3d=joints3d if joints3d is not None and joints3d[:, 3].any() else None,
            pose=self.pose[i] if has_smpl else None, betas=self.betas[i] if has_smpl else None)
