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

Every label row is checked when the file is opened (vectorised, before any training step):
NaN/Inf (or beyond float32) anywhere, scale <= 0, visibility / confidence outside [0, 1],
has_smpl other than 0/1. A bad row is a DataError naming the file, the key and the first
rows, e.g. "train.npz: key 'part' has NaN/Inf in rows [3, 17, 40] (3 rows)"; with
drop_bad_labels (config data.drop_bad_labels) such samples are dropped, logged and counted
(`SpinDataset.dropped`).
"""
from __future__ import annotations

import os

import numpy as np

from hmr_fast.errors import DataError

from .dataset import NUMERIC_KINDS, AugmentSettings, CropRecord, LabelCheck, PersonCropDataset, outside_rows, \
    read_npz
from .keypoints import spin24_to_hmr19

REQUIRED = {"imgname": None, "center": (2,), "scale": (), "part": (24, 3)}
OPTIONAL = {"S": (24, 4), "pose": (72,), "shape": (10,), "has_smpl": (), "openpose": (25, 3)}


def load_npz(path, drop_bad_labels: bool = False) -> dict:
    """The arrays of a SPIN-style npz, validated (see `check_labels`); missing keys, bad
    shapes or dtypes and bad label values are a DataError naming the file and the key (and
    rows); with drop_bad_labels the bad rows are dropped instead (logged)."""
    return _load(path, drop_bad_labels)[0]


def _load(path, drop: bool):
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: dataset file not found")
    arrays = read_npz(path, list(REQUIRED) + list(OPTIONAL))  # gender and other keys are not read
    for key in REQUIRED:
        if key not in arrays:
            raise DataError(f"{path}: missing required key {key!r} "
                            f"(a SPIN-style npz needs {', '.join(REQUIRED)}); has {sorted(arrays)}")
    names = arrays["imgname"]
    if names.dtype.kind not in "US" or names.ndim != 1:
        raise DataError(f"{path}: key 'imgname' must be a 1-D array of strings, got dtype {names.dtype} "
                        f"shape {names.shape}")
    n = len(names)
    if n == 0:
        raise DataError(f"{path}: has no samples (imgname is empty)")
    for key, shape in {**REQUIRED, **OPTIONAL}.items():
        if key not in arrays or shape is None:
            continue
        a = arrays[key]
        if a.shape != (n,) + shape:
            raise DataError(f"{path}: key {key!r} must have shape {(n,) + shape} "
                            f"(N={n} from imgname), got {a.shape}")
        if a.dtype.kind not in NUMERIC_KINDS:
            raise DataError(f"{path}: key {key!r} must hold numbers, got dtype {a.dtype}")
    if ("pose" in arrays) != ("shape" in arrays):
        missing = "shape" if "pose" in arrays else "pose"
        raise DataError(f"{path}: has {'pose' if missing == 'shape' else 'shape'} but is missing "
                        f"key {missing!r}; SMPL labels need both")
    if names.dtype.kind == "S":
        try:
            arrays["imgname"] = np.char.decode(names, "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: key 'imgname' holds bytes that are not UTF-8 text ({exc})") from None
    if "has_smpl" not in arrays and "pose" in arrays:
        arrays["has_smpl"] = np.ones(n)
    check = check_labels(path, arrays, drop)
    keep = check.finish()
    if check.dropped:
        arrays = {k: v[keep] for k, v in arrays.items()}
    return arrays, check


def check_labels(name, arrays: dict, drop: bool = False) -> LabelCheck:
    """Vectorised checks of every label row: finite numbers (NaN/Inf, or beyond float32),
    centers finite, scale > 0, visibility / confidence in [0, 1], has_smpl 0 or 1."""
    check = LabelCheck(name, len(arrays["imgname"]), drop)
    nonfinite = {key: check.flag_nonfinite(key, arrays[key])
                 for key in ("center", "scale", "part", "openpose", "S", "pose", "shape", "has_smpl") if key in arrays}
    check.flag("scale", (arrays["scale"] <= 0) & ~nonfinite["scale"], "has a zero or negative scale")
    check.flag("part", outside_rows(arrays["part"][..., 2], 0.0, 1.0), "has visibility outside [0, 1]")
    if "openpose" in arrays:
        check.flag("openpose", outside_rows(arrays["openpose"][..., 2], 0.0, 1.0), "has confidence outside [0, 1]")
    if "S" in arrays:
        check.flag("S", outside_rows(arrays["S"][..., 3], 0.0, 1.0), "has confidence outside [0, 1]")
    if "has_smpl" in arrays:
        h = arrays["has_smpl"]
        check.flag("has_smpl", (h != 0) & (h != 1) & ~nonfinite["has_smpl"], "has values other than 0 and 1")
    return check


class SpinDataset(PersonCropDataset):
    """A SPIN-style npz as person crops with HMR's 19 keypoints (see the module docstring)."""

    def __init__(self, npz_path, image_root, img_size: int = 224, augment: AugmentSettings = None,
                 drop_bad_labels: bool = False):
        super().__init__(img_size, augment)
        self.name = str(npz_path)
        self.image_root = str(image_root)
        a, check = _load(npz_path, drop_bad_labels)
        self.dropped = check.dropped  # samples with bad labels left out (drop_bad_labels)
        self.imgname = a["imgname"]
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
