"""Keypoint formats users bring, which SMPL points they are, and the files that hold them.

A format is an ordered list of keypoint names and, for each, the row of an SMPL joint set
that models it (or -1 where SMPL has no such point):
- "coco17": COCO's 17 (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles),
  read from the "hmr19" joint set. COCO's hips are not SMPL's hip joints (they sit lower and
  wider); with HMR's cocoplus regressor in the model file (`neutral_smpl_with_cocoplus_reg.pkl`)
  hmr19 regresses them as COCO annotates them, as SPIN's J_regressor_extra does. Without it
  (the built-in mannequin, the plain SMPL files) hmr19 uses SMPL's hip joints.
- "body25": OpenPose BODY_25, from "smplx45": its nose, eyes, ears and feet are smplx's
  vertex keypoints; the neck is SMPL's neck joint, MidHip the pelvis joint.
- "hmr19": HMR's 19 (LSP's 14, then nose, eyes, ears); SPIN's `part` arrays map to it.
- "smpl24": SMPL's 24 kinematic-chain joints.

Readers (`read_keypoints`) take an OpenPose JSON file or a folder of them (one file per frame,
several people per file), a COCO person-keypoints json, a SPIN-style npz (`part`) or a plain
npz (`keypoints` (N, K, 3), K = 17, 25, 19 or 24, optional `format`, `ids`, `boxes`). Every
reader returns pixels and confidences (N, K, 3) and an id per person; a file that is not what
it should be raises hmr_fast.errors.DataError naming it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from hmr_fast.body.joint_sets import HMR19_NAMES, SMPLX_EXTRA_VERTICES
from hmr_fast.body.model_data import SMPL_JOINT_NAMES
from hmr_fast.data.dataset import describe_rows, nonfinite_rows, read_npz
from hmr_fast.data.keypoints import COCO17_NAMES, spin24_to_hmr19
from hmr_fast.errors import DataError

BODY25_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
    "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe", "left_heel", "right_big_toe",
    "right_small_toe", "right_heel",
)
SMPLX45_NAMES = SMPL_JOINT_NAMES + tuple(name for name, _ in SMPLX_EXTRA_VERTICES)
_JOINT_SET_NAMES = {"hmr19": HMR19_NAMES, "smplx45": SMPLX45_NAMES, "smpl24": SMPL_JOINT_NAMES}
# Names a format uses for a point that a joint set calls otherwise.
_ALIASES = {"mid_hip": "pelvis"}
TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")


@dataclass(frozen=True)
class KeypointFormat:
    name: str
    names: tuple  # the format's keypoints, in its order
    joint_set: str  # the SMPL joint set its keypoints are read from
    rows: tuple = field(init=False)  # the joint-set row of each keypoint, -1 where SMPL has none
    torso: tuple = field(init=False)  # the keypoints the camera is first fitted to

    def __post_init__(self):
        table = _JOINT_SET_NAMES[self.joint_set]
        rows = tuple(table.index(_ALIASES.get(n, n)) if _ALIASES.get(n, n) in table else -1 for n in self.names)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "torso", tuple(self.names.index(n) for n in TORSO if n in self.names))

    @property
    def num_keypoints(self) -> int:
        return len(self.names)


FORMATS = {
    "coco17": KeypointFormat("coco17", COCO17_NAMES, "hmr19"),
    "body25": KeypointFormat("body25", BODY25_NAMES, "smplx45"),
    "hmr19": KeypointFormat("hmr19", HMR19_NAMES, "hmr19"),
    "smpl24": KeypointFormat("smpl24", SMPL_JOINT_NAMES, "smpl24"),
}
_BY_COUNT = {f.num_keypoints: f.name for f in FORMATS.values()}


def keypoint_format(name: str) -> KeypointFormat:
    if name not in FORMATS:
        raise DataError(f"keypoint format must be one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[name]


@dataclass
class KeypointSet:
    """People's 2D keypoints from one file: (N, K, 3) pixels + confidence, in `format`'s order."""

    keypoints: np.ndarray
    format: KeypointFormat
    ids: list  # one string per person: file and person index, or the COCO annotation id
    images: list  # the image file each person is in (relative to the images folder), or None
    boxes: Optional[np.ndarray] = None  # (N, 4) x1, y1, x2, y2 where the file gives them
    source: str = ""


def read_keypoints(path, format: Optional[str] = None) -> KeypointSet:
    """The keypoints in a file or folder of any supported kind (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise DataError(f"{path}: no OpenPose .json files in this folder")
        return _concat([_read_openpose(f) for f in files], str(path))
    if not path.is_file():
        raise FileNotFoundError(f"keypoint file {path} not found")
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        if isinstance(data, dict) and "annotations" in data:
            return _read_coco(path, data)
        if isinstance(data, dict) and "people" in data:
            return _read_openpose(path, data)
        raise DataError(f"{path}: neither a COCO keypoints json ('annotations') nor an OpenPose json ('people')")
    if path.suffix.lower() == ".npz":
        return _read_npz(path, format)
    raise DataError(f"{path}: keypoint files are .json (OpenPose, COCO) or .npz (SPIN, plain); got {path.suffix!r}")


def _load_json(path):
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({type(exc).__name__})") from None


def _checked(keypoints, path, key, count) -> np.ndarray:
    """(N, count, 3) float64 from nested lists or an array; DataError naming the file otherwise."""
    if isinstance(keypoints, np.ndarray) and keypoints.dtype.kind not in "biuf":
        raise DataError(f"{path}: {key} must be real numbers, got dtype {keypoints.dtype}")
    try:
        kp = np.asarray(keypoints, dtype=np.float64)
        kp = kp.reshape(-1, count, 3) if kp.ndim == 2 and kp.shape[1] == 3 * count else kp
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: {key} must be numbers") from None
    if kp.ndim != 3 or kp.shape[1:] != (count, 3):
        raise DataError(f"{path}: {key} must be (N, {count}, 3) pixels + confidence, got shape {kp.shape}")
    bad = nonfinite_rows(kp)
    if bad.any():
        raise DataError(f"{path}: {key} has NaN/Inf or values beyond float32's range for {describe_rows(np.flatnonzero(bad), 'people')}")
    if (kp[..., 2] < 0).any():
        raise DataError(f"{path}: {key} has negative confidences")
    return kp


def _read_openpose(path, data=None) -> KeypointSet:
    data = _load_json(path) if data is None else data
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise DataError(f"{path}: an OpenPose json needs a 'people' list")
    flat = []
    for i, person in enumerate(people):
        values = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not isinstance(values, list) or len(values) != 75:
            raise DataError(f"{path}: people[{i}].pose_keypoints_2d must be 75 numbers (BODY_25 x, y, c)")
        flat.append(values)
    kp = _checked(flat if flat else np.zeros((0, 25, 3)), path, "pose_keypoints_2d", 25)
    stem = path.name.removesuffix("_keypoints.json").removesuffix(".json")
    return KeypointSet(kp, FORMATS["body25"], [f"{path.name}:{i}" for i in range(len(kp))], [stem] * len(kp),
                       source=str(path))


def _read_coco(path, data) -> KeypointSet:
    annotations, images = data.get("annotations"), data.get("images", [])
    if not isinstance(annotations, list) or not isinstance(images, list):
        raise DataError(f"{path}: a COCO json's 'annotations' and 'images' must be lists")
    names = {im.get("id"): im.get("file_name") for im in images
             if isinstance(im, dict) and isinstance(im.get("id"), (int, str)) and isinstance(im.get("file_name"), str)}
    kps, ids, files, boxes = [], [], [], []
    for i, ann in enumerate(annotations):
        values = ann.get("keypoints") if isinstance(ann, dict) else None
        if not isinstance(values, list) or len(values) != 51:
            raise DataError(f"{path}: annotations[{i}].keypoints must be 51 numbers (17 x, y, v)")
        kp = _checked([values], path, f"annotations[{i}].keypoints", 17)[0]
        if not (kp[:, 2] > 0).any():
            continue  # no labelled keypoint: nothing to fit
        kps.append(kp)
        ids.append(str(ann.get("id", i)))
        image_id = ann.get("image_id")
        files.append(names.get(image_id) if isinstance(image_id, (int, str)) else None)
        box = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in box) if isinstance(box, list) and len(box) == 4 else (np.nan,) * 4
        except (TypeError, ValueError, OverflowError):
            x = y = w = h = np.nan
        boxes.append([x, y, x + w, y + h])
    kp = np.asarray(kps, dtype=np.float64).reshape(-1, 17, 3)
    kp[..., 2] = (kp[..., 2] > 0).astype(np.float64)  # v = 1 (occluded) and 2 (visible) are both labelled
    return KeypointSet(kp, FORMATS["coco17"], ids, files, np.asarray(boxes, np.float64).reshape(-1, 4),
                       source=str(path))


def _read_npz(path, format) -> KeypointSet:
    arrays = read_npz(path, ("part", "imgname", "keypoints", "format", "ids", "boxes", "images"))
    if "part" in arrays:  # SPIN: 24 keypoints, HMR's 19 of them modelled
        kp = spin24_to_hmr19(_checked(arrays["part"], path, "part", 24))
        fmt = FORMATS["hmr19"]
        names = [str(n) for n in arrays["imgname"]] if "imgname" in arrays and len(arrays["imgname"]) == len(kp) \
            else [None] * len(kp)
        return KeypointSet(kp, fmt, [f"{path.name}:{i}" for i in range(len(kp))], names, source=str(path))
    if "keypoints" not in arrays:
        raise DataError(f"{path}: a keypoint npz needs 'keypoints' (N, K, 3) (or SPIN's 'part')")
    raw = arrays["keypoints"]
    if raw.ndim != 3:
        raise DataError(f"{path}: 'keypoints' must be (N, K, 3), got shape {raw.shape}")
    name = format or (str(arrays["format"]) if "format" in arrays else _BY_COUNT.get(raw.shape[1]))
    if name is None:
        raise DataError(f"{path}: {raw.shape[1]} keypoints per person match no format; pass the format "
                        f"({', '.join(sorted(FORMATS))})")
    fmt = keypoint_format(name)
    kp = _checked(raw, path, "keypoints", fmt.num_keypoints)
    ids = [str(i) for i in arrays["ids"]] if "ids" in arrays and len(arrays["ids"]) == len(kp) else \
        [f"{path.name}:{i}" for i in range(len(kp))]
    boxes = arrays["boxes"].astype(np.float64) if "boxes" in arrays and arrays["boxes"].shape == (len(kp), 4) else None
    images = [str(n) for n in arrays["images"]] if "images" in arrays and len(arrays["images"]) == len(kp) \
        else [None] * len(kp)
    return KeypointSet(kp, fmt, ids, images, boxes, source=str(path))


def _concat(sets: list, source: str) -> KeypointSet:
    return KeypointSet(np.concatenate([s.keypoints for s in sets]), sets[0].format,
                       [i for s in sets for i in s.ids], [n for s in sets for n in s.images], source=source)
