"""Joint regression and weak-perspective projection, fused.

A joint set row is either one of the kinematic chain's posed joints or a sparse regressor
over the posed vertices. Restricted to the regressor's support (the S vertices any row
reads), both kinds are small dense GEMMs per program of BLOCK_B samples:
    joints = verts[:, support] @ regT + posed_joints @ selT (+ transl),
regT (S, JOP) the regressor's transpose (zero on chain rows), selT (JP, JOP) the one-hot
chain selection (zero on vertex rows; a one-hot product is exact). With a camera (s, tx, ty)
the same program writes the HMR keypoints x2d = s * (X[:, :2] + [tx, ty]).

`verts` is either all vertices (with transl already added: `transl_in_verts`, then a vertex
row gets transl * (1 - its row sum) so that every joint gets transl exactly once) or the
support vertices posed by the joints-only path (no transl).

Backward: dL/dverts (support rows only, scattered by the unique support indices, no atomics),
dL/dposed_joints, dL/dtransl and dL/dcam, one program per batch tile.
Registered as `hmr_fast::regress_project` / `hmr_fast::regress_project_backward`.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import cdiv, empty, interpreting

BLOCK_B = 16  # samples per program (32 spills at J = 45 on sm_90)
INTERPRETER_BLOCK_B = 64
BLOCK_S = 32
NUM_WARPS = 4


def block_b() -> int:
    return INTERPRETER_BLOCK_B if interpreting() else BLOCK_B


@triton.jit
def regress_project_fwd_kernel(
    verts_ptr, support_ptr, regt_ptr, selt_ptr, rowsum_ptr, posed_ptr, transl_ptr, cam_ptr,
    joints_ptr, kp_ptr,
    B, NSRC, S,
    NJ: tl.constexpr, JP: tl.constexpr, J: tl.constexpr, JOP: tl.constexpr,
    HAS_TRANSL: tl.constexpr, TRANSL_IN_VERTS: tl.constexpr, HAS_CAM: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    ro = tl.arange(0, JOP)
    ACC_DT: tl.constexpr = joints_ptr.dtype.element_ty
    ax = tl.zeros((BLOCK_B, JOP), dtype=ACC_DT)
    ay = tl.zeros((BLOCK_B, JOP), dtype=ACC_DT)
    az = tl.zeros((BLOCK_B, JOP), dtype=ACC_DT)
    for s0 in range(0, S, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        ms = rs < S
        vidx = tl.load(support_ptr + rs, mask=ms, other=0)
        v = verts_ptr + rb[:, None] * (NSRC * 3) + vidx[None, :] * 3
        m = mb[:, None] & ms[None, :]
        r = tl.load(regt_ptr + rs[:, None] * JOP + ro[None, :], mask=ms[:, None], other=0.0)
        ax = tl.dot(tl.load(v + 0, mask=m, other=0.0), r, ax, input_precision="ieee", out_dtype=ACC_DT)
        ay = tl.dot(tl.load(v + 1, mask=m, other=0.0), r, ay, input_precision="ieee", out_dtype=ACC_DT)
        az = tl.dot(tl.load(v + 2, mask=m, other=0.0), r, az, input_precision="ieee", out_dtype=ACC_DT)
    rj = tl.arange(0, JP)
    mp = mb[:, None] & (rj < NJ)[None, :]
    p = posed_ptr + rb[:, None] * (NJ * 3) + rj[None, :] * 3
    sel = tl.load(selt_ptr + rj[:, None] * JOP + ro[None, :])
    ax = tl.dot(tl.load(p + 0, mask=mp, other=0.0), sel, ax, input_precision="ieee", out_dtype=ACC_DT)
    ay = tl.dot(tl.load(p + 1, mask=mp, other=0.0), sel, ay, input_precision="ieee", out_dtype=ACC_DT)
    az = tl.dot(tl.load(p + 2, mask=mp, other=0.0), sel, az, input_precision="ieee", out_dtype=ACC_DT)
    if HAS_TRANSL:
        tx = tl.load(transl_ptr + rb * 3 + 0, mask=mb, other=0.0)[:, None]
        ty = tl.load(transl_ptr + rb * 3 + 1, mask=mb, other=0.0)[:, None]
        tz = tl.load(transl_ptr + rb * 3 + 2, mask=mb, other=0.0)[:, None]
        if TRANSL_IN_VERTS:
            once = 1.0 - tl.load(rowsum_ptr + ro)[None, :]
            ax += tx * once
            ay += ty * once
            az += tz * once
        else:
            ax += tx
            ay += ty
            az += tz
    mo = mb[:, None] & (ro < J)[None, :]
    out = joints_ptr + rb[:, None] * (J * 3) + ro[None, :] * 3
    tl.store(out + 0, ax, mask=mo)
    tl.store(out + 1, ay, mask=mo)
    tl.store(out + 2, az, mask=mo)
    if HAS_CAM:
        s = tl.load(cam_ptr + rb * 3 + 0, mask=mb, other=0.0)[:, None]
        cx = tl.load(cam_ptr + rb * 3 + 1, mask=mb, other=0.0)[:, None]
        cy = tl.load(cam_ptr + rb * 3 + 2, mask=mb, other=0.0)[:, None]
        kp = kp_ptr + rb[:, None] * (J * 2) + ro[None, :] * 2
        tl.store(kp + 0, s * (ax + cx), mask=mo)
        tl.store(kp + 1, s * (ay + cy), mask=mo)


@triton.jit
def regress_project_bwd_kernel(
    g_joints_ptr, g_kp_ptr, joints_ptr, support_ptr, regt_ptr, selt_ptr, rowsum_ptr, cam_ptr,
    g_verts_ptr, g_posed_ptr, g_transl_ptr, g_cam_ptr,
    B, NSRC, S,
    NJ: tl.constexpr, JP: tl.constexpr, J: tl.constexpr, JOP: tl.constexpr,
    HAS_G_JOINTS: tl.constexpr, HAS_G_KP: tl.constexpr, HAS_TRANSL: tl.constexpr,
    TRANSL_IN_VERTS: tl.constexpr, HAS_CAM: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    ro = tl.arange(0, JOP)
    mo = mb[:, None] & (ro < J)[None, :]
    ACC_DT: tl.constexpr = g_posed_ptr.dtype.element_ty
    if HAS_G_JOINTS:
        gj = g_joints_ptr + rb[:, None] * (J * 3) + ro[None, :] * 3
        gx = tl.load(gj + 0, mask=mo, other=0.0)
        gy = tl.load(gj + 1, mask=mo, other=0.0)
        gz = tl.load(gj + 2, mask=mo, other=0.0)
    else:
        gx = tl.zeros((BLOCK_B, JOP), dtype=ACC_DT)
        gy = tl.zeros((BLOCK_B, JOP), dtype=ACC_DT)
        gz = tl.zeros((BLOCK_B, JOP), dtype=ACC_DT)
    if HAS_CAM:
        s = tl.load(cam_ptr + rb * 3 + 0, mask=mb, other=0.0)
        if HAS_G_KP:
            cx = tl.load(cam_ptr + rb * 3 + 1, mask=mb, other=0.0)[:, None]
            cy = tl.load(cam_ptr + rb * 3 + 2, mask=mb, other=0.0)[:, None]
            gk = g_kp_ptr + rb[:, None] * (J * 2) + ro[None, :] * 2
            kx = tl.load(gk + 0, mask=mo, other=0.0)
            ky = tl.load(gk + 1, mask=mo, other=0.0)
            jt = joints_ptr + rb[:, None] * (J * 3) + ro[None, :] * 3
            X = tl.load(jt + 0, mask=mo, other=0.0)
            Y = tl.load(jt + 1, mask=mo, other=0.0)
            g_s = tl.sum(kx * (X + cx) + ky * (Y + cy), axis=1)
            g_cx = s * tl.sum(kx, axis=1)
            g_cy = s * tl.sum(ky, axis=1)
            gx += s[:, None] * kx
            gy += s[:, None] * ky
        else:
            g_s = tl.zeros((BLOCK_B,), dtype=ACC_DT)
            g_cx = tl.zeros((BLOCK_B,), dtype=ACC_DT)
            g_cy = tl.zeros((BLOCK_B,), dtype=ACC_DT)
        tl.store(g_cam_ptr + rb * 3 + 0, g_s, mask=mb)
        tl.store(g_cam_ptr + rb * 3 + 1, g_cx, mask=mb)
        tl.store(g_cam_ptr + rb * 3 + 2, g_cy, mask=mb)
    if HAS_TRANSL:
        if TRANSL_IN_VERTS:
            once = 1.0 - tl.load(rowsum_ptr + ro)[None, :]
        else:
            once = tl.where(ro < J, 1.0, 0.0)[None, :]
        tl.store(g_transl_ptr + rb * 3 + 0, tl.sum(gx * once, axis=1), mask=mb)
        tl.store(g_transl_ptr + rb * 3 + 1, tl.sum(gy * once, axis=1), mask=mb)
        tl.store(g_transl_ptr + rb * 3 + 2, tl.sum(gz * once, axis=1), mask=mb)
    # chain rows -> posed joints: g @ selT^T
    rj = tl.arange(0, JP)
    sel = tl.load(selt_ptr + rj[None, :] * JOP + ro[:, None])  # (JOP, JP)
    mp = mb[:, None] & (rj < NJ)[None, :]
    gp = g_posed_ptr + rb[:, None] * (NJ * 3) + rj[None, :] * 3
    tl.store(gp + 0, tl.dot(gx, sel, input_precision="ieee", out_dtype=ACC_DT), mask=mp)
    tl.store(gp + 1, tl.dot(gy, sel, input_precision="ieee", out_dtype=ACC_DT), mask=mp)
    tl.store(gp + 2, tl.dot(gz, sel, input_precision="ieee", out_dtype=ACC_DT), mask=mp)
    # vertex rows -> support vertices: g @ regT^T
    for s0 in range(0, S, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        ms = rs < S
        vidx = tl.load(support_ptr + rs, mask=ms, other=0)
        r = tl.load(regt_ptr + rs[None, :] * JOP + ro[:, None], mask=ms[None, :], other=0.0)  # (JOP, BLOCK_S)
        v = g_verts_ptr + rb[:, None] * (NSRC * 3) + vidx[None, :] * 3
        m = mb[:, None] & ms[None, :]
        tl.store(v + 0, tl.dot(gx, r, input_precision="ieee", out_dtype=ACC_DT), mask=m)
        tl.store(v + 1, tl.dot(gy, r, input_precision="ieee", out_dtype=ACC_DT), mask=m)
        tl.store(v + 2, tl.dot(gz, r, input_precision="ieee", out_dtype=ACC_DT), mask=m)


# ----------------------------------------------------------------------------- launchers
def regress_project_launch(verts, support, regT, selT, rowsum, posed_joints, transl, cam,
                           num_joints: int, transl_in_verts: bool):
    B, NJ = posed_joints.shape[:2]
    NSRC = verts.shape[1]
    S = support.shape[0]
    J = num_joints
    joints = empty((B, J, 3), posed_joints)
    kp = empty((B, J, 2) if cam is not None else (0,), posed_joints)
    if B == 0:
        return joints, kp
    bb = block_b()
    dummy = posed_joints
    regress_project_fwd_kernel[(cdiv(B, bb),)](
        verts.contiguous(), support, regT, selT, rowsum, posed_joints.contiguous(),
        dummy if transl is None else transl.contiguous(), dummy if cam is None else cam.contiguous(),
        joints, kp, B, NSRC, S,
        NJ=NJ, JP=selT.shape[0], J=J, JOP=regT.shape[1], HAS_TRANSL=transl is not None,
        TRANSL_IN_VERTS=transl_in_verts, HAS_CAM=cam is not None, BLOCK_B=bb, BLOCK_S=BLOCK_S,
        num_warps=NUM_WARPS)
    return joints, kp


def regress_project_backward_launch(g_joints, g_kp, joints, num_source_vertices: int, support, regT, selT, rowsum,
                                    cam, num_chain_joints: int, has_transl: bool, transl_in_verts: bool):
    B, J = joints.shape[:2]
    NJ = num_chain_joints
    S = support.shape[0]
    like = joints
    # only the support rows get a gradient: the rest are zero (all rows are support rows when
    # verts are the joints-only path's support vertices)
    if S == num_source_vertices:
        g_verts = empty((B, num_source_vertices, 3), like)
    else:
        g_verts = torch.zeros((B, num_source_vertices, 3), dtype=like.dtype, device=like.device)
    g_posed = empty((B, NJ, 3), like)
    g_transl = empty((B, 3), like)
    g_cam = empty((B, 3), like)
    if B == 0:
        return g_verts, g_posed, g_transl, g_cam
    bb = block_b()
    dummy = joints
    regress_project_bwd_kernel[(cdiv(B, bb),)](
        dummy if g_joints is None else g_joints.contiguous(), dummy if g_kp is None else g_kp.contiguous(),
        joints.contiguous(), support, regT, selT, rowsum, dummy if cam is None else cam.contiguous(),
        g_verts, g_posed, g_transl, g_cam, B, num_source_vertices, S,
        NJ=NJ, JP=selT.shape[0], J=J, JOP=regT.shape[1], HAS_G_JOINTS=g_joints is not None,
        HAS_G_KP=g_kp is not None and cam is not None, HAS_TRANSL=has_transl, TRANSL_IN_VERTS=transl_in_verts,
        HAS_CAM=cam is not None, BLOCK_B=bb, BLOCK_S=BLOCK_S, num_warps=NUM_WARPS)
    if not has_transl:
        g_transl.zero_()
    if cam is None:
        g_cam.zero_()
    return g_verts, g_posed, g_transl, g_cam


# ----------------------------------------------------------------------------- torch ops
@torch.library.custom_op("hmr_fast::regress_project", mutates_args=())
def regress_project_op(verts: torch.Tensor, support: torch.Tensor, regT: torch.Tensor, selT: torch.Tensor,
                       rowsum: torch.Tensor, posed_joints: torch.Tensor, transl: Optional[torch.Tensor],
                       cam: Optional[torch.Tensor], num_joints: int, transl_in_verts: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(joints (B, J, 3), keypoints (B, J, 2), or an empty (0,) tensor without a camera)."""
    return regress_project_launch(verts, support, regT, selT, rowsum, posed_joints, transl, cam,
                                  num_joints, transl_in_verts)


@regress_project_op.register_fake
def _(verts, support, regT, selT, rowsum, posed_joints, transl, cam, num_joints, transl_in_verts):
    B = posed_joints.shape[0]
    return (posed_joints.new_empty((B, num_joints, 3)),
            posed_joints.new_empty((B, num_joints, 2) if cam is not None else (0,)))


@torch.library.custom_op("hmr_fast::regress_project_backward", mutates_args=())
def regress_project_backward_op(g_joints: Optional[torch.Tensor], g_kp: Optional[torch.Tensor], joints: torch.Tensor,
                                num_source_vertices: int, support: torch.Tensor, regT: torch.Tensor,
                                selT: torch.Tensor, rowsum: torch.Tensor, cam: Optional[torch.Tensor],
                                num_chain_joints: int, has_transl: bool, transl_in_verts: bool
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dverts, dL/dposed_joints, dL/dtransl, dL/dcam)."""
    return regress_project_backward_launch(g_joints, g_kp, joints, num_source_vertices, support, regT, selT, rowsum,
                                           cam, num_chain_joints, has_transl, transl_in_verts)


@regress_project_backward_op.register_fake
def _(g_joints, g_kp, joints, num_source_vertices, support, regT, selT, rowsum, cam, num_chain_joints,
      has_transl, transl_in_verts):
    B = joints.shape[0]
    return (joints.new_empty((B, num_source_vertices, 3)), joints.new_empty((B, num_chain_joints, 3)),
            joints.new_empty((B, 3)), joints.new_empty((B, 3)))


def _setup(ctx, inputs, output):
    verts, support, regT, selT, rowsum, posed_joints, transl, cam, num_joints, transl_in_verts = inputs
    ctx.save_for_backward(output[0], support, regT, selT, rowsum, cam)
    ctx.static = (verts.shape[1], posed_joints.shape[1], transl is not None, transl_in_verts)


def _grad(ctx, g_joints, g_kp):
    joints, support, regT, selT, rowsum, cam = ctx.saved_tensors
    nsrc, nj, has_transl, transl_in_verts = ctx.static
    if cam is None or (g_kp is not None and g_kp.numel() == 0):
        g_kp = None
    g_verts, g_posed, g_transl, g_cam = torch.ops.hmr_fast.regress_project_backward(
        g_joints, g_kp, joints, nsrc, support, regT, selT, rowsum, cam, nj, has_transl, transl_in_verts)
    return (g_verts, None, None, None, None, g_posed, g_transl if has_transl else None,
            g_cam if cam is not None else None, None, None)


regress_project_op.register_autograd(_grad, setup_context=_setup)
