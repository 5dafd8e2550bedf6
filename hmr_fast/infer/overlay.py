"""Drawing predictions onto frames: the mesh (a torch z-buffer, or OpenCV's painter when
asked for), keypoints, the crop box, and the FPS / latency overlay.

`MeshOverlay` draws with the torch z-buffer (`TorchRasterizer`, vectorised over faces and
scanlines, every mesh of a frame in one call) on any device; rasterizer="opencv" picks
OpenCV's painter (`hmr_fast.render`) instead. On this 2-core CPU the torch one draws a
120-200 px tall person in 7-8 ms where OpenCV takes 15-32, and 20 people of 130-275 px in
one call in 30 ms with a 2742-face simplified mesh (128 ms with the full 13776 faces).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from hmr_fast.render import DEFAULT_LIGHT, render_mesh

MESH_COLOR = (200, 180, 160)  # BGR, a light grey-blue
_MAX_CANDIDATES = 1 << 21  # pixel candidates per rasterisation chunk (memory bound)
_FACE_BITS, _DEPTH_BITS, _RANK_BITS = 24, 31, 8  # the z-buffer key: mesh rank, depth, face (63 bits)
_EMPTY = torch.iinfo(torch.int64).max


class TorchRasterizer:
    """Flat-shaded z-buffer rasterisation of meshes into an image tensor, on any device.

    Vectorised over faces, scanlines and pixels (ragged aranges, no Python loop per face):
    the two edge functions and the depth of each front face are planes in screen space,
    computed once in the face's own box coordinates (where float32 stays exact); each row
    of the box gets the span of x the three edges allow, each pixel of a span gets a key
    (mesh rank, depth, face id), and a scatter-min over the keys resolves visibility per
    pixel. Several meshes go through in one call: the mesh rank comes first in the key, so a
    nearer mesh covers a farther one wherever they overlap (each body has its own
    weak-perspective depth, not comparable with another's), as drawing them one by one
    would."""

    def __init__(self, faces: np.ndarray, device, light=DEFAULT_LIGHT, ambient: float = 0.35):
        if len(faces) >= 1 << _FACE_BITS:
            raise ValueError(f"at most {1 << _FACE_BITS} faces, got {len(faces)}")
        self.device = torch.device(device)
        self.faces = torch.as_tensor(np.asarray(faces, dtype=np.int64), device=self.device)
        light = torch.tensor(light, dtype=torch.float32, device=self.device)
        self.to_light = light / light.norm()
        self.ambient = float(ambient)

    def __call__(self, image: torch.Tensor, vertices_px: torch.Tensor, color=MESH_COLOR) -> torch.Tensor:
        """image (H, W, 3) uint8 tensor, drawn into in place; vertices_px (V, 3) x, y px, z depth."""
        return self.draw(image, vertices_px[None], [color])

    @torch.no_grad()
    def draw(self, image: torch.Tensor, vertices_px: torch.Tensor, colors) -> torch.Tensor:
        """Meshes (P, V, 3) listed far to near, one BGR colour each, into `image` in place."""
        H, W = image.shape[:2]
        num = len(vertices_px)
        if num >= 1 << _RANK_BITS:  # more meshes than the key has ranks for: the farthest first
            cut = num - (1 << _RANK_BITS) + 1
            self.draw(image, vertices_px[:cut], colors[:cut])
            vertices_px, colors = vertices_px[cut:], colors[cut:]
        v = vertices_px.to(self.device, torch.float32)
        tri = v[:, self.faces].reshape(-1, 3, 3)  # (P * F, 3, 3)
        rank = torch.arange(len(v), device=self.device).repeat_interleave(len(self.faces))
        normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-12)
        lo = tri[:, :, :2].amin(1).floor()
        hi = tri[:, :, :2].amax(1).ceil()
        keep = (normal[:, 2] < 0) & (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < W) & (lo[:, 1] < H)
        ids = keep.nonzero().squeeze(1)
        if ids.numel() == 0:
            return image
        tri, lo, hi, rank = tri[ids], lo[ids], hi[ids], rank[ids]
        shade = self.ambient + (1 - self.ambient) * (normal[ids] @ self.to_light).clamp(0, 1)
        bgr = torch.as_tensor(np.asarray(colors, dtype=np.float32).reshape(-1, 3), device=self.device)
        face_colors = (bgr[rank] * shade[:, None]).clamp(0, 255).round().to(torch.uint8)
        # the z-buffer spans the meshes' box only (a person is a small part of a crowd's frame)
        corner = lo.amin(0).clamp_min(0)
        far = torch.minimum(hi.amax(0), torch.tensor([W - 1, H - 1], dtype=hi.dtype, device=self.device))
        x0, y0 = (int(c) for c in corner.tolist())
        w, h = (int(c) + 1 for c in (far - corner).tolist())
        lo, hi = torch.maximum(lo, corner), torch.minimum(hi, far)  # each face's box, clipped to the frame
        coeffs = self._planes(tri, lo, rank, len(v))
        lo, hi = lo - corner, hi - corner  # in the z-buffer's pixels
        head = (len(v) - 1 - rank) << (_DEPTH_BITS + _FACE_BITS)  # the key's top bits: nearer meshes first
        zbuf = torch.full((h * w,), _EMPTY, dtype=torch.int64, device=self.device)
        size = (hi - lo + 1).long()
        box = lo[:, 1].long() * w + lo[:, 0].long()  # each face box's first pixel in the z-buffer
        ends = (size[:, 0] * size[:, 1]).cumsum(0)  # the boxes bound the pixels, for chunking
        first = 0
        while first < len(ends):  # chunks of about _MAX_CANDIDATES pixels
            done = int(ends[first - 1]) if first else 0
            last = max(first + 1, int(torch.searchsorted(ends, done + _MAX_CANDIDATES, right=True)))
            self._splat(zbuf, slice(first, last), size, box, coeffs, head, w)
            first = last
        hit = zbuf != _EMPTY
        face = zbuf[hit] & ((1 << _FACE_BITS) - 1)
        region = image[y0:y0 + h, x0:x0 + w]
        flat = region.reshape(h * w, 3)
        flat[hit] = face_colors[face]
        region.copy_(flat.view(h, w, 3))
        return image

    @staticmethod
    def _planes(tri, lo, rank, num_meshes) -> torch.Tensor:
        """(F, 9): edge functions w0, w1 and the key's depth as planes a*x + b*y + c over the
        pixels of each face's box (x, y counted from the box's corner `lo`)."""
        t = tri.double()
        x, y, z = t[..., 0] - lo[:, None, 0].double(), t[..., 1] - lo[:, None, 1].double(), t[..., 2]
        area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
        area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
        a0, b0 = (y[:, 1] - y[:, 2]) / area, (x[:, 2] - x[:, 1]) / area
        c0 = (x[:, 1] * y[:, 2] - x[:, 2] * y[:, 1]) / area
        a1, b1 = (y[:, 2] - y[:, 0]) / area, (x[:, 0] - x[:, 2]) / area
        c1 = (x[:, 2] * y[:, 0] - x[:, 0] * y[:, 2]) / area
        # depth = w0 z0 + w1 z1 + w2 z2, scaled so each mesh's depths span the key's depth bits
        zmin = torch.full((num_meshes,), torch.inf, dtype=t.dtype, device=t.device).scatter_reduce(
            0, rank, z.amin(1), "amin")
        zmax = torch.full((num_meshes,), -torch.inf, dtype=t.dtype, device=t.device).scatter_reduce(
            0, rank, z.amax(1), "amax")
        scale = ((1 << _DEPTH_BITS) - 2) / (zmax - zmin).clamp_min(1e-6)
        dz0, dz1 = z[:, 0] - z[:, 2], z[:, 1] - z[:, 2]
        s = scale[rank]
        az, bz = (a0 * dz0 + a1 * dz1) * s, (b0 * dz0 + b1 * dz1) * s
        cz = (z[:, 2] + c0 * dz0 + c1 * dz1 - zmin[rank]) * s
        return torch.stack([a0, b0, c0, a1, b1, c1, az, bz, cz], 1).float()

    @staticmethod
    def _splat(zbuf, chunk, size, box, coeffs, head, width):
        """Scatter-min the keys of the pixel centres inside faces `chunk`, a scanline at a time:
        each row of a face's box gets the span of x the three edge functions allow, so thin
        faces (most of a body's, seen from the side) cost their pixels, not their boxes'."""
        device = zbuf.device
        rows = size[chunk, 1]
        face = torch.arange(chunk.start, chunk.stop, device=device).repeat_interleave(rows)
        y = (torch.arange(len(face), device=device) - (rows.cumsum(0) - rows).repeat_interleave(rows)).float()
        k = coeffs.index_select(0, face)
        # w_i(x, y) = a_i x + b_i y + c_i >= eps for the three edges (w2 = 1 - w0 - w1)
        a = torch.stack([k[:, 0], k[:, 3], -k[:, 0] - k[:, 3]], 1)
        rhs = -1e-4 - torch.stack([k[:, 1] * y + k[:, 2], k[:, 4] * y + k[:, 5], 1 - (k[:, 1] + k[:, 4]) * y
                                   - k[:, 2] - k[:, 5]], 1)  # a_i x >= rhs_i
        bound = rhs / torch.where(a == 0, torch.ones_like(a), a)
        x_from = torch.where(a > 0, bound, -torch.inf).amax(1).ceil().clamp_min(0)
        x_to = torch.minimum(torch.where(a < 0, bound, torch.inf).amin(1).floor(), size[face, 0].float() - 1)
        empty = ((a == 0) & (rhs > 0)).any(1)
        count = torch.where(empty, 0, (x_to - x_from + 1).clamp_min(0)).long()
        # each row's pixels: depth = az x + (bz y + cz), key = nearness | depth | face
        row = torch.arange(len(face), device=device).repeat_interleave(count)
        x = (torch.arange(len(row), device=device) - (count.cumsum(0) - count).repeat_interleave(count)).float()
        x = x + x_from.index_select(0, row)
        depth = (k[:, 6].index_select(0, row) * x + (k[:, 7] * y + k[:, 8]).index_select(0, row))
        depth = depth.clamp(0, (1 << _DEPTH_BITS) - 2).long()
        key = (head.index_select(0, face) | face).index_select(0, row) | (depth << _FACE_BITS)
        index = (box.index_select(0, face) + y.long() * width).index_select(0, row) + x.long()
        zbuf.scatter_reduce_(0, index, key, reduce="amin")


class MeshOverlay:
    """Draws meshes, keypoints, boxes and the HUD onto BGR frames (numpy, in place)."""

    def __init__(self, faces: np.ndarray, device="cpu", color=MESH_COLOR, rasterizer: str = "auto"):
        self.faces = np.asarray(faces, dtype=np.int64)
        self.color = color
        device = torch.device(device)
        if rasterizer not in ("auto", "opencv", "torch"):
            raise ValueError(f"rasterizer must be auto, opencv or torch, got {rasterizer!r}")
        use_torch = rasterizer in ("torch", "auto")
        self.torch = TorchRasterizer(self.faces, device) if use_torch else None
        self.device = device

    @property
    def name(self) -> str:
        return f"torch ({self.device.type})" if self.torch is not None else "opencv"

    def mesh(self, frame: np.ndarray, vertices_px: np.ndarray, color=None) -> np.ndarray:
        return self.meshes(frame, np.asarray(vertices_px)[None], [self.color if color is None else color])

    def meshes(self, frame: np.ndarray, vertices_px: np.ndarray, colors) -> np.ndarray:
        """Meshes (P, V, 3) in pixels, listed far to near (a nearer one covers a farther one),
        one BGR colour each."""
        if self.torch is None:
            for v, color in zip(vertices_px, colors):
                render_mesh(frame, v, self.faces, color)
            return frame
        vertices = torch.from_numpy(np.ascontiguousarray(vertices_px, dtype=np.float32))
        image = torch.from_numpy(frame)  # on the CPU the drawing goes straight into the frame
        if self.device.type == "cpu":
            self.torch.draw(image, vertices, colors)
        else:
            frame[...] = self.torch.draw(image.to(self.device), vertices, colors).cpu().numpy()
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
