"""COCO keypoints json (person_keypoints_*.json) + image folder, as person crops.

Each non-crowd person annotation with at least `min_keypoints` labelled keypoints is one
sample: the crop is the bbox (x, y, w, h) centre with side max(w, h) * 1.2 (SPIN's padding),
and the 17 COCO keypoints map to HMR's 19 (neck and head top invisible; keypoints.py).
The json is checked when it is opened (see `load_coco_annotations`): malformed JSON, a
missing key, a wrong type, NaN/Inf, v outside {0, 1, 2} or an empty box is a DataError
naming the file, the key and the annotations, unless drop_bad_labels drops them (logged).
"""
from __future__ import annotations

import json
import os

import numpy as np

from hmr_fast.errors import DataError

from .dataset import AugmentSettings, CropRecord, LabelCheck, PersonCropDataset, nonfinite_rows
from .keypoints import coco17_to_hmr19

BOX_PADDING = 1.2


def _read_json(path: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())  # bytes: json detects UTF-8/16/32
    except RecursionError:
        raise DataError(f"{path}: not a COCO json (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long to read
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _number_rows(values: list, width: int):
    """(M, width) float64 of M json lists of `width` numbers, and (M,) True where a row is not that."""
    try:
        a = np.array(values)
        if a.dtype.kind in "iuf" and a.shape == (len(values), width):
            return a.astype(np.float64), np.zeros(len(values), bool)
    except (ValueError, TypeError, OverflowError):  # ragged, mixed
        pass
    out, bad = np.zeros((len(values), width)), np.zeros(len(values), bool)
    for i, v in enumerate(values):  # the slow path, only for a file with malformed rows
        if isinstance(v, list) and len(v) == width and all(type(x) in (int, float) for x in v):
            try:
                out[i] = v
            except OverflowError:  # an integer beyond float64: not a usable number
                out[i] = np.inf
        else:
            bad[i] = True
    return out, bad


def load_coco_annotations(path, min_keypoints: int = 6, drop_bad_labels: bool = False, check=None) -> list:
    """[(file_name, center (2,), box side, keypoints (19, 3))] from a COCO keypoints json.

    Every non-crowd annotation is checked (vectorised): keys image_id, keypoints (17 x 3 =
    51 finite numbers, v in {0, 1, 2}) and bbox (4 finite numbers; w, h > 0 for a person that
    is used); a bad one is a DataError naming the file, key and annotations, or with
    drop_bad_labels is dropped (logged; counted in `check`, a LabelCheck, when given).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: COCO annotation file not found")
    coco = _read_json(path)
    if not isinstance(coco, dict):
        raise DataError(f"{path}: must be a JSON object with 'images' and 'annotations' (a COCO keypoints json), "
                        f"got a {type(coco).__name__}")
    for key in ("images", "annotations"):
        if key not in coco:
            raise DataError(f"{path}: missing key {key!r} (not a COCO keypoints json?)")
        if not isinstance(coco[key], list):
            raise DataError(f"{path}: key {key!r} must be a list, got a {type(coco[key]).__name__}")
    files = {}
    for i, image in enumerate(coco["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DataError(f"{path}: images[{i}] is not an object with 'id' and 'file_name'")
        if not isinstance(image["id"], (int, str)) or not isinstance(image["file_name"], str):
            raise DataError(f"{path}: images[{i}] must have an integer or string 'id' and a string 'file_name'")
        files[image["id"]] = image["file_name"]
    annotations = coco["annotations"]
    check = check if check is not None else LabelCheck(path, len(annotations), drop_bad_labels, unit="annotations")
    check.keep = np.ones(len(annotations), bool)
    rows, keypoints, boxes, image_ids = [], [], [], []
    malformed = {key: np.zeros(len(annotations), bool) for key in ("annotation", "image_id", "keypoints", "bbox")}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            malformed["annotation"][i] = True
            continue
        if ann.get("iscrowd", 0):
            continue
        missing = [key for key in ("image_id", "keypoints", "bbox") if key not in ann]
        for key in missing:
            malformed[key][i] = True
        if missing:
            continue
        rows.append(i)
        keypoints.append(ann["keypoints"])
        boxes.append(ann["bbox"])
        image_ids.append(ann["image_id"])
    check.flag("annotations", malformed["annotation"], "has an entry that is not a JSON object")
    for key in ("image_id", "keypoints", "bbox"):
        check.flag(key, malformed[key], "is missing")
    rows = np.array(rows, dtype=np.int64)
    on_rows = lambda mask: np.bincount(rows[mask], minlength=len(annotations)).astype(bool)  # noqa: E731
    kp, bad = _number_rows(keypoints, 51)
    check.flag("keypoints", on_rows(bad), "is not a list of 17 x 3 = 51 numbers")
    box, bad_box = _number_rows(boxes, 4)
    check.flag("bbox", on_rows(bad_box), "is not a list of 4 numbers [x, y, w, h]")
    kp = kp.reshape(-1, 17, 3)
    check.flag("keypoints", on_rows(nonfinite_rows(kp) & ~bad), "has NaN/Inf")
    v = kp[..., 2]
    check.flag("keypoints", on_rows(((v != 0) & (v != 1) & (v != 2)).any(1) & ~bad & ~nonfinite_rows(kp)),
               "has a visibility v outside {0, 1, 2}")
    check.flag("bbox", on_rows(nonfinite_rows(box) & ~bad_box), "has NaN/Inf")
    used = (v > 0).sum(1) >= min_keypoints
    check.flag("bbox", on_rows(used & ~bad_box & ~nonfinite_rows(box) & ((box[:, 2] <= 0) | (box[:, 3] <= 0))),
               "has a width or height <= 0")
    unknown = np.array([not isinstance(id_, (int, str)) or id_ not in files for id_ in image_ids], bool)
    check.flag("image_id", on_rows(used & unknown), "refers to an image that 'images' does not list")
    keep = check.keep[rows] & used if len(rows) else np.zeros(0, bool)
    samples = []
    for j in np.flatnonzero(keep):
        x, y, w, h = box[j]
        samples.append((files[image_ids[j]], np.array([x + w / 2, y + h / 2]), max(w, h) * BOX_PADDING,
                        coco17_to_hmr19(kp[j])))
    return samples


class CocoDataset(PersonCropDataset):
    def __init__(self, json_path, image_root, img_size: int = 224, augment: AugmentSettings = None,
                 min_keypoints: int = 6, drop_bad_labels: bool = False):
        super().__init__(img_size, augment)
        self.name = str(json_path)
        self.image_root = str(image_root)
        check = LabelCheck(json_path, 0, drop_bad_labels, unit="annotations")
        self.samples = load_coco_annotations(json_path, min_keypoints, check=check)
        self.dropped = check.dropped  # annotations with bad labels left out (drop_bad_labels)
        if not self.samples:
            raise DataError(f"{json_path}: no person has >= {min_keypoints} labelled keypoints")

    def __len__(self) -> int:
        return len(self.samples)

    def record(self, i: int) -> CropRecord:
        file_name, center, box, keypoints = self.samples[i]
        return CropRecord(os.path.join(self.image_root, file_name), center, box, keypoints)
