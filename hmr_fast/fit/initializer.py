"""A learned start for the fit: one person's COCO-17 keypoints -> SMPL pose, shape and camera.

The fit's trouble on real people is its start, not its objective (DESIGN.md: 10 iterations
from HMR's start reach PCK@0.1 0.70, 200 reach 0.89). This network starts it from the
keypoints themselves: the 17 keypoints and their scores, in the person's square box (the
box `people_boxes` gives the fitter: 1.2 x the detector's box, or around the keypoints),
go through a small residual MLP to SPIN's 6D rotation per joint (24, the global orientation
first), 10 betas and HMR's weak camera (s, tx, ty) in that same box. Keypoints and boxes
are all it reads, so it was trained on synthetic people only (the pose sampler's poses, the
pose prior's samples, random orientations and cameras, a simulated detector's noise:
`initializer_training`), with no image domain gap.

    from hmr_fast.fit.initializer import initialize
    start = initialize(keypoints, boxes)          # keypoints (B, 17, 3) px + score, boxes (B, 4) or None
    fit = KeypointFitter(smpl, keypoint_format("coco17"), settings).fit(keypoints, boxes, init=start)

`KeypointFitter.fit` does this itself for coco17 when `FitSettings.start == "learned"` and no
pose is given. The shipped weights (`hmr_fast/assets/keypoint_init.pt`, float16) load with
`torch.load(weights_only=True)`: nothing in the file runs.
`python -m hmr_fast.fit.initializer --out FILE [--steps N]` trains them again, bit for bit.
"""
from __future__ import annotations

import argparse
import functools
import io
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from hmr_fast.atomic import atomic_path
from hmr_fast.errors import DataError
from hmr_fast.rotations import rodrigues, rot6d_to_rotmat, rotmat_to_6d, rotmat_to_axis_angle_torch

from .start import MEAN_SCALE, UPRIGHT, people_boxes

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_ASSET = ASSETS / "keypoint_init.pt"
FORMAT = "hmr_fast.keypoint_init/1"
NUM_KEYPOINTS = 17  # COCO's
NUM_JOINTS = 24
NUM_BETAS = 10
# Keypoints further than this from the box centre (in half box sides) are outliers: clipped.
MAX_OFFSET = 3.0


def keypoint_features(keypoints: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, 51): each keypoint in its box's normalised coordinates (centre 0, edges -1 and 1;
    0 where the score is 0, so a missing point says nothing about where it is) and its score."""
    score = keypoints[..., 2:].clamp(0.0, 1.0)
    u = (keypoints[..., :2] - boxes[:, None, :2]) / (boxes[:, None, 2:] / 2)
    u = torch.where(score > 0, u.clamp(-MAX_OFFSET, MAX_OFFSET), torch.zeros_like(u))
    return torch.cat([u, score], dim=-1).flatten(1)


class ResidualBlock(nn.Module):
    """h + W2 relu(W1 norm(h)): pre-norm, so the identity path carries the input unchanged."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h):
        return h + self.fc2(torch.relu(self.fc1(self.norm(h))))


def _mean_parameters() -> torch.Tensor:
    """HMR's mean start as the network's origin: upright root, rest body, mean shape, the
    mean camera (its scale as a log); the network predicts the offset from it."""
    R = rodrigues(torch.tensor(UPRIGHT, dtype=torch.float64))
    rot6d = torch.cat([rotmat_to_6d(R)[None], rotmat_to_6d(torch.eye(3, dtype=torch.float64)).expand(23, 6)])
    cam = torch.tensor([math.log(MEAN_SCALE), 0.0, 0.0], dtype=torch.float64)
    return torch.cat([rot6d.flatten(), torch.zeros(NUM_BETAS, dtype=torch.float64), cam]).float()


class KeypointInitializer(nn.Module):
    """COCO-17 keypoints + scores in the person's box -> (6D rotations (B, 24, 6), betas
    (B, 10), weak camera (B, 3) s, tx, ty in the box): a residual MLP."""

    def __init__(self, width: int = 512, blocks: int = 3):
        super().__init__()
        self.width, self.num_blocks = int(width), int(blocks)
        self.embed = nn.Linear(3 * NUM_KEYPOINTS, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, NUM_JOINTS * 6 + NUM_BETAS + 3)
        # Start training at the mean body: a small head, the mean as the origin.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", _mean_parameters(), persistent=False)

    def forward(self, keypoints: torch.Tensor, boxes: torch.Tensor) -> tuple:
        """keypoints (B, 17, 3) pixels + score; boxes (B, 3) square (cx, cy, size) in pixels."""
        h = self.embed(keypoint_features(keypoints, boxes))
        for block in self.blocks:
            h = block(h)
        out = self.mean + self.head(torch.relu(self.norm(h)))
        rot6d = out[:, :NUM_JOINTS * 6].view(-1, NUM_JOINTS, 6)
        betas = out[:, NUM_JOINTS * 6:NUM_JOINTS * 6 + NUM_BETAS]
        log_s, t = out[:, -3:-2], out[:, -2:]
        return rot6d, betas, torch.cat([log_s.exp(), t], dim=1)

    @torch.no_grad()
    def start(self, keypoints, boxes) -> dict:
        """The fit's start (KeypointFitter.fit's `init`) for keypoints (B, 17, 3) and square
        boxes (B, 3): global_orient (B, 3), body_pose (B, 69) axis-angle, betas (B, 10),
        cam (B, 3) weak (s, tx, ty); float32 tensors on the network's device."""
        p = next(self.parameters())
        kp = torch.as_tensor(keypoints, dtype=p.dtype, device=p.device)
        box = torch.as_tensor(boxes, dtype=p.dtype, device=p.device).reshape(-1, 3)
        if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3) or len(box) != len(kp):
            raise ValueError(f"the initializer takes keypoints (B, {NUM_KEYPOINTS}, 3) and boxes (B, 3); got "
                             f"{tuple(kp.shape)} and {tuple(box.shape)}")
        rot6d, betas, cam = self(kp, box)
        pose = rotmat_to_axis_angle_torch(rot6d_to_rotmat(rot6d)).flatten(1)
        return {"global_orient": pose[:, :3], "body_pose": pose[:, 3:], "betas": betas.float(), "cam": cam.float()}


# ------------------------------------------------------------------------------- files
def save_initializer(model: KeypointInitializer, path, meta: Optional[dict] = None) -> Path:
    """Float16 weights + the architecture + how it was made (`meta`: plain numbers and strings)."""
    state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "width": model.width, "blocks": model.num_blocks, "state": state, "meta": meta or {}}
    buffer = io.BytesIO()  # torch.save names the archive's records after a file: a buffer's are always the same
    torch.save(blob, buffer)
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def load_initializer(path) -> KeypointInitializer:
    """The network in `path` (float32 on the CPU); DataError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoint initializer {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged zip, a pickle that asks for code, a truncated file: all one answer
        raise DataError(f"{path}: not a readable keypoint initializer ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("state"), dict):
        raise DataError(f"{path}: not a keypoint initializer (a torch file with format {FORMAT!r} and its weights)")
    width, blocks = blob.get("width"), blob.get("blocks")
    if not (isinstance(width, int) and isinstance(blocks, int) and 0 < width <= 4096 and 0 < blocks <= 16):
        raise DataError(f"{path}: a keypoint initializer needs an int width and blocks, got {width!r}, {blocks!r}")
    model = KeypointInitializer(width, blocks)
    try:
        state = {k: v.float() for k, v in blob["state"].items()}
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160]
        raise DataError(f"{path}: its weights do not fit a {blocks}-block, {width}-wide initializer "
                        f"({reason})") from None
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise DataError(f"{path}: its weights have NaN/Inf")
    model.meta = blob.get("meta", {})
    return model.eval()


@functools.lru_cache(maxsize=None)
def default_initializer(device: str = "cpu") -> KeypointInitializer:
    """The shipped network, loaded once per device."""
    return load_initializer(DEFAULT_ASSET).to(device)


def initialize(keypoints, boxes=None, model: Optional[KeypointInitializer] = None) -> dict:
    """The learned start for people's COCO-17 keypoints (B, 17, 3) pixels + score, with their
    detector boxes (B, 4) x1, y1, x2, y2 (or None: boxes around the keypoints, or square
    (B, 3) boxes as the fitter takes them): a dict of global_orient (B, 3), body_pose (B, 69)
    axis-angle, betas (B, 10), cam (B, 3) weak (s, tx, ty) in the box `people_boxes` makes
    from the same arguments, which is what `KeypointFitter.fit(keypoints, boxes, init=...)`
    reads. Float32 CPU tensors (the network's device)."""
    model = model or default_initializer()
    kp = torch.as_tensor(keypoints, dtype=torch.float32).cpu()
    return model.start(kp, people_boxes(kp, boxes))


# `python -m hmr_fast.fit.initializer --out FILE [--steps N]`
def main(argv=None) -> int:
    from . import initializer_training as training

    defaults = training.TrainSettings()
    parser = argparse.ArgumentParser(description="train the keypoint initializer on synthetic people")
    parser.add_argument("--out", required=True, help="the .pt to write")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    settings = training.TrainSettings(steps=args.steps, seed=args.seed)
    model, meta = training.train(KeypointInitializer, settings)
    print(f"wrote {save_initializer(model, args.out, meta)}: {meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
