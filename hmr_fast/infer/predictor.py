"""`hmr_fast.Predictor`: images in, per-person SMPL parameters, mesh and keypoints out.

    predictor = Predictor("run/last.pt")                 # or .onnx / .engine / .pt2
    out = predictor.predict(frame, boxes=[[x1, y1, x2, y2], ...])  # one frame, K people
    out = predictor.predict([f0, f1], boxes=[[b0], [b1a, b1b]])    # frames, boxes per frame
    out = predictor.predict_crops(crops)                 # person crops, any size
    out.keypoints2d  # (B, J, 2) in image pixels;  out.vertices_px (B, V, 3) for drawing

Images are uint8 BGR (H, W, 3), OpenCV's layout. Every person in a call goes through the
backend in batches of at most `max_batch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from hmr_fast import camera
from hmr_fast.body import SMPL
from hmr_fast.camera import normalise_images, vertices_to_pixels
from hmr_fast.rotations import rotmat_to_axis_angle

from .backends import Backend, make_backend


@dataclass
class Prediction:
    """Per-person results, all numpy; B people, J joints of the model's joint set."""

    rot_mats: np.ndarray  # (B, 24, 3, 3) local joint rotations (root in the camera frame)
    pose: np.ndarray  # (B, 72) the same as axis-angle (SMPL's body_pose = pose[:, 3:])
    betas: np.ndarray  # (B, 10)
    cam: np.ndarray  # (B, 3) weak perspective (s, tx, ty) in the crop's normalised coordinates
    joints3d: np.ndarray  # (B, J, 3) model units (metres), camera axes, no translation
    keypoints2d: np.ndarray  # (B, J, 2) image pixels
    keypoints_norm: np.ndarray  # (B, J, 2) normalised crop coordinates [-1, 1]
    boxes: np.ndarray  # (B, 3) the crop boxes (cx, cy, size) in image pixels
    frame_index: np.ndarray  # (B,) which input image each person came from
    vertices: Optional[np.ndarray] = None  # (B, V, 3) model units, no translation
    vertices_px: Optional[np.ndarray] = None  # (B, V, 3) x, y image pixels, z depth in pixels

    def __len__(self) -> int:
        return len(self.betas)


class Predictor:
    """HMR inference on one backend (see hmr_fast.infer.backends).

    checkpoint: an hmr_fast checkpoint (backends torch, compiled) or an exported file
      (.onnx -> onnxruntime, .engine/.plan -> tensorrt, .pt2 -> aoti).
    backend: "auto" (from the file; for checkpoints "compiled" on CUDA, "torch" on the CPU),
      "torch", "compiled", "onnxruntime", "tensorrt" or "aoti".
    device: "cpu", "cuda", ...; None picks CUDA when there is one.
    precision: "auto" (bf16 on CUDA, fp32 on the CPU), "fp32", "bf16", "fp16" for the
      encoder + regressor of the torch backends (the body model always runs in fp32;
      exported engines keep the precision they were built with).
    with_vertices: False skips the mesh in the torch backends (joints and keypoints only;
      exported graphs always compute it).
    threads: onnxruntime's CPU threads (None: its default, all cores).
    """

    def __init__(self, checkpoint, backend: str = "auto", device=None, precision: str = "auto",
                 max_batch: int = 64, with_vertices: bool = True, threads: Optional[int] = None,
                 backend_object: Optional[Backend] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.backend = backend_object or make_backend(checkpoint, backend, device, precision, with_vertices,
                                                      max_batch, threads)
        self.device = self.backend.device
        self.img_size = int(self.backend.img_size)
        self.joint_set = self.backend.joint_set
        limit = self.backend.max_batch
        self.max_batch = int(min(max_batch, limit) if limit else max_batch)
        self._faces = getattr(self.backend, "faces", None)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def faces(self) -> np.ndarray:
        """(F, 3) triangles of the body model the checkpoint was trained with."""
        if self._faces is None:
            self._faces = SMPL(self.backend.smpl_model).faces
        return self._faces

    # -- inputs ---------------------------------------------------------------------------
    def predict(self, images, boxes=None, return_vertices: bool = True) -> Prediction:
        """People in frames. images: one (H, W, 3) uint8 BGR frame or a list of them.
        boxes: for one frame, (K, 4) x1, y1, x2, y2 (or one box (4,)); for a list of frames,
        a list of such per frame. None: each image is one person crop (its whole area)."""
        frames = _as_frame_list(images)
        if boxes is None:
            per_frame = [[camera.full_frame_box(*f.shape[:2])] for f in frames]
        else:
            single = isinstance(images, np.ndarray) and images.ndim == 3
            per_frame = _boxes_per_frame(boxes, len(frames), single)
        crops, all_boxes, index = [], [], []
        for i, (frame, frame_boxes) in enumerate(zip(frames, per_frame)):
            for box in frame_boxes:
                crops.append(camera.crop(frame, box, self.img_size))
                all_boxes.append(box)
                index.append(i)
        if not crops:
            raise ValueError("predict: no boxes were given for any frame")
        return self._predict(np.stack(crops), np.array(all_boxes, dtype=np.float64), np.array(index),
                             return_vertices)

    def predict_crops(self, crops, return_vertices: bool = True) -> Prediction:
        """Person crops (a list of (h, w, 3) uint8 BGR, or a (B, h, w, 3) array); keypoints come
        back in each crop's own pixels."""
        if isinstance(crops, np.ndarray):
            crops = [crops] if crops.ndim == 3 else list(crops)
        return self.predict(list(crops), None, return_vertices)

    # -- the batch ------------------------------------------------------------------------
    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 BGR -> (B, 3, S, S) float32, RGB, ImageNet-normalised, on the device."""
        x = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return normalise_images(x.permute(0, 3, 1, 2).flip(1))  # BGR -> RGB, as training sees them

    @torch.inference_mode()
    def run_batches(self, crops: np.ndarray) -> dict:
        """Backend outputs for crops (B, S, S, 3), concatenated over max_batch chunks, on the CPU."""
        chunks = []
        for start in range(0, len(crops), self.max_batch):
            out = self.backend.run(self.preprocess(crops[start:start + self.max_batch]))
            chunks.append({k: None if v is None else v.float().cpu() for k, v in out.items()})
        return {k: None if chunks[0][k] is None else torch.cat([c[k] for c in chunks]).numpy() for k in chunks[0]}

    def _predict(self, crops, boxes, index, return_vertices) -> Prediction:
        out = self.run_batches(crops)
        keypoints_px = camera.to_pixels(out["keypoints2d"], boxes)
        vertices = out["vertices"] if return_vertices else None
        vertices_px = None if vertices is None else vertices_to_pixels(vertices, out["cam"], boxes)
        return Prediction(
            rot_mats=out["rot_mats"], pose=rotmat_to_axis_angle(out["rot_mats"]).reshape(len(boxes), -1),
            betas=out["betas"], cam=out["cam"], joints3d=out["joints3d"], keypoints2d=keypoints_px,
            keypoints_norm=out["keypoints2d"], boxes=boxes, frame_index=index, vertices=vertices,
            vertices_px=vertices_px)


def _check_frame(frame, name: str) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"{name} must be an (H, W, 3) uint8 BGR image, got {got}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"{name} is too small: {frame.shape}")
    return frame


def _as_frame_list(images) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [_check_frame(images, "images")]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images must be an (H, W, 3) uint8 image or a non-empty list of them")
    return [_check_frame(f, f"images[{i}]") for i, f in enumerate(images)]


def _boxes_per_frame(boxes, num_frames: int, single: bool) -> list:
    """Boxes as a list (per frame) of lists of (cx, cy, size)."""
    if single:
        boxes = [boxes]
    if len(boxes) != num_frames:
        raise ValueError(f"boxes: got boxes for {len(boxes)} frames, but {num_frames} frames")
    out = []
    for i, frame_boxes in enumerate(boxes):
        arr = np.asarray(frame_boxes, dtype=np.float64)
        if arr.size % 4 or (arr.ndim > 1 and arr.shape[-1] != 4):
            raise ValueError(f"boxes[{i}]: each box must be 4 numbers (x1, y1, x2, y2), got shape {arr.shape}")
        arr = arr.reshape(-1, 4)
        try:
            out.append([camera.as_box(b) for b in arr])
        except ValueError as exc:
            raise ValueError(f"boxes[{i}]: {exc}") from None
    return out
