"""The blend-shape GEMM on the CPU through oneDNN, its weight packed once per model.

`reference.blend_shapes` multiplies the blend coefficients (B, C) by the stacked
[shapedirs; posedirs] (C = 224 rows of 3 x 6890 columns, 18.5 MB in float32). At a few samples
MKL's GEMM behind torch.matmul re-packs that matrix on every call and runs far below the
core's peak; oneDNN's linear with the weight packed ahead of time (the op behind Inductor's
CPU weight prepacking) does not. Measured on one thread of the 2-core EPYC, the GEMM alone:
1.4 against 2.5-2.7 ms at B = 8, 8.5 against 9-12 ms at B = 64; the whole forward 1.3x faster
at B = 4 and 8 (1.2-1.3x with 2 threads), 1.03-1.08x at 16 to 64.

Used by `reference.pose_vertices` for float32 CPU tensors when torch has oneDNN (x86 and
most aarch64 wheels) and no gradient is wanted (with a hand-written backward, forward and
backward together ran slower from B = 32 on); elsewhere, and inside traced or compiled
graphs, the plain GEMM runs.
The packed weight is an opaque oneDNN tensor: it lives in `derived`'s cache beside the blend
directions (never in a module's state), and is rebuilt when they or the template change.
"""
from __future__ import annotations

import torch

from .derived import derived

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def usable(blend_dirs: torch.Tensor) -> bool:
    """True when oneDNN's packed GEMM can run on these blend directions here (never inside a
    traced or compiled graph: the compiler asks first, and does not trace the oneDNN check)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return (blend_dirs.device.type == "cpu" and blend_dirs.dtype == torch.float32 and _ONEDNN
            and torch._C._get_mkldnn_enabled())  # torch.backends.mkldnn.enabled, which a user may turn off


def blend_planes(coeffs, template, blend_dirs):
    """`reference.blend_shapes` by oneDNN: coeffs (B, C), template (N, 3), blend_dirs
    (3, C, N) -> (3, B, N) coordinate planes (a view of a (B, 3, N) tensor). Forward only (the
    op has no autograd formula): call where `usable(blend_dirs)` and nothing needs a gradient."""
    weight, bias = derived("cpu_gemm", blend_dirs, _pack, template)
    out = torch.ops.mkldnn._linear_pointwise(coeffs.contiguous(), weight, bias, "none", [], "")
    return out.view(coeffs.shape[0], 3, -1).transpose(0, 1)


def _pack(blend_dirs, template):
    """oneDNN's packed weight for blend_dirs (3, C, N) and the template as its bias, both with
    rows in (coordinate, vertex) order."""
    C, N = blend_dirs.shape[1:]
    weight = blend_dirs.permute(0, 2, 1).reshape(3 * N, C).contiguous()
    return torch.ops.mkldnn._reorder_linear_weight(weight), template.t().reshape(3 * N).contiguous()
