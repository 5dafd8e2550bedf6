"""The per-sample pose math in one launch: Rodrigues, pose features, rest joints, kinematic chain.

One program owns BLOCK_B samples and all of their joints, held as (BLOCK_B, JP) tiles (JP, a
power of two >= 24, lanes for the joints). It
1. turns the axis-angle pose into local rotations R_j (Rodrigues, inlined) or reads the given
   rotation matrices,
2. writes the blend coefficients [betas, R_j - I for j >= 1, 0-padding] the blend-skin GEMM
   reads (the pose features, fused here),
3. computes the rest joints J = J_template + betas @ J_shapedirs (joints are linear in betas),
4. walks the kinematic tree level by level: at level d every joint of depth d takes its
   parent's global transform with `tl.gather` along the joint axis,
       G_j = G_p R_j,   t_j = t_p + G_p (J_j - J_p),
5. writes the posed joints t_j and the 3x4 skinning transforms A_j = [G_j | t_j - G_j J_j].

The backward kernel recomputes all of that (it is cheap) and runs the chain in reverse level
order; the children's contributions reach their parent through `tl.gather` over a (JP, MAXC)
children table, so nothing is scattered or atomic. It ends in Rodrigues' backward and the
betas gradient through J_shapedirs, all in the same program.
Registered as `hmr_fast::pose_chain` / `hmr_fast::pose_chain_backward`.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import cdiv, empty, interpreting, lane_width, next_pow2
from .reference import kinematic_tree
from .rotations import load3x3, rodrigues, rodrigues_backward, store3x3

BLOCK_B = 4  # samples per program: one warp per sample, its 32 lanes the joints (gathers are shuffles)
INTERPRETER_BLOCK_B = 64  # under the interpreter a program costs the same whatever its size
NUM_WARPS = 4


def block_b() -> int:
    return INTERPRETER_BLOCK_B if interpreting() else BLOCK_B


# ----------------------------------------------------------------------------- 3x3 helpers
# A 3x3 matrix per (sample, joint) travels as nine (BLOCK_B, JP) tiles m00..m22, row-major; a
# vector as three. Every sum below runs over k = 0, 1, 2 left to right, the order the chain
# was first written in, so factoring them out left the results bit-identical.
# (Under the interpreter every call re-patches triton.language, a fraction of a millisecond of
# Python; the backward's children loop, the innermost, stays written out for that reason.)
@triton.jit
def _gather3(x, y, z, idx):
    """The vector of the lane (joint) that idx names for each lane: a parent's, a child's."""
    return tl.gather(x, idx, axis=1), tl.gather(y, idx, axis=1), tl.gather(z, idx, axis=1)


@triton.jit
def _gather3x3(m00, m01, m02, m10, m11, m12, m20, m21, m22, idx):
    """The matrix of the lane (joint) that idx names for each lane."""
    return (tl.gather(m00, idx, axis=1), tl.gather(m01, idx, axis=1), tl.gather(m02, idx, axis=1),
            tl.gather(m10, idx, axis=1), tl.gather(m11, idx, axis=1), tl.gather(m12, idx, axis=1),
            tl.gather(m20, idx, axis=1), tl.gather(m21, idx, axis=1), tl.gather(m22, idx, axis=1))


@triton.jit
def _matmul3x3(a00, a01, a02, a10, a11, a12, a20, a21, a22, b00, b01, b02, b10, b11, b12, b20, b21, b22):
    """A B."""
    return (a00 * b00 + a01 * b10 + a02 * b20, a00 * b01 + a01 * b11 + a02 * b21, a00 * b02 + a01 * b12 + a02 * b22,
            a10 * b00 + a11 * b10 + a12 * b20, a10 * b01 + a11 * b11 + a12 * b21, a10 * b02 + a11 * b12 + a12 * b22,
            a20 * b00 + a21 * b10 + a22 * b20, a20 * b01 + a21 * b11 + a22 * b21, a20 * b02 + a21 * b12 + a22 * b22)


@triton.jit
def _matmul3x3_tn(a00, a01, a02, a10, a11, a12, a20, a21, a22, b00, b01, b02, b10, b11, b12, b20, b21, b22):
    """A^T B."""
    return (a00 * b00 + a10 * b10 + a20 * b20, a00 * b01 + a10 * b11 + a20 * b21, a00 * b02 + a10 * b12 + a20 * b22,
            a01 * b00 + a11 * b10 + a21 * b20, a01 * b01 + a11 * b11 + a21 * b21, a01 * b02 + a11 * b12 + a21 * b22,
            a02 * b00 + a12 * b10 + a22 * b20, a02 * b01 + a12 * b11 + a22 * b21, a02 * b02 + a12 * b12 + a22 * b22)


@triton.jit
def _matmul3x3_nt(a00, a01, a02, a10, a11, a12, a20, a21, a22, b00, b01, b02, b10, b11, b12, b20, b21, b22):
    """A B^T."""
    return (a00 * b00 + a01 * b01 + a02 * b02, a00 * b10 + a01 * b11 + a02 * b12, a00 * b20 + a01 * b21 + a02 * b22,
            a10 * b00 + a11 * b01 + a12 * b02, a10 * b10 + a11 * b11 + a12 * b12, a10 * b20 + a11 * b21 + a12 * b22,
            a20 * b00 + a21 * b01 + a22 * b02, a20 * b10 + a21 * b11 + a22 * b12, a20 * b20 + a21 * b21 + a22 * b22)


@triton.jit
def _matvec3x3(a00, a01, a02, a10, a11, a12, a20, a21, a22, x, y, z):
    """A v."""
    return a00 * x + a01 * y + a02 * z, a10 * x + a11 * y + a12 * z, a20 * x + a21 * y + a22 * z


@triton.jit
def _matvec3x3_t(a00, a01, a02, a10, a11, a12, a20, a21, a22, x, y, z):
    """A^T v."""
    return a00 * x + a10 * y + a20 * z, a01 * x + a11 * y + a21 * z, a02 * x + a12 * y + a22 * z


@triton.jit
def _affine3x4(a00, a01, a02, a10, a11, a12, a20, a21, a22, tx, ty, tz, x, y, z):
    """t + A v, with the products added onto t one at a time (not t + (A v): the rounding differs)."""
    return (tx + a00 * x + a01 * y + a02 * z, ty + a10 * x + a11 * y + a12 * z,
            tz + a20 * x + a21 * y + a22 * z)


@triton.jit
def _add_outer3(m00, m01, m02, m10, m11, m12, m20, m21, m22, u0, u1, u2, v0, v1, v2):
    """M + u v^T."""
    return (m00 + u0 * v0, m01 + u0 * v1, m02 + u0 * v2,
            m10 + u1 * v0, m11 + u1 * v1, m12 + u1 * v2,
            m20 + u2 * v0, m21 + u2 * v1, m22 + u2 * v2)


@triton.jit
def _select3(cond, x, y, z, ox, oy, oz):
    """v where cond holds, the other vector elsewhere."""
    return tl.where(cond, x, ox), tl.where(cond, y, oy), tl.where(cond, z, oz)


@triton.jit
def _select3x3(cond, a00, a01, a02, a10, a11, a12, a20, a21, a22, b00, b01, b02, b10, b11, b12, b20, b21, b22):
    """A where cond holds, B elsewhere."""
    return (tl.where(cond, a00, b00), tl.where(cond, a01, b01), tl.where(cond, a02, b02),
            tl.where(cond, a10, b10), tl.where(cond, a11, b11), tl.where(cond, a12, b12),
            tl.where(cond, a20, b20), tl.where(cond, a21, b21), tl.where(cond, a22, b22))


@triton.jit
def _masked3(cond, x, y, z):
    """v where cond holds, zero elsewhere."""
    return tl.where(cond, x, 0.0), tl.where(cond, y, 0.0), tl.where(cond, z, 0.0)


@triton.jit
def _masked3x3(cond, m00, m01, m02, m10, m11, m12, m20, m21, m22):
    """M where cond holds, zero elsewhere."""
    return (tl.where(cond, m00, 0.0), tl.where(cond, m01, 0.0), tl.where(cond, m02, 0.0),
            tl.where(cond, m10, 0.0), tl.where(cond, m11, 0.0), tl.where(cond, m12, 0.0),
            tl.where(cond, m20, 0.0), tl.where(cond, m21, 0.0), tl.where(cond, m22, 0.0))


@triton.jit
def _add_loaded3x3(m00, m01, m02, m10, m11, m12, m20, m21, m22, p, mask):
    """M plus the row-major 3x3 at p (nothing where masked off)."""
    l00, l01, l02, l10, l11, l12, l20, l21, l22 = load3x3(p, mask)
    return (m00 + l00, m01 + l01, m02 + l02, m10 + l10, m11 + l11, m12 + l12, m20 + l20, m21 + l21, m22 + l22)



@triton.jit
def _load_pose(pose_ptr, rb, rj, m2, NJ: tl.constexpr, POSE2ROT: tl.constexpr):
    """Local rotations (9 tiles) and, for axis-angle input, the axis-angle (3 tiles)."""
    if POSE2ROT:
        p = pose_ptr + rb[:, None] * (NJ * 3) + rj[None, :] * 3
        x = tl.load(p + 0, mask=m2, other=0.0)
        y = tl.load(p + 1, mask=m2, other=0.0)
        z = tl.load(p + 2, mask=m2, other=0.0)
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = rodrigues(x, y, z)
    else:
        p = pose_ptr + rb[:, None] * (NJ * 9) + rj[None, :] * 9
        r00 = tl.load(p + 0, mask=m2, other=1.0)
        r01 = tl.load(p + 1, mask=m2, other=0.0)
        r02 = tl.load(p + 2, mask=m2, other=0.0)
        r10 = tl.load(p + 3, mask=m2, other=0.0)
        r11 = tl.load(p + 4, mask=m2, other=1.0)
        r12 = tl.load(p + 5, mask=m2, other=0.0)
        r20 = tl.load(p + 6, mask=m2, other=0.0)
        r21 = tl.load(p + 7, mask=m2, other=0.0)
        r22 = tl.load(p + 8, mask=m2, other=1.0)
        x = r00
        y = r00
        z = r00
    return x, y, z, r00, r01, r02, r10, r11, r12, r20, r21, r22


@triton.jit
def _rest_joints(betas_ptr, jt_ptr, jsd_ptr, rb, mb, rj, mj, NB, NJ: tl.constexpr, BLOCK_B: tl.constexpr,
                 JP: tl.constexpr):
    """J = J_template + betas @ J_shapedirs, as three (BLOCK_B, JP) tiles."""
    jx = tl.broadcast_to(tl.load(jt_ptr + rj * 3 + 0, mask=mj, other=0.0)[None, :], (BLOCK_B, JP))
    jy = tl.broadcast_to(tl.load(jt_ptr + rj * 3 + 1, mask=mj, other=0.0)[None, :], (BLOCK_B, JP))
    jz = tl.broadcast_to(tl.load(jt_ptr + rj * 3 + 2, mask=mj, other=0.0)[None, :], (BLOCK_B, JP))
    for n in range(NB):
        beta = tl.load(betas_ptr + rb * NB + n, mask=mb, other=0.0)[:, None]
        row = jsd_ptr + n * (NJ * 3) + rj * 3
        jx = jx + beta * tl.load(row + 0, mask=mj, other=0.0)[None, :]
        jy = jy + beta * tl.load(row + 1, mask=mj, other=0.0)[None, :]
        jz = jz + beta * tl.load(row + 2, mask=mj, other=0.0)[None, :]
    return jx, jy, jz


@triton.jit
def _tree(parent_ptr, depth_ptr, rj, mj, jx, jy, jz, BLOCK_B: tl.constexpr, JP: tl.constexpr):
    """Each joint's depth, its parent as a gather index along the joint axis, and its bone J_j - J_p."""
    parent = tl.load(parent_ptr + rj, mask=mj, other=0)
    depth = tl.load(depth_ptr + rj, mask=mj, other=-1)
    pidx = tl.broadcast_to(parent[None, :], (BLOCK_B, JP))
    px, py, pz = _gather3(jx, jy, jz, pidx)
    return depth, pidx, jx - px, jy - py, jz - pz


@triton.jit
def _forward_chain(r00, r01, r02, r10, r11, r12, r20, r21, r22, jx, jy, jz, pidx, depth,
                   bx, by, bz, NUM_LEVELS: tl.constexpr):
    """Global rotations G (9 tiles) and translations t (3 tiles), level by level."""
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = r00, r01, r02, r10, r11, r12, r20, r21, r22
    tx, ty, tz = jx, jy, jz
    for d in range(1, NUM_LEVELS):
        sel = (depth == d)[None, :]
        p00, p01, p02, p10, p11, p12, p20, p21, p22 = _gather3x3(g00, g01, g02, g10, g11, g12, g20, g21, g22, pidx)
        ptx, pty, ptz = _gather3(tx, ty, tz, pidx)
        # every lane computes; only the level-d joints keep it (their parents are final by now)
        ntx, nty, ntz = _affine3x4(p00, p01, p02, p10, p11, p12, p20, p21, p22, ptx, pty, ptz, bx, by, bz)
        n00, n01, n02, n10, n11, n12, n20, n21, n22 = _matmul3x3(
            p00, p01, p02, p10, p11, p12, p20, p21, p22, r00, r01, r02, r10, r11, r12, r20, r21, r22)
        tx, ty, tz = _select3(sel, ntx, nty, ntz, tx, ty, tz)
        g00, g01, g02, g10, g11, g12, g20, g21, g22 = _select3x3(
            sel, n00, n01, n02, n10, n11, n12, n20, n21, n22, g00, g01, g02, g10, g11, g12, g20, g21, g22)
    return g00, g01, g02, g10, g11, g12, g20, g21, g22, tx, ty, tz


@triton.jit
def pose_chain_fwd_kernel(
    pose_ptr, betas_ptr, jt_ptr, jsd_ptr, parent_ptr, depth_ptr,
    rot_ptr, coeffs_ptr, joints_ptr, transforms_ptr,
    B, NB, C_PAD,
    POSE2ROT: tl.constexpr, NJ: tl.constexpr, JP: tl.constexpr, NUM_LEVELS: tl.constexpr,
    NBP: tl.constexpr, PAD_W: tl.constexpr, BLOCK_B: tl.constexpr,
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = tl.arange(0, JP)
    mb = rb < B
    mj = rj < NJ
    m2 = mb[:, None] & mj[None, :]

    _x, _y, _z, r00, r01, r02, r10, r11, r12, r20, r21, r22 = _load_pose(pose_ptr, rb, rj, m2, NJ, POSE2ROT)
    store3x3(rot_ptr + rb[:, None] * (NJ * 9) + rj[None, :] * 9, r00, r01, r02, r10, r11, r12, r20, r21, r22, m2)

    # blend coefficients: [betas | R_j - I for j = 1..NJ-1 | zeros up to C_PAD]
    rn = tl.arange(0, NBP)
    mbn = mb[:, None] & (rn < NB)[None, :]
    betas = tl.load(betas_ptr + rb[:, None] * NB + rn[None, :], mask=mbn, other=0.0)
    tl.store(coeffs_ptr + rb[:, None] * C_PAD + rn[None, :], betas, mask=mbn)
    mf = mb[:, None] & ((rj >= 1) & mj)[None, :]
    store3x3(coeffs_ptr + rb[:, None] * C_PAD + NB + (rj[None, :] - 1) * 9,
              r00 - 1.0, r01, r02, r10, r11 - 1.0, r12, r20, r21, r22 - 1.0, mf)
    rp = NB + 9 * (NJ - 1) + tl.arange(0, PAD_W)
    mp = mb[:, None] & (rp < C_PAD)[None, :]
    tl.store(coeffs_ptr + rb[:, None] * C_PAD + rp[None, :], tl.zeros((BLOCK_B, PAD_W), dtype=r00.dtype), mask=mp)

    jx, jy, jz = _rest_joints(betas_ptr, jt_ptr, jsd_ptr, rb, mb, rj, mj, NB, NJ, BLOCK_B, JP)
    depth, pidx, bx, by, bz = _tree(parent_ptr, depth_ptr, rj, mj, jx, jy, jz, BLOCK_B, JP)
    g00, g01, g02, g10, g11, g12, g20, g21, g22, tx, ty, tz = _forward_chain(
        r00, r01, r02, r10, r11, r12, r20, r21, r22, jx, jy, jz, pidx, depth, bx, by, bz, NUM_LEVELS)

    out = joints_ptr + rb[:, None] * (NJ * 3) + rj[None, :] * 3
    tl.store(out + 0, tx, mask=m2)
    tl.store(out + 1, ty, mask=m2)
    tl.store(out + 2, tz, mask=m2)
    # A_j = [G_j | t_j - G_j J_j]: the rest pose's joint moves to t_j
    ox, oy, oz = _matvec3x3(g00, g01, g02, g10, g11, g12, g20, g21, g22, jx, jy, jz)
    a = transforms_ptr + rb[:, None] * (NJ * 12) + rj[None, :] * 12
    tl.store(a + 0, g00, mask=m2)
    tl.store(a + 1, g01, mask=m2)
    tl.store(a + 2, g02, mask=m2)
    tl.store(a + 3, tx - ox, mask=m2)
    tl.store(a + 4, g10, mask=m2)
    tl.store(a + 5, g11, mask=m2)
    tl.store(a + 6, g12, mask=m2)
    tl.store(a + 7, ty - oy, mask=m2)
    tl.store(a + 8, g20, mask=m2)
    tl.store(a + 9, g21, mask=m2)
    tl.store(a + 10, g22, mask=m2)
    tl.store(a + 11, tz - oz, mask=m2)


@triton.jit
def pose_chain_bwd_kernel(
    pose_ptr, betas_ptr, jt_ptr, jsd_ptr, parent_ptr, depth_ptr, children_ptr,
    g_rot_ptr, g_coeffs_ptr, g_joints_ptr, g_transforms_ptr,
    g_pose_ptr, g_betas_ptr,
    B, NB, C_PAD,
    POSE2ROT: tl.constexpr, NJ: tl.constexpr, JP: tl.constexpr, NUM_LEVELS: tl.constexpr,
    MAXC: tl.constexpr, BLOCK_B: tl.constexpr,
    HAS_G_ROT: tl.constexpr, HAS_G_COEFFS: tl.constexpr, HAS_G_JOINTS: tl.constexpr, HAS_G_TRANSFORMS: tl.constexpr,
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = tl.arange(0, JP)
    mb = rb < B
    mj = rj < NJ
    m2 = mb[:, None] & mj[None, :]

    # recompute the forward
    x, y, z, r00, r01, r02, r10, r11, r12, r20, r21, r22 = _load_pose(pose_ptr, rb, rj, m2, NJ, POSE2ROT)
    jx, jy, jz = _rest_joints(betas_ptr, jt_ptr, jsd_ptr, rb, mb, rj, mj, NB, NJ, BLOCK_B, JP)
    depth, pidx, bx, by, bz = _tree(parent_ptr, depth_ptr, rj, mj, jx, jy, jz, BLOCK_B, JP)
    g00, g01, g02, g10, g11, g12, g20, g21, g22, _tx, _ty, _tz = _forward_chain(
        r00, r01, r02, r10, r11, r12, r20, r21, r22, jx, jy, jz, pidx, depth, bx, by, bz, NUM_LEVELS)
    # parents' global rotations
    p00, p01, p02, p10, p11, p12, p20, p21, p22 = _gather3x3(g00, g01, g02, g10, g11, g12, g20, g21, g22, pidx)

    zero = tl.zeros((BLOCK_B, JP), dtype=r00.dtype)
    # gradients reaching G_j, t_j and J_j from the transforms A_j = [G_j | t_j - G_j J_j]
    if HAS_G_TRANSFORMS:
        ga = g_transforms_ptr + rb[:, None] * (NJ * 12) + rj[None, :] * 12
        o0 = tl.load(ga + 3, mask=m2, other=0.0)
        o1 = tl.load(ga + 7, mask=m2, other=0.0)
        o2 = tl.load(ga + 11, mask=m2, other=0.0)
        q00 = tl.load(ga + 0, mask=m2, other=0.0) - o0 * jx
        q01 = tl.load(ga + 1, mask=m2, other=0.0) - o0 * jy
        q02 = tl.load(ga + 2, mask=m2, other=0.0) - o0 * jz
        q10 = tl.load(ga + 4, mask=m2, other=0.0) - o1 * jx
        q11 = tl.load(ga + 5, mask=m2, other=0.0) - o1 * jy
        q12 = tl.load(ga + 6, mask=m2, other=0.0) - o1 * jz
        q20 = tl.load(ga + 8, mask=m2, other=0.0) - o2 * jx
        q21 = tl.load(ga + 9, mask=m2, other=0.0) - o2 * jy
        q22 = tl.load(ga + 10, mask=m2, other=0.0) - o2 * jz
        gjx, gjy, gjz = _matvec3x3_t(g00, g01, g02, g10, g11, g12, g20, g21, g22, o0, o1, o2)
        gjx, gjy, gjz = -gjx, -gjy, -gjz
    else:
        o0, o1, o2 = zero, zero, zero
        q00, q01, q02, q10, q11, q12, q20, q21, q22 = zero, zero, zero, zero, zero, zero, zero, zero, zero
        gjx, gjy, gjz = zero, zero, zero
    if HAS_G_JOINTS:
        gj = g_joints_ptr + rb[:, None] * (NJ * 3) + rj[None, :] * 3
        u0 = o0 + tl.load(gj + 0, mask=m2, other=0.0)
        u1 = o1 + tl.load(gj + 1, mask=m2, other=0.0)
        u2 = o2 + tl.load(gj + 2, mask=m2, other=0.0)
    else:
        u0, u1, u2 = o0, o1, o2
    s00, s01, s02, s10, s11, s12, s20, s21, s22 = zero, zero, zero, zero, zero, zero, zero, zero, zero

    # the chain in reverse level order: q = dL/dG, u = dL/dt, s = dL/dR (local)
    for i in range(NUM_LEVELS - 1):
        sel = (depth == (NUM_LEVELS - 1 - i))[None, :]
        # G_j = G_p R_j: dL/dR_j = G_p^T dL/dG_j
        n00, n01, n02, n10, n11, n12, n20, n21, n22 = _matmul3x3_tn(
            p00, p01, p02, p10, p11, p12, p20, p21, p22, q00, q01, q02, q10, q11, q12, q20, q21, q22)
        s00, s01, s02, s10, s11, s12, s20, s21, s22 = _select3x3(
            sel, n00, n01, n02, n10, n11, n12, n20, n21, n22, s00, s01, s02, s10, s11, s12, s20, s21, s22)
        # what the level-d joints send their parents: dL/dG_p += q R^T + u bone^T, dL/dt_p += u
        c00, c01, c02, c10, c11, c12, c20, c21, c22 = _matmul3x3_nt(
            q00, q01, q02, q10, q11, q12, q20, q21, q22, r00, r01, r02, r10, r11, r12, r20, r21, r22)
        c00, c01, c02, c10, c11, c12, c20, c21, c22 = _add_outer3(
            c00, c01, c02, c10, c11, c12, c20, c21, c22, u0, u1, u2, bx, by, bz)
        c00, c01, c02, c10, c11, c12, c20, c21, c22 = _masked3x3(sel, c00, c01, c02, c10, c11, c12, c20, c21, c22)
        cu0, cu1, cu2 = _masked3(sel, u0, u1, u2)
        # bone_j = J_j - J_p: dL/dJ_j += G_p^T u, dL/dJ_p -= G_p^T u
        w0, w1, w2 = _matvec3x3_t(p00, p01, p02, p10, p11, p12, p20, p21, p22, u0, u1, u2)
        w0, w1, w2 = _masked3(sel, w0, w1, w2)
        gjx += w0
        gjy += w1
        gjz += w2
        for s in range(MAXC):  # each joint's child in slot s sends it c (innermost loop: see the 3x3 helpers)
            child = tl.load(children_ptr + rj * MAXC + s, mask=mj, other=-1)
            has = (child >= 0)[None, :]
            cidx = tl.broadcast_to(tl.where(child >= 0, child, 0)[None, :], (BLOCK_B, JP))
            q00 += tl.where(has, tl.gather(c00, cidx, axis=1), 0.0)
            q01 += tl.where(has, tl.gather(c01, cidx, axis=1), 0.0)
            q02 += tl.where(has, tl.gather(c02, cidx, axis=1), 0.0)
            q10 += tl.where(has, tl.gather(c10, cidx, axis=1), 0.0)
            q11 += tl.where(has, tl.gather(c11, cidx, axis=1), 0.0)
            q12 += tl.where(has, tl.gather(c12, cidx, axis=1), 0.0)
            q20 += tl.where(has, tl.gather(c20, cidx, axis=1), 0.0)
            q21 += tl.where(has, tl.gather(c21, cidx, axis=1), 0.0)
            q22 += tl.where(has, tl.gather(c22, cidx, axis=1), 0.0)
            u0 += tl.where(has, tl.gather(cu0, cidx, axis=1), 0.0)
            u1 += tl.where(has, tl.gather(cu1, cidx, axis=1), 0.0)
            u2 += tl.where(has, tl.gather(cu2, cidx, axis=1), 0.0)
            gjx -= tl.where(has, tl.gather(w0, cidx, axis=1), 0.0)
            gjy -= tl.where(has, tl.gather(w1, cidx, axis=1), 0.0)
            gjz -= tl.where(has, tl.gather(w2, cidx, axis=1), 0.0)
    # the root: G_0 = R_0, t_0 = J_0
    root = (depth == 0)[None, :]
    s00, s01, s02, s10, s11, s12, s20, s21, s22 = _select3x3(
        root, q00, q01, q02, q10, q11, q12, q20, q21, q22, s00, s01, s02, s10, s11, s12, s20, s21, s22)
    gjx += tl.where(root, u0, 0.0)
    gjy += tl.where(root, u1, 0.0)
    gjz += tl.where(root, u2, 0.0)

    # plus the gradients of the returned rotations and of the pose features (R_j - I)
    if HAS_G_ROT:
        s00, s01, s02, s10, s11, s12, s20, s21, s22 = _add_loaded3x3(
            s00, s01, s02, s10, s11, s12, s20, s21, s22, g_rot_ptr + rb[:, None] * (NJ * 9) + rj[None, :] * 9, m2)
    if HAS_G_COEFFS:
        mf = mb[:, None] & ((rj >= 1) & mj)[None, :]
        s00, s01, s02, s10, s11, s12, s20, s21, s22 = _add_loaded3x3(
            s00, s01, s02, s10, s11, s12, s20, s21, s22,
            g_coeffs_ptr + rb[:, None] * C_PAD + NB + (rj[None, :] - 1) * 9, mf)

    if POSE2ROT:
        gx, gy, gz = rodrigues_backward(x, y, z, s00, s01, s02, s10, s11, s12, s20, s21, s22)
        gp = g_pose_ptr + rb[:, None] * (NJ * 3) + rj[None, :] * 3
        tl.store(gp + 0, gx, mask=m2)
        tl.store(gp + 1, gy, mask=m2)
        tl.store(gp + 2, gz, mask=m2)
    else:
        store3x3(g_pose_ptr + rb[:, None] * (NJ * 9) + rj[None, :] * 9,
                  s00, s01, s02, s10, s11, s12, s20, s21, s22, m2)

    # dL/dbetas = dL/dJ . J_shapedirs (+ the betas' own blend-shape coefficients)
    gjx = tl.where(m2, gjx, 0.0)
    gjy = tl.where(m2, gjy, 0.0)
    gjz = tl.where(m2, gjz, 0.0)
    for n in range(NB):
        row = jsd_ptr + n * (NJ * 3) + rj * 3
        acc = tl.sum(gjx * tl.load(row + 0, mask=mj, other=0.0)[None, :]
                     + gjy * tl.load(row + 1, mask=mj, other=0.0)[None, :]
                     + gjz * tl.load(row + 2, mask=mj, other=0.0)[None, :], axis=1)
        if HAS_G_COEFFS:
            acc += tl.load(g_coeffs_ptr + rb * C_PAD + n, mask=mb, other=0.0)
        tl.store(g_betas_ptr + rb * NB + n, acc, mask=mb)


# ----------------------------------------------------------------------------- launchers
def tree_tables(parents, device) -> dict:
    """The tree as the kernels read it: parents (the root's stored as 0), depth, children
    (padded with -1) as int32 tensors, and the number of levels."""
    tree = kinematic_tree(parents)
    maxc = max(1, max(len(c) for c in tree.children))
    table = [list(c) + [-1] * (maxc - len(c)) for c in tree.children]
    as_i32 = lambda a: torch.tensor(a, dtype=torch.int32, device=device)  # noqa: E731
    return dict(parents=as_i32([max(p, 0) for p in tree.parents]), depth=as_i32(tree.depth),
                children=as_i32(table), num_levels=len(tree.levels))


def pad_width(num_betas: int, num_joints: int, c_pad: int) -> int:
    return next_pow2(max(1, c_pad - num_betas - 9 * (num_joints - 1)))


def pose_chain_launch(pose, betas, J_template, J_shapedirs, parents, depth, children,
                      num_levels: int, pose2rot: bool, c_pad: int):
    B, NB = betas.shape
    NJ = J_template.shape[0]
    pose = pose.contiguous()
    betas = betas.contiguous()
    rot = empty((B, NJ, 3, 3), betas)
    coeffs = empty((B, c_pad), betas)
    joints = empty((B, NJ, 3), betas)
    transforms = empty((B, NJ, 12), betas)
    if B:
        bb = block_b()
        pose_chain_fwd_kernel[(cdiv(B, bb),)](
            pose, betas, J_template, J_shapedirs, parents, depth,
            rot, coeffs, joints, transforms, B, NB, c_pad,
            POSE2ROT=pose2rot, NJ=NJ, JP=lane_width(NJ), NUM_LEVELS=num_levels,
            NBP=next_pow2(NB), PAD_W=pad_width(NB, NJ, c_pad), BLOCK_B=bb, num_warps=NUM_WARPS)
    return rot, coeffs, joints, transforms


def pose_chain_backward_launch(pose, betas, J_template, J_shapedirs, parents, depth, children,
                               num_levels: int, pose2rot: bool, c_pad: int,
                               g_rot, g_coeffs, g_joints, g_transforms):
    B, NB = betas.shape
    NJ = J_template.shape[0]
    pose = pose.contiguous()
    betas = betas.contiguous()
    g_pose = empty(pose.shape, pose)
    g_betas = empty(betas.shape, betas)
    grads = [None if g is None else g.contiguous() for g in (g_rot, g_coeffs, g_joints, g_transforms)]
    if B:
        dummy = betas
        bb = block_b()
        pose_chain_bwd_kernel[(cdiv(B, bb),)](
            pose, betas, J_template, J_shapedirs, parents, depth, children,
            *[dummy if g is None else g for g in grads], g_pose, g_betas, B, NB, c_pad,
            POSE2ROT=pose2rot, NJ=NJ, JP=lane_width(NJ), NUM_LEVELS=num_levels,
            MAXC=children.shape[1], BLOCK_B=bb,
            HAS_G_ROT=grads[0] is not None, HAS_G_COEFFS=grads[1] is not None,
            HAS_G_JOINTS=grads[2] is not None, HAS_G_TRANSFORMS=grads[3] is not None, num_warps=NUM_WARPS)
    return g_pose, g_betas


# ----------------------------------------------------------------------------- torch ops
@torch.library.custom_op("hmr_fast::pose_chain", mutates_args=())
def pose_chain_op(pose: torch.Tensor, betas: torch.Tensor, J_template: torch.Tensor, J_shapedirs: torch.Tensor,
                  parents: torch.Tensor, depth: torch.Tensor, children: torch.Tensor,
                  num_levels: int, pose2rot: bool, c_pad: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """pose (B, NJ*3) axis-angle or (B, NJ*9) matrices, betas (B, NB) ->
    (local rotations (B, NJ, 3, 3), blend coefficients (B, c_pad), posed joints (B, NJ, 3),
    skinning transforms (B, NJ, 12))."""
    return pose_chain_launch(pose, betas, J_template, J_shapedirs, parents, depth, children,
                             num_levels, pose2rot, c_pad)


@pose_chain_op.register_fake
def _(pose, betas, J_template, J_shapedirs, parents, depth, children, num_levels, pose2rot, c_pad):
    B, NJ = betas.shape[0], J_template.shape[0]
    return (betas.new_empty((B, NJ, 3, 3)), betas.new_empty((B, c_pad)),
            betas.new_empty((B, NJ, 3)), betas.new_empty((B, NJ, 12)))


@torch.library.custom_op("hmr_fast::pose_chain_backward", mutates_args=())
def pose_chain_backward_op(pose: torch.Tensor, betas: torch.Tensor, J_template: torch.Tensor,
                           J_shapedirs: torch.Tensor, parents: torch.Tensor, depth: torch.Tensor,
                           children: torch.Tensor, num_levels: int, pose2rot: bool, c_pad: int,
                           g_rot: Optional[torch.Tensor], g_coeffs: Optional[torch.Tensor],
                           g_joints: Optional[torch.Tensor], g_transforms: Optional[torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    return pose_chain_backward_launch(pose, betas, J_template, J_shapedirs, parents, depth, children,
                                      num_levels, pose2rot, c_pad, g_rot, g_coeffs, g_joints, g_transforms)


@pose_chain_backward_op.register_fake
def _(pose, betas, J_template, J_shapedirs, parents, depth, children, num_levels, pose2rot, c_pad,
      g_rot, g_coeffs, g_joints, g_transforms):
    return torch.empty_like(pose), torch.empty_like(betas)


def _setup(ctx, inputs, output):
    pose, betas, J_template, J_shapedirs, parents, depth, children, num_levels, pose2rot, c_pad = inputs
    ctx.save_for_backward(pose, betas, J_template, J_shapedirs, parents, depth, children)
    ctx.static = (num_levels, pose2rot, c_pad)


def _grad(ctx, g_rot, g_coeffs, g_joints, g_transforms):
    pose, betas, J_template, J_shapedirs, parents, depth, children = ctx.saved_tensors
    g_rot = None if g_rot is None else g_rot.reshape(g_rot.shape[0], -1, 9)
    g_pose, g_betas = torch.ops.hmr_fast.pose_chain_backward(
        pose, betas, J_template, J_shapedirs, parents, depth, children, *ctx.static,
        g_rot, g_coeffs, g_joints, g_transforms)
    return g_pose, g_betas, None, None, None, None, None, None, None, None


pose_chain_op.register_autograd(_grad, setup_context=_setup)
