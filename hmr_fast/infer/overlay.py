"""Drawing predictions onto frames: the mesh (OpenCV on the CPU, a torch z-buffer on CUDA),
keypoints, the crop box, and the FPS / latency overlay.

`MeshOverlay` picks the rasteriser by device. The torch rasteriser is vectorised over
faces: every front face's pixel candidates (its bounding box, faces bucketed by box size
so small faces test few pixels) get barycentric coverage and depth, and a scatter-min
over (depth, face id) keys resolves visibility per pixel exactly (a z-buffer, not the
painter's order). It also runs on the CPU (used by the tests to hold it against the
OpenCV rasteriser), but there OpenCV is faster.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from hmr_fast.render import DEFAULT_LIGHT, render_mesh

MESH_COLOR = (200, 180, 160)  # BGR, a light grey-blue
_MAX_CANDIDATES = 1 << 22  # pixel candidates per rasterisation chunk (memory bound)
_FACE_BITS = 24


class TorchRasterizer:
    """Flat-shaded z-buffer rasterisation of one mesh into an image tensor, on any device."""

    def __init__(self, faces: np.ndarray, device, light=DEFAULT_LIGHT, ambient: float = 0.35):
        if len(faces) >= 1 << _FACE_BITS:
            raise ValueError(f"at most {1 << _FACE_BITS} faces, got {len(faces)}")
        self.device = torch.device(device)
        self.faces = torch.as_tensor(np.asarray(faces, dtype=np.int64), device=self.device)
        light = torch.tensor(light, dtype=torch.float32, device=self.device)
        self.to_light = light / light.norm()
        self.ambient = float(ambient)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, vertices_px: torch.Tensor, color=MESH_COLOR) -> torch.Tensor:
        """image (H, W, 3) uint8 tensor, drawn into in place; vertices_px (V, 3) x, y px, z depth."""
        H, W = image.shape[:2]
        v = vertices_px.to(self.device, torch.float32)
        tri = v[self.faces]  # (F, 3, 3)
        normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-12)
        lo = tri[:, :, :2].amin(1).floor()
        hi = tri[:, :, :2].amax(1).ceil()
        keep = (normal[:, 2] < 0) & (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < W) & (lo[:, 1] < H)
        ids = keep.nonzero().squeeze(1)
        if ids.numel() == 0:
            return image
        shade = self.ambient + (1 - self.ambient) * (normal[ids] @ self.to_light).clamp(0, 1)
        colors = (torch.tensor(color, dtype=torch.float32, device=self.device) * shade[:, None]).clamp(0, 255)
        z = tri[ids, :, 2]
        zmin, zmax = z.min(), z.max()
        depth_scale = (2**31 - 2) / (zmax - zmin).clamp_min(1e-6)
        zbuf = torch.full((H * W,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=self.device)
        extent = (hi[ids] - lo[ids]).amax(1) + 1
        for size in _bucket_sizes(int(extent.max().item())):
            sel = ((extent <= size) & (extent > size // 2)) if size > 2 else (extent <= size)
            local = sel.nonzero().squeeze(1)
            step = max(1, _MAX_CANDIDATES // (size * size))
            for start in range(0, local.numel(), step):
                chunk = local[start:start + step]
                self._splat(zbuf, tri[ids[chunk]], lo[ids[chunk]], chunk, size, W, H, zmin, depth_scale)
        hit = zbuf != torch.iinfo(torch.int64).max
        face = (zbuf[hit] & ((1 << _FACE_BITS) - 1)).long()
        flat = image.view(H * W, 3)
        flat[hit] = colors[face].round().to(torch.uint8)
        return image

    @staticmethod
    def _splat(zbuf, tri, lo, face_ids, size, W, H, zmin, depth_scale):
        """Scatter-min (depth, face) keys of the pixels each triangle covers."""
        offs = torch.arange(size, device=tri.device, dtype=torch.float32)
        px = (lo[:, 0:1, None] + offs[None, None, :]).expand(-1, size, size).reshape(len(tri), -1)
        py = (lo[:, 1:2, None] + offs[None, :, None]).expand(-1, size, size).reshape(len(tri), -1)
        x0, y0 = tri[:, 0, 0:1], tri[:, 0, 1:2]
        x1, y1 = tri[:, 1, 0:1], tri[:, 1, 1:2]
        x2, y2 = tri[:, 2, 0:1], tri[:, 2, 1:2]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
        w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
        w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
        w2 = 1 - w0 - w1
        eps = -1e-4
        inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps) & (px >= 0) & (py >= 0) & (px < W) & (py < H)
        depth = w0 * tri[:, 0, 2:3] + w1 * tri[:, 1, 2:3] + w2 * tri[:, 2, 2:3]
        key = ((depth - zmin) * depth_scale).clamp(0, 2**31 - 2).long() << _FACE_BITS
        key = key | face_ids[:, None]
        index = (py * W + px).long()
        zbuf.scatter_reduce_(0, index[inside], key[inside], reduce="amin")


def _bucket_sizes(largest: int) -> list:
    sizes, s = [], 2
    while True:
        sizes.append(s)
        if s >= largest:
            return sizes
        s *= 2


class MeshOverlay:
    """Draws meshes, keypoints, boxes and the HUD onto BGR frames (numpy, in place)."""

    def __init__(self, faces: np.ndarray, device="cpu", color=MESH_COLOR, rasterizer: str = "auto"):
        self.faces = np.asarray(faces, dtype=np.int64)
        self.color = color
        device = torch.device(device)
        if rasterizer not in ("auto", "opencv", "torch"):
            raise ValueError(f"rasterizer must be auto, opencv or torch, got {rasterizer!r}")
        use_torch = rasterizer == "torch" or (rasterizer == "auto" and device.type == "cuda")
        self.torch = TorchRasterizer(self.faces, device) if use_torch else None
        self.device = device

    @property
    def name(self) -> str:
        return f"torch ({self.device.type})" if self.torch is not None else "opencv"

    def mesh(self, frame: np.ndarray, vertices_px: np.ndarray, color=None) -> np.ndarray:
        color = self.color if color is None else color
        if self.torch is None:
            return render_mesh(frame, vertices_px, self.faces, color)
        image = torch.from_numpy(frame).to(self.device)
        self.torch(image, torch.from_numpy(np.ascontiguousarray(vertices_px, dtype=np.float32)), color)
        frame[...] = image.cpu().numpy()
        return frame


def draw_keypoints(frame: np.ndarray, keypoints_px: np.ndarray, color=(0, 220, 255)) -> None:
    for x, y in np.asarray(keypoints_px)[:, :2]:
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(frame, (int(round(x)), int(round(y))), 2, color, -1, cv2.LINE_AA)


def draw_box(frame: np.ndarray, box, color=(60, 200, 60)) -> None:
    cx, cy, size = box
    h = size / 2
    cv2.rectangle(frame, (int(cx - h), int(cy - h)), (int(cx + h), int(cy + h)), color, 1, cv2.LINE_AA)


def draw_hud(frame: np.ndarray, lines) -> None:
    """Text lines at the top left, white on a darkened band (readable on any frame)."""
    scale = max(0.35, min(frame.shape[:2]) / 720 * 0.8)
    font, pad = cv2.FONT_HERSHEY_SIMPLEX, 4
    y = 0
    for line in lines:
        (w, h), base = cv2.getTextSize(line, font, scale, 1)
        y0, y1, x1 = y, min(frame.shape[0], y + h + base + 2 * pad), min(frame.shape[1], w + 2 * pad)
        band = frame[y0:y1, :x1]
        band[...] = (band * 0.4).astype(np.uint8)  # darken, so the text reads on bright frames
        cv2.putText(frame, line, (pad, y + pad + h), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
        y = y1
