"""COCO keypoints json (person_keypoints_*.json) + image folder, as person crops.

Each non-crowd person annotation with at least `min_keypoints` labelled keypoints is one
sample: the crop is the bbox (x, y, w, h) centre with side max(w, h) * 1.2 (SPIN's padding),
and the 17 COCO keypoints map to HMR's 19 (neck and head top invisible; keypoints.py).
"""
from __future__ import annotations

import json
import os

import numpy as np

from hmr_fast.errors import DataError

from .dataset import AugmentSettings, CropRecord, PersonCropDataset
from .keypoints import coco17_to_hmr19

BOX_PADDING = 1.2


def load_coco_annotations(path, min_keypoints: int = 6) -> list:
    """[(file_name, center (2,), box side, keypoints (19, 3))] from a COCO keypoints json."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: COCO annotation file not found")
    with open(path) as f:
        coco = json.load(f)
    for key in ("images", "annotations"):
        if key not in coco:
            raise DataError(f"{path}: missing key {key!r} (not a COCO keypoints json?)")
    files = {}
    for image in coco["images"]:
        if "id" not in image or "file_name" not in image:
            raise DataError(f"{path}: an entry of 'images' lacks 'id' or 'file_name'")
        files[image["id"]] = image["file_name"]
    samples = []
    for i, ann in enumerate(coco["annotations"]):
        for key in ("image_id", "keypoints", "bbox"):
            if key not in ann:
                raise DataError(f"{path}: annotations[{i}] is missing key {key!r}")
        if ann.get("iscrowd", 0):
            continue
        keypoints = np.asarray(ann["keypoints"], dtype=np.float64)
        if keypoints.shape != (51,):
            raise DataError(f"{path}: annotations[{i}]['keypoints'] must have 17 x 3 = 51 "
                                     f"numbers, got {keypoints.size}")
        keypoints = keypoints.reshape(17, 3)
        if int((keypoints[:, 2] > 0).sum()) < min_keypoints:
            continue
        if ann["image_id"] not in files:
            raise DataError(f"{path}: annotations[{i}] refers to image_id {ann['image_id']} "
                                     "which 'images' does not list")
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            continue
        samples.append((files[ann["image_id"]], np.array([x + w / 2, y + h / 2]),
                        max(w, h) * BOX_PADDING, coco17_to_hmr19(keypoints)))
    return samples


class CocoDataset(PersonCropDataset):
    def __init__(self, json_path, image_root, img_size: int = 224, augment: AugmentSettings = None,
                 min_keypoints: int = 6):
        super().__init__(img_size, augment)
        self.name = str(json_path)
        self.image_root = str(image_root)
        self.samples = load_coco_annotations(json_path, min_keypoints)
        if not self.samples:
            raise DataError(f"{json_path}: no person has >= {min_keypoints} labelled keypoints")

    def __len__(self) -> int:
        return len(self.samples)

    def record(self, i: int) -> CropRecord:
        file_name, center, box, keypoints = self.samples[i]
        return CropRecord(os.path.join(self.image_root, file_name), center, box, keypoints)
