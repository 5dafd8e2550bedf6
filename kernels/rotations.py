"""Rotations: axis-angle -> matrix (Rodrigues) and SPIN's 6D -> matrix, forward and backward.

The @triton.jit helpers `rodrigues` / `rodrigues_backward` work on tensors of any shape (one
element per rotation); the kinematic-chain kernel inlines them, fused with the pose features.
The kernels here run them over a flat list of rotations, registered as the torch ops
`hmr_fast::rodrigues` and `hmr_fast::rot6d_to_rotmat` with their backward ops.

Rodrigues, with v the axis-angle vector, s = |v|^2, t = sqrt(s) and K = [v]_x:
    R = I + a K + b K^2,   a = sin(t)/t,   b = (1 - cos t)/s = 2 sin^2(t/2)/s,
and K^2 = v v^T - s I. Its gradient, for G = dL/dR and w = (G21-G12, G02-G20, G10-G01):
    dL/dv = a w + b (G v + G^T v - 2 tr(G) v) + 2 v (a' <G, K> + b' <G, K^2>),
    <G, K> = v . w,   <G, K^2> = v^T G v - s tr(G),   a' = da/ds = (cos t - a)/(2 s),
    b' = db/ds = (a/2 - b)/s.
For s < 0.05 a, b, a', b' come from their Taylor series (error < 1e-12): the closed forms
cancel there, and are 0/0 at s = 0. Nothing divides by sin(t), so t near pi is ordinary.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, empty

_SMALL_S = 0.05
BLOCK_ROWS = 128


@triton.jit
def _rodrigues_scalars(s, WITH_DERIVATIVES: tl.constexpr):
    """a = sin t / t, b = (1 - cos t)/t^2 and (optionally) their derivatives in s = t^2."""
    small = s < 0.05
    safe = tl.where(small, 1.0, s)
    t = tl.sqrt(safe)
    sin_t = tl.sin(t)
    sin_half = tl.sin(0.5 * t)
    a = tl.where(small, 1.0 - s / 6.0 * (1.0 - s / 20.0 * (1.0 - s / 42.0 * (1.0 - s / 72.0))), sin_t / t)
    b = tl.where(small, 0.5 * (1.0 - s / 12.0 * (1.0 - s / 30.0 * (1.0 - s / 56.0 * (1.0 - s / 90.0)))),
                 2.0 * sin_half * sin_half / safe)
    if WITH_DERIVATIVES:
        cos_t = tl.cos(t)
        da = tl.where(small, -1.0 / 6.0 + s * (1.0 / 60.0 - s * (1.0 / 1680.0 - s / 90720.0)),
                      (cos_t - a) / (2.0 * safe))
        db = tl.where(small, -1.0 / 24.0 + s * (1.0 / 360.0 - s * (1.0 / 13440.0 - s / 907200.0)),
                      (0.5 * a - b) / safe)
    else:
        da = a
        db = b
    return a, b, da, db


@triton.jit
def rodrigues(x, y, z):
    """Axis-angle components (any shape) -> the 9 entries of R, row-major."""
    s = x * x + y * y + z * z
    a, b, _da, _db = _rodrigues_scalars(s, False)
    c = 1.0 - b * s  # cos(t), without its cancellation near 0
    r00 = c + b * x * x
    r01 = -a * z + b * x * y
    r02 = a * y + b * x * z
    r10 = a * z + b * y * x
    r11 = c + b * y * y
    r12 = -a * x + b * y * z
    r20 = -a * y + b * z * x
    r21 = a * x + b * z * y
    r22 = c + b * z * z
    return r00, r01, r02, r10, r11, r12, r20, r21, r22


@triton.jit
def rodrigues_backward(x, y, z, g00, g01, g02, g10, g11, g12, g20, g21, g22):
    """dL/d(axis-angle) from dL/dR (9 entries, row-major); see the module docstring."""
    s = x * x + y * y + z * z
    a, b, da, db = _rodrigues_scalars(s, True)
    wx = g21 - g12
    wy = g02 - g20
    wz = g10 - g01
    tr = g00 + g11 + g22
    gvx = g00 * x + g01 * y + g02 * z  # G v
    gvy = g10 * x + g11 * y + g12 * z
    gvz = g20 * x + g21 * y + g22 * z
    gtx = g00 * x + g10 * y + g20 * z  # G^T v
    gty = g01 * x + g11 * y + g21 * z
    gtz = g02 * x + g12 * y + g22 * z
    g_k = x * wx + y * wy + z * wz
    g_k2 = x * gvx + y * gvy + z * gvz - s * tr
    common = 2.0 * (da * g_k + db * g_k2) - 2.0 * b * tr
    gx = a * wx + b * (gvx + gtx) + common * x
    gy = a * wy + b * (gvy + gty) + common * y
    gz = a * wz + b * (gvz + gtz) + common * z
    return gx, gy, gz


@triton.jit
def _normalize3(x, y, z):
    n = tl.sqrt(x * x + y * y + z * z)
    return x / n, y / n, z / n, n


@triton.jit
def rot6d(a1x, a2x, a1y, a2y, a1z, a2z):
    """SPIN's 6D (the first two columns, interleaved) -> R by Gram-Schmidt, row-major."""
    b1x, b1y, b1z, _n1 = _normalize3(a1x, a1y, a1z)
    d = b1x * a2x + b1y * a2y + b1z * a2z
    b2x, b2y, b2z, _n2 = _normalize3(a2x - d * b1x, a2y - d * b1y, a2z - d * b1z)
    b3x = b1y * b2z - b1z * b2y
    b3y = b1z * b2x - b1x * b2z
    b3z = b1x * b2y - b1y * b2x
    return b1x, b2x, b3x, b1y, b2y, b3y, b1z, b2z, b3z


@triton.jit
def rot6d_backward(a1x, a2x, a1y, a2y, a1z, a2z, g00, g01, g02, g10, g11, g12, g20, g21, g22):
    """dL/d(6D) from dL/dR: back through the cross product, the two normalisations and the projection."""
    b1x, b1y, b1z, n1 = _normalize3(a1x, a1y, a1z)
    d = b1x * a2x + b1y * a2y + b1z * a2z
    b2x, b2y, b2z, n2 = _normalize3(a2x - d * b1x, a2y - d * b1y, a2z - d * b1z)
    # columns of G: gb1 = G[:, 0], gb2 = G[:, 1], gb3 = G[:, 2]; b3 = b1 x b2
    gb1x = g00 + (b2y * g22 - b2z * g12)  # + b2 x gb3
    gb1y = g10 + (b2z * g02 - b2x * g22)
    gb1z = g20 + (b2x * g12 - b2y * g02)
    gb2x = g01 + (g12 * b1z - g22 * b1y)  # + gb3 x b1
    gb2y = g11 + (g22 * b1x - g02 * b1z)
    gb2z = g21 + (g02 * b1y - g12 * b1x)
    # b2 = u / |u|
    p2 = gb2x * b2x + gb2y * b2y + gb2z * b2z
    gux = (gb2x - p2 * b2x) / n2
    guy = (gb2y - p2 * b2y) / n2
    guz = (gb2z - p2 * b2z) / n2
    # u = a2 - d b1, d = b1 . a2
    ub = gux * b1x + guy * b1y + guz * b1z
    ga2x = gux - ub * b1x
    ga2y = guy - ub * b1y
    ga2z = guz - ub * b1z
    gb1x = gb1x - d * gux - ub * a2x
    gb1y = gb1y - d * guy - ub * a2y
    gb1z = gb1z - d * guz - ub * a2z
    # b1 = a1 / |a1|
    p1 = gb1x * b1x + gb1y * b1y + gb1z * b1z
    ga1x = (gb1x - p1 * b1x) / n1
    ga1y = (gb1y - p1 * b1y) / n1
    ga1z = (gb1z - p1 * b1z) / n1
    return ga1x, ga2x, ga1y, ga2y, ga1z, ga2z


# ----------------------------------------------------------------------------- 3x3 in memory
@triton.jit
def store3x3(p, m00, m01, m02, m10, m11, m12, m20, m21, m22, mask):
    """A 3x3 matrix into the nine consecutive numbers at p (row-major), per lane."""
    tl.store(p + 0, m00, mask=mask)
    tl.store(p + 1, m01, mask=mask)
    tl.store(p + 2, m02, mask=mask)
    tl.store(p + 3, m10, mask=mask)
    tl.store(p + 4, m11, mask=mask)
    tl.store(p + 5, m12, mask=mask)
    tl.store(p + 6, m20, mask=mask)
    tl.store(p + 7, m21, mask=mask)
    tl.store(p + 8, m22, mask=mask)


@triton.jit
def load3x3(p, mask):
    """The row-major 3x3 at p, per lane (zeros where masked off)."""
    return (tl.load(p + 0, mask=mask, other=0.0), tl.load(p + 1, mask=mask, other=0.0),
            tl.load(p + 2, mask=mask, other=0.0), tl.load(p + 3, mask=mask, other=0.0),
            tl.load(p + 4, mask=mask, other=0.0), tl.load(p + 5, mask=mask, other=0.0),
            tl.load(p + 6, mask=mask, other=0.0), tl.load(p + 7, mask=mask, other=0.0),
            tl.load(p + 8, mask=mask, other=0.0))


# ----------------------------------------------------------------------------- kernels
@triton.jit
def rodrigues_fwd_kernel(aa_ptr, rot_ptr, N, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    x = tl.load(aa_ptr + rows * 3 + 0, mask=m, other=0.0)
    y = tl.load(aa_ptr + rows * 3 + 1, mask=m, other=0.0)
    z = tl.load(aa_ptr + rows * 3 + 2, mask=m, other=0.0)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = rodrigues(x, y, z)
    store3x3(rot_ptr + rows * 9, r00, r01, r02, r10, r11, r12, r20, r21, r22, m)


@triton.jit
def rodrigues_bwd_kernel(aa_ptr, grot_ptr, gaa_ptr, N, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    x = tl.load(aa_ptr + rows * 3 + 0, mask=m, other=0.0)
    y = tl.load(aa_ptr + rows * 3 + 1, mask=m, other=0.0)
    z = tl.load(aa_ptr + rows * 3 + 2, mask=m, other=0.0)
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = load3x3(grot_ptr + rows * 9, m)
    gx, gy, gz = rodrigues_backward(x, y, z, g00, g01, g02, g10, g11, g12, g20, g21, g22)
    tl.store(gaa_ptr + rows * 3 + 0, gx, mask=m)
    tl.store(gaa_ptr + rows * 3 + 1, gy, mask=m)
    tl.store(gaa_ptr + rows * 3 + 2, gz, mask=m)


@triton.jit
def rot6d_fwd_kernel(x_ptr, rot_ptr, N, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    src = x_ptr + rows * 6
    # masked-off rows read a valid, non-degenerate 6D (the identity) so nothing divides by 0
    r = rot6d(tl.load(src + 0, mask=m, other=1.0), tl.load(src + 1, mask=m, other=0.0),
              tl.load(src + 2, mask=m, other=0.0), tl.load(src + 3, mask=m, other=1.0),
              tl.load(src + 4, mask=m, other=0.0), tl.load(src + 5, mask=m, other=0.0))
    store3x3(rot_ptr + rows * 9, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], m)


@triton.jit
def rot6d_bwd_kernel(x_ptr, grot_ptr, gx_ptr, N, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    src = x_ptr + rows * 6
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = load3x3(grot_ptr + rows * 9, m)
    r = rot6d_backward(
        tl.load(src + 0, mask=m, other=1.0), tl.load(src + 1, mask=m, other=0.0),
        tl.load(src + 2, mask=m, other=0.0), tl.load(src + 3, mask=m, other=1.0),
        tl.load(src + 4, mask=m, other=0.0), tl.load(src + 5, mask=m, other=0.0),
        g00, g01, g02, g10, g11, g12, g20, g21, g22)
    out = gx_ptr + rows * 6
    tl.store(out + 0, r[0], mask=m)
    tl.store(out + 1, r[1], mask=m)
    tl.store(out + 2, r[2], mask=m)
    tl.store(out + 3, r[3], mask=m)
    tl.store(out + 4, r[4], mask=m)
    tl.store(out + 5, r[5], mask=m)


# ----------------------------------------------------------------------------- launchers, torch ops
def _rows(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[-1] != width:
        raise ValueError(f"expected (..., {width}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    return x.contiguous()


def _rotation_op(name: str, arg: str, width: int, fwd_kernel, bwd_kernel):
    """Register hmr_fast::<name>, (..., width) -> (..., 3, 3) rotation matrices, its backward op
    hmr_fast::<name>_backward (input, dL/dR) -> dL/dinput, their fake implementations and autograd.
    `arg` names the input in the ops' schemas."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = _rows(x, width)
        n = x.numel() // width
        out = empty((*x.shape[:-1], 3, 3), x)
        if n:
            fwd_kernel[(cdiv(n, BLOCK_ROWS),)](x, out, n, BLOCK=BLOCK_ROWS)
        return out

    def backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        x = _rows(x, width)
        g = grad.contiguous()
        n = x.numel() // width
        out = empty(x.shape, x)
        if n:
            bwd_kernel[(cdiv(n, BLOCK_ROWS),)](x, g, out, n, BLOCK=BLOCK_ROWS)
        return out

    op = torch.library.custom_op(f"hmr_fast::{name}", forward, mutates_args=(), schema=f"(Tensor {arg}) -> Tensor")
    backward_op = torch.library.custom_op(f"hmr_fast::{name}_backward", backward, mutates_args=(),
                                          schema=f"(Tensor {arg}, Tensor grad) -> Tensor")
    op.register_fake(lambda x: x.new_empty((*x.shape[:-1], 3, 3)))
    backward_op.register_fake(lambda x, grad: torch.empty_like(x))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def grad(ctx, g_rot):
        (x,) = ctx.saved_tensors
        return backward_op(x, g_rot)

    op.register_autograd(grad, setup_context=setup_context)
    return op


rodrigues_op = _rotation_op("rodrigues", "axis_angle", 3, rodrigues_fwd_kernel, rodrigues_bwd_kernel)
rot6d_op = _rotation_op("rot6d_to_rotmat", "x", 6, rot6d_fwd_kernel, rot6d_bwd_kernel)
