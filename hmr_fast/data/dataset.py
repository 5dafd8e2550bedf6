"""Person-crop datasets: what every image format shares (read, crop, augment, label).

A format (SPIN npz, COCO json) only says, per sample, which image, which box and which
labels (`CropRecord`); this class reads the image, cuts the 224 crop with the sample's
augmentation, moves the labels with it and returns fixed-shape arrays, so every dataset
batches with every other. The crop stays uint8 (3, S, S) with its colour gains beside it;
`augment.normalise_images` applies both on the training device.

An image that is missing or cannot be decoded does not stop training: the sample is
skipped (the next index is served instead, so batches keep their size) and counted in
the returned `skipped` field, which the training loop sums and logs.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from torch.utils.data import Dataset

from hmr_fast import camera
from hmr_fast.errors import DataError

from . import augment as aug_lib
from .keypoints import HMR19_FLIP, NUM_HMR

log = logging.getLogger(__name__)
MAX_SKIPS = 64  # consecutive unreadable images before we decide the data is broken


@dataclass
class CropRecord:
    """One sample's labels in source-image pixels (keypoints 19 x (x, y, vis))."""

    image_path: str
    center: np.ndarray  # (2,) pixels
    box_size: float  # pixels (SPIN's scale * 200)
    keypoints: np.ndarray  # (19, 3)
    joints3d: Optional[np.ndarray] = None  # (19, 4) camera-frame metres + confidence
    pose: Optional[np.ndarray] = None  # (72,) SMPL axis-angle, root in the camera frame
    betas: Optional[np.ndarray] = None  # (10,)


@dataclass(frozen=True)
class AugmentSettings:
    enabled: bool = True
    scale: float = 0.25
    rotation: float = 30.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    color: float = 0.4


def read_image(path: str) -> Optional[np.ndarray]:
    """RGB uint8 image, or None when the file is missing or does not decode."""
    if not os.path.isfile(path):
        return None
    try:
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except (OSError, cv2.error):
        return None
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class PersonCropDataset(Dataset):
    """Base class: subclasses set `self.name` and implement `__len__` and `record(i)`.

    Indexing takes an int (no augmentation) or (index, augmentation_key): the key seeds the
    sample's augmentation, so a given (index, key) is the same crop in any worker, in any
    run, which is what lets a resumed run see exactly the data it would have seen.
    """

    name = "dataset"

    def __init__(self, img_size: int = 224, augment: Optional[AugmentSettings] = None):
        self.img_size = int(img_size)
        self.augment = augment if augment is not None and augment.enabled else None
        self._warned = set()

    def record(self, index: int) -> CropRecord:
        raise NotImplementedError

    def __getitem__(self, item):
        index, key = (item, None) if isinstance(item, (int, np.integer)) else item
        index = int(index)
        for skipped in range(MAX_SKIPS):
            i = (index + skipped) % len(self)
            record = self.record(i)
            image = read_image(record.image_path)
            if image is not None:
                return self.make_sample(record, image, key, i, skipped)
            if record.image_path not in self._warned:
                self._warned.add(record.image_path)
                log.warning("%s: skipping unreadable image %s", self.name, record.image_path)
        raise RuntimeError(f"{self.name}: {MAX_SKIPS} unreadable images in a row from index {index} "
                           f"(e.g. {record.image_path}); is the image root right?")

    def augmentation(self, key) -> aug_lib.Augmentation:
        if self.augment is None or key is None:
            return aug_lib.IDENTITY
        a = self.augment
        return aug_lib.sample_augmentation(np.random.default_rng(key), a.scale, a.rotation,
                                           a.rotation_prob, a.flip_prob, a.color)

    def make_sample(self, record: CropRecord, image: np.ndarray, key, index: int, skipped: int) -> dict:
        aug = self.augmentation(key)
        S = self.img_size
        matrix = camera.crop_matrix(record.center, record.box_size * aug.scale, S, aug.rotation, aug.flip)
        crop = camera.crop_image(image, matrix, S)
        keypoints = camera.transform_keypoints(record.keypoints, matrix, S)
        if aug.flip:  # the matrix mirrored the positions; the labels trade sides
            keypoints = keypoints[list(HMR19_FLIP)]
        has_3d = record.joints3d is not None
        has_smpl = record.pose is not None and record.betas is not None
        joints3d, pose = aug_lib.augment_labels(aug, record.joints3d if has_3d else None,
                                                record.pose if has_smpl else None, HMR19_FLIP)
        return {
            "image": np.ascontiguousarray(crop.transpose(2, 0, 1)),  # uint8 RGB; see normalise_images
            "color": np.asarray(aug.color, dtype=np.float32),
            "keypoints": keypoints.astype(np.float32),
            "joints3d": (joints3d if has_3d else np.zeros((NUM_HMR, 4))).astype(np.float32),
            "pose": (pose if has_smpl else np.zeros(72)).astype(np.float32),
            "betas": (record.betas[:10] if has_smpl else np.zeros(10)).astype(np.float32),
            "has_3d": np.float32(has_3d),
            "has_smpl": np.float32(has_smpl),
            "rotation": np.float32(aug.rotation),  # the crop's augmentation, for labels made in training (SPIN's fits)
            "flip": np.bool_(aug.flip),
            "skipped": np.int64(skipped),
            "index": np.int64(index),
        }


# ---------------------------------------------------------------------------------------
# Reading and checking label files (shared by spin_npz, coco and prior)
# ---------------------------------------------------------------------------------------
FLOAT32_MAX = float(np.finfo(np.float32).max)
NUMERIC_KINDS = "biuf"  # bool, int, unsigned, float: what a label array may hold
ROWS_SHOWN = 5  # a message lists this many bad rows, then the count


def read_npz(path, keys) -> dict:
    """The arrays of `keys` that an npz holds (others are not read), with allow_pickle=False:
    a file that is not an npz, is corrupt, or stores an object (pickled) array is a DataError
    naming the file (and the key); nothing in the file is ever run."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    key = None
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: holds a single array ({type(npz).__name__}), not an npz of named arrays")
        with npz:
            arrays = {}
            for key in keys:
                if key in npz.files:
                    value = npz[key]
                    if not isinstance(value, np.ndarray):  # a zip member that is not .npy data
                        raise DataError(f"{path}: key {key!r} is not a numpy array")
                    arrays[key] = value
        return arrays
    except DataError:
        raise
    except Exception as exc:  # untrusted bytes: zip, zlib, npy-header and EOF errors all mean "unreadable"
        where = f"key {key!r}" if key is not None else "the file"
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: {where} is an object array, which cannot be read without unpickling; "
                            "save it as plain strings or numbers (np.array(list_of_str))") from None
        raise DataError(f"{path}: {where} cannot be read as an npz ({type(exc).__name__}: {exc})") from None


def describe_rows(rows, unit: str = "rows") -> str:
    """'rows [3, 17, 40]'; long lists are cut after ROWS_SHOWN."""
    shown = ", ".join(str(int(r)) for r in rows[:ROWS_SHOWN]) + (", ..." if len(rows) > ROWS_SHOWN else "")
    return f"{unit} [{shown}]"


def _per_row(bad: np.ndarray) -> np.ndarray:
    """(N, ...) bool -> (N,): any per row."""
    return bad.any(axis=tuple(range(1, bad.ndim))) if bad.ndim > 1 else bad


def nonfinite_rows(a: np.ndarray) -> np.ndarray:
    """(N,) True where a row holds NaN/Inf, or a float beyond float32's range (training's dtype)."""
    if a.dtype.kind != "f":
        return np.zeros(len(a), bool)
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.isfinite(a)
        if a.dtype.itemsize > 4:
            bad |= np.abs(a) > FLOAT32_MAX
    return _per_row(bad)


def outside_rows(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(N,) True where a row has a (finite) value outside [lo, hi]; values is (N, ...)."""
    with np.errstate(invalid="ignore"):
        bad = (values < lo) | (values > hi)
    return _per_row(bad)


class LabelCheck:
    """The bad rows of one label file: refused, or (drop=True, data.drop_bad_labels) dropped.

    `flag(key, bad, what)` with a boolean (N,) mask: without drop, the first flagged key is a
    DataError naming the file, the key and the first bad rows; with drop those rows leave
    `keep`, a logging.warning names the file, key and count, and `dropped` counts the samples.
    """

    def __init__(self, name: str, num_rows: int, drop: bool = False, unit: str = "rows"):
        self.name, self.drop, self.unit = str(name), bool(drop), unit
        self.keep = np.ones(num_rows, bool)
        self.reasons = {}  # "key: what" -> rows flagged

    def flag(self, key: str, bad, what: str) -> None:
        bad = np.asarray(bad, bool)
        if not bad.any():
            return
        rows = np.flatnonzero(bad)
        unit = self.unit if len(rows) != 1 else self.unit.rstrip("s")
        where = f"{describe_rows(rows, self.unit)} ({len(rows)} {unit})"
        if not self.drop:
            raise DataError(f"{self.name}: key {key!r} {what} in {where}; fix the file, or drop such samples "
                            "with data.drop_bad_labels=true")
        self.keep &= ~bad
        self.reasons[f"{key}: {what}"] = len(rows)
        log.warning("%s: key %r %s in %d %s (e.g. %s): dropped (data.drop_bad_labels)",
                    self.name, key, what, len(rows), unit, describe_rows(rows, self.unit))

    def flag_nonfinite(self, key: str, a: np.ndarray) -> np.ndarray:
        """Flag rows of `a` with NaN/Inf (or floats beyond float32's range); returns the mask."""
        bad = nonfinite_rows(a)
        if bad.any():
            nan_inf = _per_row(~np.isfinite(a[bad]))
            self.flag(key, bad, "has NaN/Inf" if nan_inf.any() else "has values beyond float32's range")
        return bad

    @property
    def dropped(self) -> int:
        return int((~self.keep).sum())

    def finish(self) -> np.ndarray:
        """The rows kept; a DataError when every row was dropped."""
        if len(self.keep) and not self.keep.any():
            raise DataError(f"{self.name}: all {len(self.keep)} {self.unit} have bad labels "
                            f"({'; '.join(self.reasons)}); nothing is left to use")
        return self.keep
