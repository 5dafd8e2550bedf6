"""Compile every kernel configuration for a GPU we may not have, and report its resources.

    python -m hmr_fast.kernels.compile_check --arch sm_90

runs `triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32))`
for each configuration the launchers use (no GPU or CUDA driver needed: triton ships ptxas),
then `ptxas -v` on the PTX for registers and spill bytes; shared memory is the compiled
kernel's `metadata.shared`. Prints one row per configuration and exits 1 if any fails.

Triton API notes: `ASTSource(fn, signature, constexprs, attrs)` with signature {name: type}
(constexpr params typed "constexpr") and attrs {(arg index,): [["tt.divisibility", 16]]} is the
form of triton 3.3 and later (3.6 to 3.8 here); triton <= 3.2 took an `AttrsDescriptor` and
index-keyed constants instead, which this module does not support.

The GPU machine runs triton 3.6, this one 3.8; to compile for the device's triton here:
    pip install --no-deps --target /tmp/triton36 triton==3.6.0
    PYTHONPATH=/tmp/triton36 python -m hmr_fast.kernels.compile_check --arch sm_90
(3.6's interpreter runs the kernel tests only with numpy < 2.4, triton-lang/triton#9171:
there they pass with numpy 2.3.5.)
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import blend_skin as bs  # noqa: E402
from . import joints_projection as jpj  # noqa: E402
from . import kinematic_chain as kc  # noqa: E402
from . import rotations as rg  # noqa: E402
from ._common import interpreting, lane_width, next_pow2  # noqa: E402

_INT_POINTERS = ("sidx", "support", "chunk_list", "chunk_count", "parent", "depth", "children")
_ALIGNED_INTS = ("C_PAD", "N_PAD")


@dataclass
class Spec:
    label: str
    kernel: object
    constexprs: dict
    float_type: str = "fp32"  # pointer element type of the float arguments
    pointer_types: dict = field(default_factory=dict)  # overrides, e.g. {"dirs_ptr": "*bf16"}
    num_warps: int = 4
    num_stages: int = 2

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else self.kernel.__name__

    def source(self) -> ASTSource:
        fn = self.kernel
        signature, attrs = {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in self.constexprs:
                signature[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                if arg in self.pointer_types:
                    signature[arg] = self.pointer_types[arg]
                elif arg == "chunk_mask_ptr":
                    signature[arg] = "*i8"
                elif any(key in arg for key in _INT_POINTERS):
                    signature[arg] = "*i32"
                else:
                    signature[arg] = "*" + self.float_type
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                signature[arg] = "i32"
                if arg in _ALIGNED_INTS:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        return ASTSource(fn=fn, signature=signature, constexprs=dict(self.constexprs), attrs=attrs)


def specs() -> list:
    """Every configuration the launchers can pick (float32, the product; float64 where it differs)."""
    out = []
    for ft in ("fp32", "fp64"):
        for kern in (rg.rodrigues_fwd_kernel, rg.rodrigues_bwd_kernel, rg.rot6d_fwd_kernel, rg.rot6d_bwd_kernel):
            out.append(Spec(ft, kern, dict(BLOCK=rg.BLOCK_ROWS), ft))
    nb, nj = 10, 24
    c_pad = 224
    chain = dict(NJ=nj, JP=lane_width(nj), NUM_LEVELS=9, BLOCK_B=kc.BLOCK_B)
    for ft, pose2rot in (("fp32", True), ("fp32", False), ("fp64", True)):
        label = f"{ft} {'axis-angle' if pose2rot else 'rotmat'}"
        out.append(Spec(label, kc.pose_chain_fwd_kernel,
                        dict(chain, POSE2ROT=pose2rot, NBP=next_pow2(nb), PAD_W=kc.pad_width(nb, nj, c_pad)), ft,
                        num_warps=kc.NUM_WARPS))
        out.append(Spec(label, kc.pose_chain_bwd_kernel,
                        dict(chain, POSE2ROT=pose2rot, MAXC=3, HAS_G_ROT=True, HAS_G_COEFFS=True, HAS_G_JOINTS=True,
                             HAS_G_TRANSFORMS=True), ft, num_warps=kc.NUM_WARPS))
    f32, f64 = torch.float32, torch.float64
    # blend + skin forward: batch tiles for B = 1 and B >= 64, every GEMM precision, sparse variant
    for ft, dtype, prec, batch, sparse in (
            ("fp32", f32, "ieee", 1, False), ("fp32", f32, "ieee", 4096, False), ("fp32", f32, "ieee", 4096, True),
            ("fp32", f32, "tf32x3", 4096, False), ("fp32", f32, "tf32", 4096, False),
            ("fp32", f32, "bf16", 4096, False), ("fp32", f32, "bf16", 1, False), ("fp64", f64, "ieee", 4096, False)):
        cfg = bs.forward_config(batch, dtype, prec)
        warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
        ptypes = {"dirs_ptr": "*bf16"} if prec == "bf16" else {}
        out.append(Spec(f"{ft} {prec} B>={min(batch, cfg['BLOCK_B'])} BB={cfg['BLOCK_B']}"
                        + (" sparse" if sparse else ""), bs.blend_skin_fwd_kernel,
                        dict(cfg, NJ=nj, K=4, HAS_TRANSL=True, SPARSE=sparse, PREC=prec), ft, ptypes, warps, stages))
    for ft, dtype, prec, sparse in (("fp32", f32, "ieee", False), ("fp32", f32, "ieee", True),
                                    ("fp32", f32, "tf32", False), ("fp32", f32, "bf16", False),
                                    ("fp64", f64, "ieee", False)):
        bprec, tprec = bs.backward_precisions(prec)
        ptypes = {"dirs_ptr": "*bf16"} if prec == "bf16" else {}
        cfg = bs.backward_config(4096, dtype, prec)
        warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
        label = f"{ft} {prec}" + (" sparse" if sparse else "")
        out.append(Spec(label, bs.blend_skin_bwd_kernel,
                        dict(cfg, NJ=nj, JP=32, K=4, SPARSE=sparse, PREC=bprec, T_PREC=tprec), ft, ptypes, warps,
                        stages))
        cfg = bs.coeffs_backward_config(4096, dtype, prec)
        warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
        out.append(Spec(label, bs.blend_coeffs_bwd_kernel, dict(cfg, SPARSE=sparse, PREC=bprec), ft, ptypes, warps,
                        stages))
    for ft, J, transl_in_verts, cam in (("fp32", 45, True, False), ("fp32", 19, False, True),
                                        ("fp64", 17, False, True)):
        jop = lane_width(J)
        common = dict(NJ=nj, JP=32, J=J, JOP=jop, BLOCK_B=jpj.BLOCK_B, BLOCK_S=jpj.BLOCK_S)
        label = f"{ft} J={J}" + (" verts+transl" if transl_in_verts else "") + (" cam" if cam else "")
        out.append(Spec(label, jpj.regress_project_fwd_kernel,
                        dict(common, HAS_TRANSL=True, TRANSL_IN_VERTS=transl_in_verts, HAS_CAM=cam), ft,
                        num_warps=jpj.NUM_WARPS))
        out.append(Spec(label, jpj.regress_project_bwd_kernel,
                        dict(common, HAS_G_JOINTS=True, HAS_G_KP=cam, HAS_TRANSL=True,
                             TRANSL_IN_VERTS=transl_in_verts, HAS_CAM=cam), ft, num_warps=jpj.NUM_WARPS))
    return out


def _ptxas_report(ptx: str, arch: str) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(int(arch[3:5])).path, "-v", f"--gpu-name={arch}", src, "-o",
                               os.path.join(tmp, "k.o")], capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill_st = re.search(r"(\d+) bytes spill stores", log)
    spill_ld = re.search(r"(\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return dict(regs=int(regs.group(1)) if regs else -1,
                spill_stores=int(spill_st.group(1)) if spill_st else -1,
                spill_loads=int(spill_ld.group(1)) if spill_ld else -1,
                stack=int(stack.group(1)) if stack else -1)


def compile_spec(spec: Spec, arch: str) -> dict:
    capability = int(arch[3:5])
    t0 = time.time()
    compiled = triton.compile(spec.source(), target=GPUTarget("cuda", capability, 32),
                              options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
    report = _ptxas_report(compiled.asm["ptx"], "sm_90a" if capability == 90 else arch)
    report.update(shared=compiled.metadata.shared, seconds=time.time() - t0)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sm_90", help="sm_XY, e.g. sm_90 (H100/H200), sm_80 (A100)")
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    args = parser.parse_args(argv)
    if interpreting():  # the kernels were built for the interpreter: start again without it
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [sys.executable, "-m", "hmr_fast.kernels.compile_check", *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(cmd, env=env).returncode
    if not re.fullmatch(r"sm_\d\d", args.arch):
        parser.error("--arch must look like sm_90")
    print(f"triton {triton.__version__}, torch {torch.__version__}, target {args.arch}")
    header = f"{'kernel':<28} {'configuration':<34} {'warps':>5} {'regs':>5} {'spill st/ld':>12} {'stack':>6} " \
             f"{'shared':>7} {'s':>5}"
    print(header)
    print("-" * len(header))
    failures = 0
    for spec in specs():
        if args.filter not in spec.name:
            continue
        try:
            r = compile_spec(spec, args.arch)
        except Exception as exc:  # noqa: BLE001 - report every failure, then fail
            failures += 1
            cause = f" (cause: {exc.__cause__!r})" if exc.__cause__ is not None else ""
            print(f"{spec.name:<28} {spec.label:<34} COMPILE ERROR: {type(exc).__name__}: {exc}{cause}"[:4000])
            continue
        print(f"{spec.name:<28} {spec.label:<34} {spec.num_warps:>5} {r['regs']:>5} "
              f"{str(r['spill_stores']) + '/' + str(r['spill_loads']):>12} {r['stack']:>6} {r['shared']:>7} "
              f"{r['seconds']:>5.1f}", flush=True)
    print(f"{failures} configuration(s) failed to compile" if failures else "all configurations compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
