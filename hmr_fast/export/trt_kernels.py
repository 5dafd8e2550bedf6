"""The SMPL Triton kernels in TensorRT's plugin calling convention, and their PTX.

TensorRT launches an ahead-of-time plugin kernel with its arguments in one order:
input pointers, then the extra int32 scalars the plugin declares, then output pointers.
hmr_fast's kernels (kernels/*.py) take inputs, outputs, then scalars. The adapters below
are @triton.jit functions in TensorRT's order that call those kernels unchanged (Triton
inlines the call), so the plugins run exactly the kernels the torch path runs, with every
size except the batch fixed as a constexpr. Three plugins make the SMPL forward:

    pose_chain       rotations (B, 24*9), betas -> rotations, blend coefficients, posed
                     joints, 3x4 skinning transforms               grid (B / BLOCK_B)
    blend_skin       coefficients, transforms -> vertices (B, V, 3) grid (B / BB, V / BLOCK_N)
    regress_project  vertices, posed joints, camera -> joints (B, J, 3), keypoints (B, J, 2)

`KernelSpec` holds one plugin's kernel, signature, constexprs and grid; `launch` runs it
through Triton (a CUDA GPU, or the CPU under TRITON_INTERPRET=1: how the tests check the
argument order and grid without a GPU), `compile_ptx` gives the PTX TensorRT embeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from hmr_fast.kernels import blend_skin as bs
from hmr_fast.kernels import joints_projection as jpj
from hmr_fast.kernels import kinematic_chain as kc
from hmr_fast.kernels._common import batch_block, cdiv, interpreting, lane_width, next_pow2
from hmr_fast.kernels.blend_skin import blend_skin_fwd_kernel
from hmr_fast.kernels.joints_projection import regress_project_fwd_kernel
from hmr_fast.kernels.kinematic_chain import pose_chain_fwd_kernel


@triton.jit
def trt_pose_chain(pose_ptr, betas_ptr, jt_ptr, jsd_ptr, parent_ptr, depth_ptr, B,
                   rot_ptr, coeffs_ptr, joints_ptr, transforms_ptr,
                   NB: tl.constexpr, C_PAD: tl.constexpr, NJ: tl.constexpr, JP: tl.constexpr,
                   NUM_LEVELS: tl.constexpr, NBP: tl.constexpr, PAD_W: tl.constexpr, BLOCK_B: tl.constexpr):
    pose_chain_fwd_kernel(pose_ptr, betas_ptr, jt_ptr, jsd_ptr, parent_ptr, depth_ptr,
                          rot_ptr, coeffs_ptr, joints_ptr, transforms_ptr, B, NB, C_PAD,
                          False, NJ, JP, NUM_LEVELS, NBP, PAD_W, BLOCK_B)


@triton.jit
def trt_blend_skin(coeffs_ptr, transforms_ptr, tmpl_ptr, dirs_ptr, sidx_ptr, sw_ptr, chunk_list_ptr,
                   chunk_count_ptr, B, out_ptr,
                   N: tl.constexpr, C_PAD: tl.constexpr, N_PAD: tl.constexpr, MAX_CHUNKS: tl.constexpr,
                   NJ: tl.constexpr, K: tl.constexpr, SPARSE: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, LIST_BLOCK_N: tl.constexpr):
    # no translation: the transl pointer is never read (HAS_TRANSL=False), coeffs stands in
    blend_skin_fwd_kernel(coeffs_ptr, transforms_ptr, coeffs_ptr, tmpl_ptr, dirs_ptr, sidx_ptr, sw_ptr,
                          chunk_list_ptr, chunk_count_ptr, out_ptr, B, N, C_PAD, N_PAD, MAX_CHUNKS,
                          NJ, K, False, SPARSE, PREC, BLOCK_B, BLOCK_N, BLOCK_C, LIST_BLOCK_N)


@triton.jit
def trt_regress_project(verts_ptr, support_ptr, regt_ptr, selt_ptr, rowsum_ptr, posed_ptr, cam_ptr, B,
                        joints_ptr, kp_ptr,
                        NSRC: tl.constexpr, S: tl.constexpr, NJ: tl.constexpr, JP: tl.constexpr, J: tl.constexpr,
                        JOP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr):
    # vertices without translation, a camera: joints and HMR keypoints (transl pointer unused)
    regress_project_fwd_kernel(verts_ptr, support_ptr, regt_ptr, selt_ptr, rowsum_ptr, posed_ptr, cam_ptr, cam_ptr,
                               joints_ptr, kp_ptr, B, NSRC, S, NJ, JP, J, JOP, False, True, True, BLOCK_B, BLOCK_S)


@dataclass
class KernelSpec:
    """One plugin's kernel: tensors in TensorRT's order, constexprs, launch shape.

    inputs / outputs: (name, "fp32" | "i32") pairs; the only scalar is the batch B.
    Grid: (cdiv(B, block_b), grid_y, 1).
    """

    op: str
    kernel: object
    inputs: tuple
    outputs: tuple
    constexprs: dict
    block_b: int
    grid_y: int = 1
    num_warps: int = 4
    num_stages: int = 2
    attrs: dict = field(default_factory=dict)  # the plugin node's attributes that made this spec

    def signature(self) -> dict:
        sig = {name: "*" + dtype for name, dtype in self.inputs}
        sig["B"] = "i32"
        sig.update({name: "*" + dtype for name, dtype in self.outputs})
        sig.update(dict.fromkeys(self.constexprs, "constexpr"))
        return sig

    def grid(self, batch: int) -> tuple:
        return (cdiv(batch, self.block_b), self.grid_y, 1)

    def launch(self, inputs, outputs, batch: int) -> None:
        """Run the adapter through Triton on torch tensors (CUDA, or the CPU interpreter)."""
        if len(inputs) != len(self.inputs) or len(outputs) != len(self.outputs):
            raise ValueError(f"{self.op}: expected {len(self.inputs)} inputs and {len(self.outputs)} outputs")
        if batch:
            self.kernel[self.grid(batch)](*inputs, batch, *outputs, **self.constexprs,
                                          num_warps=self.num_warps, num_stages=self.num_stages)


def pose_chain_spec(num_betas: int, num_joints: int, num_levels: int, c_pad: int) -> KernelSpec:
    NB, NJ = int(num_betas), int(num_joints)
    return KernelSpec(
        op="pose_chain", kernel=trt_pose_chain,
        inputs=(("pose_ptr", "fp32"), ("betas_ptr", "fp32"), ("jt_ptr", "fp32"), ("jsd_ptr", "fp32"),
                ("parent_ptr", "i32"), ("depth_ptr", "i32")),
        outputs=(("rot_ptr", "fp32"), ("coeffs_ptr", "fp32"), ("joints_ptr", "fp32"), ("transforms_ptr", "fp32")),
        constexprs=dict(NB=NB, C_PAD=int(c_pad), NJ=NJ, JP=lane_width(NJ), NUM_LEVELS=int(num_levels),
                        NBP=next_pow2(NB), PAD_W=kc.pad_width(NB, NJ, int(c_pad)), BLOCK_B=kc.BLOCK_B),
        block_b=kc.BLOCK_B, num_warps=kc.NUM_WARPS,
        attrs=dict(num_betas=NB, num_joints=NJ, num_levels=int(num_levels), c_pad=int(c_pad)))


def blend_skin_spec(num_vertices: int, n_pad: int, c_pad: int, max_chunks: int, num_joints: int, k: int,
                    sparse: int, block_n: int, batch_hint: int) -> KernelSpec:
    """batch_hint: the batch the tile size is chosen for (the optimisation profile's opt batch)."""
    cfg = bs.forward_config(int(batch_hint), torch.float32, "ieee", int(block_n))
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    return KernelSpec(
        op="blend_skin", kernel=trt_blend_skin,
        inputs=(("coeffs_ptr", "fp32"), ("transforms_ptr", "fp32"), ("tmpl_ptr", "fp32"), ("dirs_ptr", "fp32"),
                ("sidx_ptr", "i32"), ("sw_ptr", "fp32"), ("chunk_list_ptr", "i32"), ("chunk_count_ptr", "i32")),
        outputs=(("out_ptr", "fp32"),),
        constexprs=dict(N=int(num_vertices), C_PAD=int(c_pad), N_PAD=int(n_pad), MAX_CHUNKS=int(max_chunks),
                        NJ=int(num_joints), K=int(k), SPARSE=bool(sparse), PREC="ieee", **cfg),
        block_b=cfg["BLOCK_B"], grid_y=cdiv(int(num_vertices), cfg["BLOCK_N"]), num_warps=warps, num_stages=stages,
        attrs=dict(num_vertices=int(num_vertices), n_pad=int(n_pad), c_pad=int(c_pad), max_chunks=int(max_chunks),
                   num_joints=int(num_joints), k=int(k), sparse=int(sparse), block_n=int(block_n),
                   batch_hint=int(batch_hint)))


def regress_project_spec(num_source: int, support_size: int, num_chain: int, jp: int, num_joints: int, jop: int,
                         batch_hint: int) -> KernelSpec:
    bb = batch_block(int(batch_hint), 16, 32)  # the torch launcher's choice for this batch
    return KernelSpec(
        op="regress_project", kernel=trt_regress_project,
        inputs=(("verts_ptr", "fp32"), ("support_ptr", "i32"), ("regt_ptr", "fp32"), ("selt_ptr", "fp32"),
                ("rowsum_ptr", "fp32"), ("posed_ptr", "fp32"), ("cam_ptr", "fp32")),
        outputs=(("joints_ptr", "fp32"), ("kp_ptr", "fp32")),
        constexprs=dict(NSRC=int(num_source), S=int(support_size), NJ=int(num_chain), JP=int(jp), J=int(num_joints),
                        JOP=int(jop), BLOCK_B=bb, BLOCK_S=jpj.BLOCK_S),
        block_b=bb, num_warps=jpj.NUM_WARPS,
        attrs=dict(num_source=int(num_source), support_size=int(support_size), num_chain=int(num_chain), jp=int(jp),
                   num_joints=int(num_joints), jop=int(jop), batch_hint=int(batch_hint)))


SPEC_BUILDERS = {"pose_chain": pose_chain_spec, "blend_skin": blend_skin_spec,
                 "regress_project": regress_project_spec}


def spec_from_attrs(op: str, attrs: dict) -> KernelSpec:
    """The spec a plugin node's attributes describe (the inverse of KernelSpec.attrs)."""
    if op not in SPEC_BUILDERS:
        raise ValueError(f"unknown hmr_fast plugin {op!r}; known: {sorted(SPEC_BUILDERS)}")
    return SPEC_BUILDERS[op](**{k: int(v) for k, v in attrs.items()})


@dataclass
class CompiledPTX:
    name: str  # the kernel's entry symbol in the PTX
    ptx: str
    shared: int  # dynamic shared memory bytes the launch needs
    num_warps: int

    @property
    def block_x(self) -> int:
        return 32 * self.num_warps


def compile_ptx(spec: KernelSpec, capability: int = 90) -> CompiledPTX:
    """PTX of `spec`'s adapter for sm_<capability> (no GPU needed: triton ships ptxas)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreting():
        raise RuntimeError("compile_ptx needs the compiled kernels, but TRITON_INTERPRET=1 made them interpreted; "
                           "run it in a process started without TRITON_INTERPRET")
    source = ASTSource(fn=spec.kernel, signature=spec.signature(), constexprs=dict(spec.constexprs))
    compiled = triton.compile(source, target=GPUTarget("cuda", int(capability), 32),
                              options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
    meta = compiled.metadata
    # TensorRT passes exactly inputs, scalars and outputs: the scratch buffers newer tritons
    # append as trailing parameters must be unused.
    for attr in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, attr, 0):
            raise RuntimeError(f"{spec.op}: kernel needs {attr}={getattr(meta, attr)}, which a TensorRT AOT "
                               "plugin cannot provide")
    if meta.shared > 227 * 1024:
        raise RuntimeError(f"{spec.op}: kernel needs {meta.shared} bytes of shared memory")
    return CompiledPTX(name=meta.name, ptx=compiled.asm["ptx"], shared=int(meta.shared), num_warps=spec.num_warps)
