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
from .rotations import rodrigues, rodrigues_backward

BLOCK_B = 4  # samples per program: one warp per sample, its 32 lanes the joints (gathers are shuffles)
INTERPRETER_BLOCK_B = 64  # under the interpreter a program costs the same whatever its size
NUM_WARPS = 4


def block_b() -> int:
    return INTERPRETER_BLOCK_B if interpreting() else BLOCK_B


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
def _forward_chain(r00, r01, r02, r10, r11, r12, r20, r21, r22, jx, jy, jz, pidx, depth,
                   bx, by, bz, NUM_LEVELS: tl.constexpr):
    """Global rotations G (9 tiles) and translations t (3 tiles), level by level."""
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = r00, r01, r02, r10, r11, r12, r20, r21, r22
    tx, ty, tz = jx, jy, jz
    for d in range(1, NUM_LEVELS):
        sel = (depth == d)[None, :]
        p00 = tl.gather(g00, pidx, axis=1)
        p01 = tl.gather(g01, pidx, axis=1)
        p02 = tl.gather(g02, pidx, axis=1)
        p10 = tl.gather(g10, pidx, axis=1)
        p11 = tl.gather(g11, pidx, axis=1)
        p12 = tl.gather(g12, pidx, axis=1)
        p20 = tl.gather(g20, pidx, axis=1)
        p21 = tl.gather(g21, pidx, axis=1)
        p22 = tl.gather(g22, pidx, axis=1)
        ptx = tl.gather(tx, pidx, axis=1)
        pty = tl.gather(ty, pidx, axis=1)
        ptz = tl.gather(tz, pidx, axis=1)
        tx = tl.where(sel, ptx + p00 * bx + p01 * by + p02 * bz, tx)
        ty = tl.where(sel, pty + p10 * bx + p11 * by + p12 * bz, ty)
        tz = tl.where(sel, ptz + p20 * bx + p21 * by + p22 * bz, tz)
        g00 = tl.where(sel, p00 * r00 + p01 * r10 + p02 * r20, g00)
        g01 = tl.where(sel, p00 * r01 + p01 * r11 + p02 * r21, g01)
        g02 = tl.where(sel, p00 * r02 + p01 * r12 + p02 * r22, g02)
        g10 = tl.where(sel, p10 * r00 + p11 * r10 + p12 * r20, g10)
        g11 = tl.where(sel, p10 * r01 + p11 * r11 + p12 * r21, g11)
        g12 = tl.where(sel, p10 * r02 + p11 * r12 + p12 * r22, g12)
        g20 = tl.where(sel, p20 * r00 + p21 * r10 + p22 * r20, g20)
        g21 = tl.where(sel, p20 * r01 + p21 * r11 + p22 * r21, g21)
        g22 = tl.where(sel, p20 * r02 + p21 * r12 + p22 * r22, g22)
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
    rot = rot_ptr + rb[:, None] * (NJ * 9) + rj[None, :] * 9
    tl.store(rot + 0, r00, mask=m2)
    tl.store(rot + 1, r01, mask=m2)
    tl.store(rot + 2, r02, mask=m2)
    tl.store(rot + 3, r10, mask=m2)
    tl.store(rot + 4, r11, mask=m2)
    tl.store(rot + 5, r12, mask=m2)
    tl.store(rot + 6, r20, mask=m2)
    tl.store(rot + 7, r21, mask=m2)
    tl.store(rot + 8, r22, mask=m2)

    # blend coefficients: [betas | R_j - I for j = 1..NJ-1 | zeros up to C_PAD]
    rn = tl.arange(0, NBP)
    mbn = mb[:, None] & (rn < NB)[None, :]
    betas = tl.load(betas_ptr + rb[:, None] * NB + rn[None, :], mask=mbn, other=0.0)
    tl.store(coeffs_ptr + rb[:, None] * C_PAD + rn[None, :], betas, mask=mbn)
    mf = mb[:, None] & ((rj >= 1) & mj)[None, :]
    feat = coeffs_ptr + rb[:, None] * C_PAD + NB + (rj[None, :] - 1) * 9
    tl.store(feat + 0, r00 - 1.0, mask=mf)
    tl.store(feat + 1, r01, mask=mf)
    tl.store(feat + 2, r02, mask=mf)
    tl.store(feat + 3, r10, mask=mf)
    tl.store(feat + 4, r11 - 1.0, mask=mf)
    tl.store(feat + 5, r12, mask=mf)
    tl.store(feat + 6, r20, mask=mf)
    tl.store(feat + 7, r21, mask=mf)
    tl.store(feat + 8, r22 - 1.0, mask=mf)
    rp = NB + 9 * (NJ - 1) + tl.arange(0, PAD_W)
    mp = mb[:, None] & (rp < C_PAD)[None, :]
    tl.store(coeffs_ptr + rb[:, None] * C_PAD + rp[None, :], tl.zeros((BLOCK_B, PAD_W), dtype=r00.dtype), mask=mp)

    jx, jy, jz = _rest_joints(betas_ptr, jt_ptr, jsd_ptr, rb, mb, rj, mj, NB, NJ, BLOCK_B, JP)
    parent = tl.load(parent_ptr + rj, mask=mj, other=0)
    depth = tl.load(depth_ptr + rj, mask=mj, other=-1)
    pidx = tl.broadcast_to(parent[None, :], (BLOCK_B, JP))
    bx = jx - tl.gather(jx, pidx, axis=1)
    by = jy - tl.gather(jy, pidx, axis=1)
    bz = jz - tl.gather(jz, pidx, axis=1)
    g00, g01, g02, g10, g11, g12, g20, g21, g22, tx, ty, tz = _forward_chain(
        r00, r01, r02, r10, r11, r12, r20, r21, r22, jx, jy, jz, pidx, depth, bx, by, bz, NUM_LEVELS)

    out = joints_ptr + rb[:, None] * (NJ * 3) + rj[None, :] * 3
    tl.store(out + 0, tx, mask=m2)
    tl.store(out + 1, ty, mask=m2)
    tl.store(out + 2, tz, mask=m2)
    a = transforms_ptr + rb[:, None] * (NJ * 12) + rj[None, :] * 12
    tl.store(a + 0, g00, mask=m2)
    tl.store(a + 1, g01, mask=m2)
    tl.store(a + 2, g02, mask=m2)
    tl.store(a + 3, tx - (g00 * jx + g01 * jy + g02 * jz), mask=m2)
    tl.store(a + 4, g10, mask=m2)
    tl.store(a + 5, g11, mask=m2)
    tl.store(a + 6, g12, mask=m2)
    tl.store(a + 7, ty - (g10 * jx + g11 * jy + g12 * jz), mask=m2)
    tl.store(a + 8, g20, mask=m2)
    tl.store(a + 9, g21, mask=m2)
    tl.store(a + 10, g22, mask=m2)
    tl.store(a + 11, tz - (g20 * jx + g21 * jy + g22 * jz), mask=m2)


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
    parent = tl.load(parent_ptr + rj, mask=mj, other=0)
    depth = tl.load(depth_ptr + rj, mask=mj, other=-1)
    pidx = tl.broadcast_to(parent[None, :], (BLOCK_B, JP))
    bx = jx - tl.gather(jx, pidx, axis=1)
    by = jy - tl.gather(jy, pidx, axis=1)
    bz = jz - tl.gather(jz, pidx, axis=1)
    g00, g01, g02, g10, g11, g12, g20, g21, g22, _tx, _ty, _tz = _forward_chain(
        r00, r01, r02, r10, r11, r12, r20, r21, r22, jx, jy, jz, pidx, depth, bx, by, bz, NUM_LEVELS)
    # parents' global rotations
    p00 = tl.gather(g00, pidx, axis=1)
    p01 = tl.gather(g01, pidx, axis=1)
    p02 = tl.gather(g02, pidx, axis=1)
    p10 = tl.gather(g10, pidx, axis=1)
    p11 = tl.gather(g11, pidx, axis=1)
    p12 = tl.gather(g12, pidx, axis=1)
    p20 = tl.gather(g20, pidx, axis=1)
    p21 = tl.gather(g21, pidx, axis=1)
    p22 = tl.gather(g22, pidx, axis=1)

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
        gjx = -(g00 * o0 + g10 * o1 + g20 * o2)
        gjy = -(g01 * o0 + g11 * o1 + g21 * o2)
        gjz = -(g02 * o0 + g12 * o1 + g22 * o2)
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
        s00 = tl.where(sel, p00 * q00 + p10 * q10 + p20 * q20, s00)
        s01 = tl.where(sel, p00 * q01 + p10 * q11 + p20 * q21, s01)
        s02 = tl.where(sel, p00 * q02 + p10 * q12 + p20 * q22, s02)
        s10 = tl.where(sel, p01 * q00 + p11 * q10 + p21 * q20, s10)
        s11 = tl.where(sel, p01 * q01 + p11 * q11 + p21 * q21, s11)
        s12 = tl.where(sel, p01 * q02 + p11 * q12 + p21 * q22, s12)
        s20 = tl.where(sel, p02 * q00 + p12 * q10 + p22 * q20, s20)
        s21 = tl.where(sel, p02 * q01 + p12 * q11 + p22 * q21, s21)
        s22 = tl.where(sel, p02 * q02 + p12 * q12 + p22 * q22, s22)
        # what the level-d joints send their parents: dL/dG_p += q R^T + u bone^T, dL/dt_p += u
        c00 = tl.where(sel, q00 * r00 + q01 * r01 + q02 * r02 + u0 * bx, 0.0)
        c01 = tl.where(sel, q00 * r10 + q01 * r11 + q02 * r12 + u0 * by, 0.0)
        c02 = tl.where(sel, q00 * r20 + q01 * r21 + q02 * r22 + u0 * bz, 0.0)
        c10 = tl.where(sel, q10 * r00 + q11 * r01 + q12 * r02 + u1 * bx, 0.0)
        c11 = tl.where(sel, q10 * r10 + q11 * r11 + q12 * r12 + u1 * by, 0.0)
        c12 = tl.where(sel, q10 * r20 + q11 * r21 + q12 * r22 + u1 * bz, 0.0)
        c20 = tl.where(sel, q20 * r00 + q21 * r01 + q22 * r02 + u2 * bx, 0.0)
        c21 = tl.where(sel, q20 * r10 + q21 * r11 + q22 * r12 + u2 * by, 0.0)
        c22 = tl.where(sel, q20 * r20 + q21 * r21 + q22 * r22 + u2 * bz, 0.0)
        cu0 = tl.where(sel, u0, 0.0)
        cu1 = tl.where(sel, u1, 0.0)
        cu2 = tl.where(sel, u2, 0.0)
        # bone_j = J_j - J_p: dL/dJ_j += G_p^T u, dL/dJ_p -= G_p^T u
        w0 = tl.where(sel, p00 * u0 + p10 * u1 + p20 * u2, 0.0)
        w1 = tl.where(sel, p01 * u0 + p11 * u1 + p21 * u2, 0.0)
        w2 = tl.where(sel, p02 * u0 + p12 * u1 + p22 * u2, 0.0)
        gjx += w0
        gjy += w1
        gjz += w2
        for s in range(MAXC):  # each joint's child in slot s sends it c (written out: no helper call)
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
    s00 = tl.where(root, q00, s00)
    s01 = tl.where(root, q01, s01)
    s02 = tl.where(root, q02, s02)
    s10 = tl.where(root, q10, s10)
    s11 = tl.where(root, q11, s11)
    s12 = tl.where(root, q12, s12)
    s20 = tl.where(root, q20, s20)
    s21 = tl.where(root, q21, s21)
    s22 = tl.where(root, q22, s22)
    gjx += tl.where(root, u0, 0.0)
    gjy += tl.where(root, u1, 0.0)
    gjz += tl.where(root, u2, 0.0)

    # plus the gradients of the returned rotations and of the pose features (R_j - I)
    if HAS_G_ROT:
        gr = g_rot_ptr + rb[:, None] * (NJ * 9) + rj[None, :] * 9
        s00 += tl.load(gr + 0, mask=m2, other=0.0)
        s01 += tl.load(gr + 1, mask=m2, other=0.0)
        s02 += tl.load(gr + 2, mask=m2, other=0.0)
        s10 += tl.load(gr + 3, mask=m2, other=0.0)
        s11 += tl.load(gr + 4, mask=m2, other=0.0)
        s12 += tl.load(gr + 5, mask=m2, other=0.0)
        s20 += tl.load(gr + 6, mask=m2, other=0.0)
        s21 += tl.load(gr + 7, mask=m2, other=0.0)
        s22 += tl.load(gr + 8, mask=m2, other=0.0)
    if HAS_G_COEFFS:
        mf = mb[:, None] & ((rj >= 1) & mj)[None, :]
        gf = g_coeffs_ptr + rb[:, None] * C_PAD + NB + (rj[None, :] - 1) * 9
        s00 += tl.load(gf + 0, mask=mf, other=0.0)
        s01 += tl.load(gf + 1, mask=mf, other=0.0)
        s02 += tl.load(gf + 2, mask=mf, other=0.0)
        s10 += tl.load(gf + 3, mask=mf, other=0.0)
        s11 += tl.load(gf + 4, mask=mf, other=0.0)
        s12 += tl.load(gf + 5, mask=mf, other=0.0)
        s20 += tl.load(gf + 6, mask=mf, other=0.0)
        s21 += tl.load(gf + 7, mask=mf, other=0.0)
        s22 += tl.load(gf + 8, mask=mf, other=0.0)

    if POSE2ROT:
        gx, gy, gz = rodrigues_backward(x, y, z, s00, s01, s02, s10, s11, s12, s20, s21, s22)
        gp = g_pose_ptr + rb[:, None] * (NJ * 3) + rj[None, :] * 3
        tl.store(gp + 0, gx, mask=m2)
        tl.store(gp + 1, gy, mask=m2)
        tl.store(gp + 2, gz, mask=m2)
    else:
        gp = g_pose_ptr + rb[:, None] * (NJ * 9) + rj[None, :] * 9
        tl.store(gp + 0, s00, mask=m2)
        tl.store(gp + 1, s01, mask=m2)
        tl.store(gp + 2, s02, mask=m2)
        tl.store(gp + 3, s10, mask=m2)
        tl.store(gp + 4, s11, mask=m2)
        tl.store(gp + 5, s12, mask=m2)
        tl.store(gp + 6, s20, mask=m2)
        tl.store(gp + 7, s21, mask=m2)
        tl.store(gp + 8, s22, mask=m2)

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
    """Depth of each joint, its children (padded with -1) and the number of levels."""
    parents = [int(p) for p in parents]
    depth = [0] * len(parents)
    for j in range(1, len(parents)):  # SMPL-format trees list parents before children
        if not 0 <= parents[j] < j:
            raise ValueError(f"kinematic tree must list parents before children; parent of {j} is {parents[j]}")
        depth[j] = depth[parents[j]] + 1
    children = [[c for c in range(len(parents)) if c > 0 and parents[c] == p] for p in range(len(parents))]
    maxc = max(1, max(len(c) for c in children))
    table = [c + [-1] * (maxc - len(c)) for c in children]
    as_i32 = lambda a: torch.tensor(a, dtype=torch.int32, device=device)  # noqa: E731
    return dict(parents=as_i32([max(p, 0) for p in parents]), depth=as_i32(depth),
                children=as_i32(table), num_levels=max(depth) + 1)


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
