"""Blend shapes + linear blend skinning, fused: the corrective GEMM and the skinning in one pass.

Forward, one program per (BLOCK_B samples) x (BLOCK_N vertices) tile:
1. v_posed = template + coeffs @ dirs, where coeffs (B, C_PAD) = [betas, pose features, 0]
   and dirs is the model's [shapedirs; posedirs] re-laid as three coordinate planes
   (3, C_PAD, N_PAD): each plane tile (BLOCK_C, BLOCK_N) is a contiguous, coalesced load, and
   the GEMM is three `tl.dot`s per coefficient chunk into three (BLOCK_B, BLOCK_N) accumulators.
   Block-sparse models run the variant that visits only the chunks listed for the vertex block.
2. skinning with K (index, weight) pairs per vertex (K measured at load, 4 for SMPL): the
   3x4 transforms of the K joints are gathered per vertex and sample (they sit in L1/L2:
   BLOCK_B x 24 x 12 numbers per program), v = sum_k w_k (R_k v_posed + t_k) + transl.
3. each vertex written once, (B, N, 3). No (B, N, 16) or (B, N, 3, 4) tensor exists anywhere.

Backward, in two kernels with per-program partial sums (no atomics), then torch.sum:
- `blend_skin_bwd_kernel`, per (batch tile, vertex split): recomputes v_posed (the GEMM again),
  gathers the transforms, writes dL/dv_posed = sum_k w_k R_k^T dL/dv as coordinate planes, and
  accumulates dL/dA_j = sum_v W[v, j] dL/dv (v_posed, 1)^T as 12 `tl.dot`s with the dense
  weights (BLOCK_N, JP) and dL/dtransl = sum_v dL/dv in registers, written once per program.
- `blend_coeffs_bwd_kernel`, per (batch tile, coefficient chunk, vertex split): the GEMM
  dL/dcoeffs = dL/dv_posed @ dirs^T, split over vertices; zero (chunk, vertex block) tiles of a
  block-sparse model are skipped.
Registered as `hmr_fast::blend_skin` / `hmr_fast::blend_skin_backward`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

from ._common import batch_block, cdiv, empty, interpreting, kernel_precision, lane_width, round_up, sm_count

BLOCK_N = 64  # vertices per tile on a GPU; also the block-sparsity granularity along vertices
# Under the interpreter every program costs ~20 ms of Python whatever its size, so tiles are
# wider there (same code, same masks: vertex counts still end in a partial tile).
INTERPRETER_BLOCK_N = 256
BLOCK_C = 32  # coefficients per GEMM step; also the granularity along coefficients
VERTEX_PAD = 256  # per-vertex arrays are zero-padded to a multiple of this (and of every BLOCK_N)
SPARSE_MIN_ZERO_FRACTION = 0.25  # block-sparse variant when at least this many tiles are zero


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    # out_dtype=acc.dtype on every accumulating dot: triton 3.6 (the GPU machine's) defaults it to
    # float32 and refuses a float64 accumulator; 3.8 infers it from acc.
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif PREC == "bf16_emulated":  # the interpreter's bf16 dot is wrong; round, then multiply in fp32
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), acc,
                      input_precision="ieee")
    else:
        return tl.dot(a.to(acc.dtype), b.to(acc.dtype), acc, input_precision=PREC, out_dtype=acc.dtype)


@triton.jit
def _blend_chunk(coeffs_ptr, dirs_ptr, rb, mb, rn, c0, C_PAD, N_PAD, acc_x, acc_y, acc_z,
                 PREC: tl.constexpr, BLOCK_C: tl.constexpr):
    rc = c0 + tl.arange(0, BLOCK_C)
    a = tl.load(coeffs_ptr + rb[:, None] * C_PAD + rc[None, :], mask=mb[:, None], other=0.0)
    d = dirs_ptr + rc[:, None] * N_PAD + rn[None, :]
    dx = tl.load(d)
    dy = tl.load(d + C_PAD * N_PAD)
    dz = tl.load(d + 2 * C_PAD * N_PAD)
    # (written out rather than through a helper: nested jit calls are slow under the interpreter)
    if PREC == "bf16":
        a = a.to(tl.bfloat16)
        acc_x = tl.dot(a, dx.to(tl.bfloat16), acc_x)
        acc_y = tl.dot(a, dy.to(tl.bfloat16), acc_y)
        acc_z = tl.dot(a, dz.to(tl.bfloat16), acc_z)
    elif PREC == "bf16_emulated":  # the interpreter's bf16 dot is wrong: round, then multiply in fp32
        a = a.to(tl.bfloat16).to(tl.float32)
        acc_x = tl.dot(a, dx.to(tl.float32), acc_x, input_precision="ieee")
        acc_y = tl.dot(a, dy.to(tl.float32), acc_y, input_precision="ieee")
        acc_z = tl.dot(a, dz.to(tl.float32), acc_z, input_precision="ieee")
    else:
        a = a.to(acc_x.dtype)
        acc_x = tl.dot(a, dx.to(acc_x.dtype), acc_x, input_precision=PREC, out_dtype=acc_x.dtype)
        acc_y = tl.dot(a, dy.to(acc_x.dtype), acc_y, input_precision=PREC, out_dtype=acc_x.dtype)
        acc_z = tl.dot(a, dz.to(acc_x.dtype), acc_z, input_precision=PREC, out_dtype=acc_x.dtype)
    return acc_x, acc_y, acc_z


@triton.jit
def _blend(coeffs_ptr, dirs_ptr, tmpl_ptr, chunk_list_ptr, chunk_count_ptr, rb, mb, rn, vb,
           C_PAD, N_PAD, MAX_CHUNKS, ACC_DT: tl.constexpr, SPARSE: tl.constexpr, PREC: tl.constexpr,
           BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """v_posed of one tile: three (BLOCK_B, BLOCK_N) coordinate tiles."""
    acc_x = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
    acc_y = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
    acc_z = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
    if SPARSE:
        count = tl.load(chunk_count_ptr + vb)
        for i in range(count):
            c0 = tl.load(chunk_list_ptr + vb * MAX_CHUNKS + i) * BLOCK_C
            acc_x, acc_y, acc_z = _blend_chunk(coeffs_ptr, dirs_ptr, rb, mb, rn, c0, C_PAD, N_PAD,
                                               acc_x, acc_y, acc_z, PREC, BLOCK_C)
    else:
        for c0 in range(0, C_PAD, BLOCK_C):
            acc_x, acc_y, acc_z = _blend_chunk(coeffs_ptr, dirs_ptr, rb, mb, rn, c0, C_PAD, N_PAD,
                                               acc_x, acc_y, acc_z, PREC, BLOCK_C)
    px = tl.load(tmpl_ptr + rn).to(ACC_DT)[None, :] + acc_x
    py = tl.load(tmpl_ptr + N_PAD + rn).to(ACC_DT)[None, :] + acc_y
    pz = tl.load(tmpl_ptr + 2 * N_PAD + rn).to(ACC_DT)[None, :] + acc_z
    return px, py, pz


@triton.jit
def blend_skin_fwd_kernel(
    coeffs_ptr, transforms_ptr, transl_ptr, tmpl_ptr, dirs_ptr, sidx_ptr, sw_ptr,
    chunk_list_ptr, chunk_count_ptr, out_ptr,
    B, N, C_PAD, N_PAD, MAX_CHUNKS,
    NJ: tl.constexpr, K: tl.constexpr, HAS_TRANSL: tl.constexpr, SPARSE: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, LIST_BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    vb = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = vb * BLOCK_N + tl.arange(0, BLOCK_N)
    mb = rb < B
    ACC_DT: tl.constexpr = out_ptr.dtype.element_ty
    lb = (vb * BLOCK_N) // LIST_BLOCK_N  # the block-sparsity block holding this tile
    px, py, pz = _blend(coeffs_ptr, dirs_ptr, tmpl_ptr, chunk_list_ptr, chunk_count_ptr, rb, mb, rn, lb,
                        C_PAD, N_PAD, MAX_CHUNKS, ACC_DT, SPARSE, PREC, BLOCK_B, BLOCK_N, BLOCK_C)

    # rows past B read sample B-1's transforms (always in bounds, no mask) and are never stored
    t_row = tl.minimum(rb, B - 1)[:, None] * (NJ * 12)
    ox = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
    oy = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
    oz = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
    for k in tl.static_range(K):
        j = tl.load(sidx_ptr + rn * K + k)
        w = tl.load(sw_ptr + rn * K + k)[None, :]
        t = transforms_ptr + (t_row + j[None, :] * 12)  # int32 offsets, one 64-bit address per element
        ox += w * (tl.load(t) * px + tl.load(t + 1) * py + tl.load(t + 2) * pz + tl.load(t + 3))
        oy += w * (tl.load(t + 4) * px + tl.load(t + 5) * py + tl.load(t + 6) * pz + tl.load(t + 7))
        oz += w * (tl.load(t + 8) * px + tl.load(t + 9) * py + tl.load(t + 10) * pz + tl.load(t + 11))
    if HAS_TRANSL:
        ox += tl.load(transl_ptr + rb * 3 + 0, mask=mb, other=0.0)[:, None]
        oy += tl.load(transl_ptr + rb * 3 + 1, mask=mb, other=0.0)[:, None]
        oz += tl.load(transl_ptr + rb * 3 + 2, mask=mb, other=0.0)[:, None]
    mo = mb[:, None] & (rn < N)[None, :]
    out = out_ptr + rb[:, None] * (N * 3) + rn[None, :] * 3
    tl.store(out + 0, ox, mask=mo)
    tl.store(out + 1, oy, mask=mo)
    tl.store(out + 2, oz, mask=mo)


@triton.jit
def blend_skin_bwd_kernel(
    g_out_ptr, coeffs_ptr, transforms_ptr, tmpl_ptr, dirs_ptr, sidx_ptr, sw_ptr, wdense_ptr,
    chunk_list_ptr, chunk_count_ptr,
    gp_ptr, part_t_ptr, part_transl_ptr,
    B, N, C_PAD, N_PAD, MAX_CHUNKS, NUM_VBLOCKS, NUM_SPLITS,
    NJ: tl.constexpr, JP: tl.constexpr, K: tl.constexpr, SPARSE: tl.constexpr, PREC: tl.constexpr,
    T_PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    LIST_BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    rj = tl.arange(0, JP)
    ACC_DT: tl.constexpr = g_out_ptr.dtype.element_ty
    t_row = tl.minimum(rb, B - 1)[:, None] * (NJ * 12)
    # dL/dA_j, 12 entries, each (BLOCK_B, JP); dL/dtransl
    a00 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a01 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a02 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a03 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a10 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a11 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a12 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a13 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a20 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a21 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a22 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    a23 = tl.zeros((BLOCK_B, JP), dtype=ACC_DT)
    sx = tl.zeros((BLOCK_B,), dtype=ACC_DT)
    sy = tl.zeros((BLOCK_B,), dtype=ACC_DT)
    sz = tl.zeros((BLOCK_B,), dtype=ACC_DT)
    for vb in range(pid_s, NUM_VBLOCKS, NUM_SPLITS):
        rn = vb * BLOCK_N + tl.arange(0, BLOCK_N)
        lb = (vb * BLOCK_N) // LIST_BLOCK_N
        px, py, pz = _blend(coeffs_ptr, dirs_ptr, tmpl_ptr, chunk_list_ptr, chunk_count_ptr, rb, mb, rn, lb,
                            C_PAD, N_PAD, MAX_CHUNKS, ACC_DT, SPARSE, PREC, BLOCK_B, BLOCK_N, BLOCK_C)
        mo = mb[:, None] & (rn < N)[None, :]
        g = g_out_ptr + rb[:, None] * (N * 3) + rn[None, :] * 3
        gx = tl.load(g + 0, mask=mo, other=0.0)
        gy = tl.load(g + 1, mask=mo, other=0.0)
        gz = tl.load(g + 2, mask=mo, other=0.0)
        # dL/dv_posed = sum_k w_k R_k^T dL/dv
        qx = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
        qy = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
        qz = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC_DT)
        for k in tl.static_range(K):
            j = tl.load(sidx_ptr + rn * K + k)
            w = tl.load(sw_ptr + rn * K + k)[None, :]
            t = transforms_ptr + (t_row + j[None, :] * 12)
            wx = w * gx
            wy = w * gy
            wz = w * gz
            qx += tl.load(t) * wx + tl.load(t + 4) * wy + tl.load(t + 8) * wz
            qy += tl.load(t + 1) * wx + tl.load(t + 5) * wy + tl.load(t + 9) * wz
            qz += tl.load(t + 2) * wx + tl.load(t + 6) * wy + tl.load(t + 10) * wz
        gp = gp_ptr + rb[:, None] * N_PAD + rn[None, :]
        tl.store(gp, qx, mask=mo)
        tl.store(gp + B * N_PAD, qy, mask=mo)
        tl.store(gp + 2 * B * N_PAD, qz, mask=mo)
        # dL/dA_j[i, :] = sum_v W[v, j] g_i (v_posed, 1)
        wd = tl.load(wdense_ptr + rn[:, None] * JP + rj[None, :])
        a00 = tl.dot(gx * px, wd, a00, input_precision=T_PREC, out_dtype=ACC_DT)
        a01 = tl.dot(gx * py, wd, a01, input_precision=T_PREC, out_dtype=ACC_DT)
        a02 = tl.dot(gx * pz, wd, a02, input_precision=T_PREC, out_dtype=ACC_DT)
        a03 = tl.dot(gx, wd, a03, input_precision=T_PREC, out_dtype=ACC_DT)
        a10 = tl.dot(gy * px, wd, a10, input_precision=T_PREC, out_dtype=ACC_DT)
        a11 = tl.dot(gy * py, wd, a11, input_precision=T_PREC, out_dtype=ACC_DT)
        a12 = tl.dot(gy * pz, wd, a12, input_precision=T_PREC, out_dtype=ACC_DT)
        a13 = tl.dot(gy, wd, a13, input_precision=T_PREC, out_dtype=ACC_DT)
        a20 = tl.dot(gz * px, wd, a20, input_precision=T_PREC, out_dtype=ACC_DT)
        a21 = tl.dot(gz * py, wd, a21, input_precision=T_PREC, out_dtype=ACC_DT)
        a22 = tl.dot(gz * pz, wd, a22, input_precision=T_PREC, out_dtype=ACC_DT)
        a23 = tl.dot(gz, wd, a23, input_precision=T_PREC, out_dtype=ACC_DT)
        sx += tl.sum(gx, axis=1)
        sy += tl.sum(gy, axis=1)
        sz += tl.sum(gz, axis=1)
    mj = mb[:, None] & (rj < NJ)[None, :]
    pt = part_t_ptr + pid_s * (B * NJ * 12) + rb[:, None] * (NJ * 12) + rj[None, :] * 12
    tl.store(pt + 0, a00, mask=mj)
    tl.store(pt + 1, a01, mask=mj)
    tl.store(pt + 2, a02, mask=mj)
    tl.store(pt + 3, a03, mask=mj)
    tl.store(pt + 4, a10, mask=mj)
    tl.store(pt + 5, a11, mask=mj)
    tl.store(pt + 6, a12, mask=mj)
    tl.store(pt + 7, a13, mask=mj)
    tl.store(pt + 8, a20, mask=mj)
    tl.store(pt + 9, a21, mask=mj)
    tl.store(pt + 10, a22, mask=mj)
    tl.store(pt + 11, a23, mask=mj)
    ps = part_transl_ptr + pid_s * (B * 3) + rb * 3
    tl.store(ps + 0, sx, mask=mb)
    tl.store(ps + 1, sy, mask=mb)
    tl.store(ps + 2, sz, mask=mb)


@triton.jit
def blend_coeffs_bwd_kernel(
    gp_ptr, dirs_ptr, chunk_mask_ptr, part_c_ptr,
    B, N, C_PAD, N_PAD, NUM_CHUNKS, NUM_VBLOCKS, NUM_SPLITS,
    SPARSE: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, LIST_BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    chunk = tl.program_id(1)
    pid_s = tl.program_id(2)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    rc = chunk * BLOCK_C + tl.arange(0, BLOCK_C)
    ACC_DT: tl.constexpr = gp_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC_DT)
    for vb in range(pid_s, NUM_VBLOCKS, NUM_SPLITS):
        visit = True
        if SPARSE:
            visit = tl.load(chunk_mask_ptr + ((vb * BLOCK_N) // LIST_BLOCK_N) * NUM_CHUNKS + chunk) != 0
        if visit:
            rn = vb * BLOCK_N + tl.arange(0, BLOCK_N)
            gp = gp_ptr + rb[:, None] * N_PAD + rn[None, :]
            mg = mb[:, None] & (rn < N)[None, :]
            d = dirs_ptr + rc[None, :] * N_PAD + rn[:, None]
            acc = _dot(tl.load(gp, mask=mg, other=0.0), tl.load(d), acc, PREC)
            acc = _dot(tl.load(gp + B * N_PAD, mask=mg, other=0.0), tl.load(d + C_PAD * N_PAD), acc, PREC)
            acc = _dot(tl.load(gp + 2 * B * N_PAD, mask=mg, other=0.0), tl.load(d + 2 * C_PAD * N_PAD), acc, PREC)
    tl.store(part_c_ptr + pid_s * (B * C_PAD) + rb[:, None] * C_PAD + rc[None, :], acc, mask=mb[:, None])


# ----------------------------------------------------------------------------- prepared data
@dataclass
class SkinMesh:
    """A mesh (all vertices, or a joint set's support) in the layouts the kernels read."""

    num_vertices: int
    template_planes: torch.Tensor  # (3, N_PAD)
    dirs_planes: torch.Tensor  # (3, C_PAD, N_PAD), the model's dtype
    dirs_planes_bf16: Optional[torch.Tensor]  # the same in bfloat16 (float32 models only)
    skin_indices: torch.Tensor  # (N_PAD, K) int32
    skin_weights: torch.Tensor  # (N_PAD, K)
    weights_dense: torch.Tensor  # (N_PAD, JP) for the backward's dL/dA GEMM
    chunk_list: torch.Tensor  # (NUM_VBLOCKS, MAX_CHUNKS) int32: the non-zero coefficient chunks
    chunk_count: torch.Tensor  # (NUM_VBLOCKS,) int32
    chunk_mask: torch.Tensor  # (NUM_VBLOCKS, NUM_CHUNKS) int8
    sparse: bool  # run the block-sparse variant
    zero_tile_fraction: float
    block_n: int  # vertices per tile (the sparsity granularity)

    @property
    def c_pad(self) -> int:
        return self.dirs_planes.shape[1]

    def planes(self, precision: str) -> torch.Tensor:
        if precision == "bf16" and self.dirs_planes_bf16 is not None:
            return self.dirs_planes_bf16
        return self.dirs_planes


def default_block_n() -> int:
    return INTERPRETER_BLOCK_N if interpreting() else BLOCK_N


def build_skin_mesh(template, blend_dirs, skin_indices, skin_weights, weights, num_joints: int,
                    sparse: Optional[bool] = None, block_n: Optional[int] = None) -> SkinMesh:
    """template (N, 3), blend_dirs (3, C, N), skin_indices/skin_weights (N, K), weights (N, NJ)."""
    block_n = block_n or default_block_n()
    assert VERTEX_PAD % block_n == 0
    N = template.shape[0]
    C = blend_dirs.shape[1]
    dtype, device = template.dtype, template.device
    n_pad = round_up(max(N, 1), VERTEX_PAD)
    c_pad = round_up(C, BLOCK_C)
    planes = torch.zeros(3, c_pad, n_pad, dtype=dtype, device=device)
    planes[:, :C, :N] = blend_dirs.detach()
    tmpl = torch.zeros(3, n_pad, dtype=dtype, device=device)
    tmpl[:, :N] = template.detach().t()
    K = skin_indices.shape[1]
    sidx = torch.zeros(n_pad, K, dtype=torch.int32, device=device)
    sidx[:N] = skin_indices.to(torch.int32)
    sw = torch.zeros(n_pad, K, dtype=dtype, device=device)
    sw[:N] = skin_weights.detach()
    jp = lane_width(num_joints)
    wd = torch.zeros(n_pad, jp, dtype=dtype, device=device)
    wd[:N, :num_joints] = weights.detach()

    # block sparsity of the blend directions, tile = (BLOCK_C coefficients, BLOCK_N vertices)
    nvb, nch = n_pad // block_n, c_pad // BLOCK_C
    nonzero = (planes != 0).any(0).view(nch, BLOCK_C, nvb, block_n).any(3).any(1).t()
    nonzero = np.ascontiguousarray(nonzero.cpu().numpy())  # (nvb, nch), row-major as the kernels index it
    real = nonzero[: cdiv(N, block_n)]  # blocks past the last vertex are never visited
    zero_fraction = float(1.0 - real.mean()) if real.size else 0.0
    counts = nonzero.sum(1).astype(np.int32)
    max_chunks = max(1, int(counts.max()) if counts.size else 1)
    lists = np.zeros((nvb, max_chunks), dtype=np.int32)
    for vb in range(nvb):
        ids = np.flatnonzero(nonzero[vb])
        lists[vb, : len(ids)] = ids
    if sparse is None:
        sparse = zero_fraction >= SPARSE_MIN_ZERO_FRACTION
    bf16 = planes.to(torch.bfloat16) if dtype == torch.float32 else None
    as_dev = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), dtype=dt).to(device).contiguous()  # noqa: E731
    return SkinMesh(
        num_vertices=N, template_planes=tmpl, dirs_planes=planes, dirs_planes_bf16=bf16,
        skin_indices=sidx, skin_weights=sw, weights_dense=wd,
        chunk_list=as_dev(lists, torch.int32), chunk_count=as_dev(counts, torch.int32),
        chunk_mask=as_dev(nonzero.astype(np.int8), torch.int8), sparse=bool(sparse),
        zero_tile_fraction=zero_fraction, block_n=block_n)


# ----------------------------------------------------------------------------- configs
TENSOR_CORE_PRECISIONS = ("tf32", "tf32x3", "bf16")

# Tile shapes below were chosen with compile_check on sm_90 (ptxas: no spills); they still wait
# for timings on a GPU. A mesh built for the interpreter (block_n = INTERPRETER_BLOCK_N) runs
# one tile per sparsity block instead.


def forward_config(batch: int, dtype: torch.dtype, precision: str, block_n: int = BLOCK_N) -> dict:
    """Tile sizes of the forward kernel (shared with compile_check). block_n: the mesh's."""
    if block_n > BLOCK_N:  # interpreter
        return dict(BLOCK_B=batch_block(batch, 16, 64), BLOCK_N=block_n, BLOCK_C=BLOCK_C, LIST_BLOCK_N=block_n,
                    num_warps=4, num_stages=2)
    if dtype == torch.float64:
        bb, bn, warps = batch_block(batch, 16, 32), 32, 8
    elif precision in TENSOR_CORE_PRECISIONS:  # 64 x 64 spills around the MMA accumulators
        bb, bn, warps = batch_block(batch, 16, 64), 32, 8
    else:  # IEEE float32 on CUDA cores: 3 x (64 x 64) accumulators over 8 warps, 254 registers
        bb = batch_block(batch, 16, 64)
        bn, warps = 64, 8 if bb >= 64 else 4
    return dict(BLOCK_B=bb, BLOCK_N=min(bn, block_n), BLOCK_C=BLOCK_C, LIST_BLOCK_N=block_n, num_warps=warps,
                num_stages=2)


def backward_config(batch: int, dtype: torch.dtype, precision: str, block_n: int = BLOCK_N) -> dict:
    if block_n > BLOCK_N:
        return dict(BLOCK_B=batch_block(batch, 16, 64), BLOCK_N=block_n, BLOCK_C=BLOCK_C, LIST_BLOCK_N=block_n,
                    num_warps=4, num_stages=2)
    bn = 32 if dtype == torch.float64 else 64
    return dict(BLOCK_B=16, BLOCK_N=min(bn, block_n), BLOCK_C=BLOCK_C, LIST_BLOCK_N=block_n, num_warps=8,
                num_stages=2)


def coeffs_backward_config(batch: int, dtype: torch.dtype, precision: str, block_n: int = BLOCK_N) -> dict:
    bb = batch_block(batch, 16, 64 if dtype == torch.float32 else 32)
    return dict(BLOCK_B=bb, BLOCK_N=block_n, BLOCK_C=BLOCK_C, LIST_BLOCK_N=block_n, num_warps=4, num_stages=2)


def backward_precisions(precision: str) -> tuple:
    """(GEMM precision of the backward's corrective GEMMs, precision of its dL/dA GEMM)."""
    if precision == "bf16":
        return "tf32", "tf32"
    if precision == "bf16_emulated":
        return "ieee", "ieee"
    return precision, precision


def _splits(device, programs_per_split: int, num_vblocks: int) -> int:
    if interpreting():
        return min(num_vblocks, 4)
    return max(1, min(num_vblocks, cdiv(2 * sm_count(device), programs_per_split)))


# ----------------------------------------------------------------------------- launchers
def blend_skin_launch(coeffs, transforms, transl, template_planes, dirs_planes, skin_indices, skin_weights,
                      chunk_list, chunk_count, num_vertices: int, sparse: bool, precision: str):
    B, c_pad = coeffs.shape
    NJ = transforms.shape[1]
    N = num_vertices
    n_pad = template_planes.shape[1]
    coeffs = coeffs.contiguous()
    transforms = transforms.contiguous()
    out = empty((B, N, 3), coeffs)
    if B == 0 or N == 0:
        return out
    prec = kernel_precision(precision, coeffs.dtype)
    block_n = n_pad // chunk_count.shape[0]
    cfg = forward_config(B, coeffs.dtype, precision, block_n)
    grid = (cdiv(B, cfg["BLOCK_B"]), cdiv(N, cfg["BLOCK_N"]))
    blend_skin_fwd_kernel[grid](
        coeffs, transforms, coeffs if transl is None else transl.contiguous(), template_planes, dirs_planes,
        skin_indices, skin_weights, chunk_list, chunk_count, out,
        B, N, c_pad, n_pad, chunk_list.shape[1],
        NJ=NJ, K=skin_indices.shape[1], HAS_TRANSL=transl is not None, SPARSE=sparse, PREC=prec, **cfg)
    return out


def blend_skin_backward_launch(g_out, coeffs, transforms, template_planes, dirs_planes, skin_indices, skin_weights,
                               weights_dense, chunk_list, chunk_count, chunk_mask, num_vertices: int, sparse: bool,
                               precision: str):
    B, c_pad = coeffs.shape
    NJ = transforms.shape[1]
    N = num_vertices
    n_pad = template_planes.shape[1]
    block_n = n_pad // chunk_count.shape[0]
    g_out = g_out.contiguous()
    coeffs = coeffs.contiguous()
    transforms = transforms.contiguous()
    prec, t_prec = backward_precisions(kernel_precision(precision, coeffs.dtype))
    # 1: dL/dv_posed planes, dL/dA and dL/dtransl partial sums over vertex splits
    cfg = backward_config(B, coeffs.dtype, precision, block_n)
    nvb = cdiv(N, cfg["BLOCK_N"])
    nbt = cdiv(B, cfg["BLOCK_B"])
    splits = _splits(coeffs.device, nbt, nvb)
    gp = empty((3, B, n_pad), coeffs)
    part_t = empty((splits, B, NJ, 12), coeffs)
    part_transl = empty((splits, B, 3), coeffs)
    blend_skin_bwd_kernel[(nbt, splits)](
        g_out, coeffs, transforms, template_planes, dirs_planes, skin_indices, skin_weights, weights_dense,
        chunk_list, chunk_count, gp, part_t, part_transl,
        B, N, c_pad, n_pad, chunk_list.shape[1], nvb, splits,
        NJ=NJ, JP=weights_dense.shape[1], K=skin_indices.shape[1], SPARSE=sparse, PREC=prec, T_PREC=t_prec, **cfg)
    # 2: dL/dcoeffs = dL/dv_posed @ dirs^T, split over vertices
    cfg2 = coeffs_backward_config(B, coeffs.dtype, precision, block_n)
    nbt2 = cdiv(B, cfg2["BLOCK_B"])
    nch = c_pad // BLOCK_C
    nvb2 = cdiv(N, cfg2["BLOCK_N"])
    splits2 = _splits(coeffs.device, nbt2 * nch, nvb2)
    part_c = empty((splits2, B, c_pad), coeffs)
    blend_coeffs_bwd_kernel[(nbt2, nch, splits2)](
        gp, dirs_planes, chunk_mask, part_c, B, N, c_pad, n_pad, nch, nvb2, splits2,
        SPARSE=sparse, PREC=prec, **cfg2)
    return part_c.sum(0), part_t.sum(0), part_transl.sum(0)


# ----------------------------------------------------------------------------- torch ops
@torch.library.custom_op("hmr_fast::blend_skin", mutates_args=())
def blend_skin_op(coeffs: torch.Tensor, transforms: torch.Tensor, transl: Optional[torch.Tensor],
                  template_planes: torch.Tensor, dirs_planes: torch.Tensor, skin_indices: torch.Tensor,
                  skin_weights: torch.Tensor, weights_dense: torch.Tensor, chunk_list: torch.Tensor,
                  chunk_count: torch.Tensor, chunk_mask: torch.Tensor, num_vertices: int, sparse: bool,
                  precision: str) -> torch.Tensor:
    """Posed, skinned vertices (B, num_vertices, 3) from blend coefficients (B, C_PAD) and
    skinning transforms (B, NJ, 12), plus transl (B, 3) when given."""
    return blend_skin_launch(coeffs, transforms, transl, template_planes, dirs_planes, skin_indices, skin_weights,
                             chunk_list, chunk_count, num_vertices, sparse, precision)


@blend_skin_op.register_fake
def _(coeffs, transforms, transl, template_planes, dirs_planes, skin_indices, skin_weights, weights_dense,
      chunk_list, chunk_count, chunk_mask, num_vertices, sparse, precision):
    return coeffs.new_empty((coeffs.shape[0], num_vertices, 3))


@torch.library.custom_op("hmr_fast::blend_skin_backward", mutates_args=())
def blend_skin_backward_op(g_vertices: torch.Tensor, coeffs: torch.Tensor, transforms: torch.Tensor,
                           template_planes: torch.Tensor, dirs_planes: torch.Tensor, skin_indices: torch.Tensor,
                           skin_weights: torch.Tensor, weights_dense: torch.Tensor, chunk_list: torch.Tensor,
                           chunk_count: torch.Tensor, chunk_mask: torch.Tensor, num_vertices: int, sparse: bool,
                           precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dcoeffs (B, C_PAD), dL/dtransforms (B, NJ, 12), dL/dtransl (B, 3))."""
    return blend_skin_backward_launch(g_vertices, coeffs, transforms, template_planes, dirs_planes, skin_indices,
                                      skin_weights, weights_dense, chunk_list, chunk_count, chunk_mask,
                                      num_vertices, sparse, precision)


@blend_skin_backward_op.register_fake
def _(g_vertices, coeffs, transforms, template_planes, dirs_planes, skin_indices, skin_weights, weights_dense,
      chunk_list, chunk_count, chunk_mask, num_vertices, sparse, precision):
    return torch.empty_like(coeffs), torch.empty_like(transforms), coeffs.new_empty((coeffs.shape[0], 3))


def _setup(ctx, inputs, output):
    (coeffs, transforms, transl, template_planes, dirs_planes, skin_indices, skin_weights, weights_dense,
     chunk_list, chunk_count, chunk_mask, num_vertices, sparse, precision) = inputs
    ctx.save_for_backward(coeffs, transforms, template_planes, dirs_planes, skin_indices, skin_weights,
                          weights_dense, chunk_list, chunk_count, chunk_mask)
    ctx.static = (num_vertices, sparse, precision)
    ctx.has_transl = transl is not None


def _grad(ctx, g_vertices):
    g_coeffs, g_transforms, g_transl = torch.ops.hmr_fast.blend_skin_backward(
        g_vertices, *ctx.saved_tensors, *ctx.static)
    return (g_coeffs, g_transforms, g_transl if ctx.has_transl else None) + (None,) * 11


blend_skin_op.register_autograd(_grad, setup_context=_setup)
