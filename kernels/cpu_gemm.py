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
The packed weight is an opaque oneDNN tensor: it lives in a cache beside the blend
directions (never in a module's state), and is rebuilt when they change.
"""
from __future__ import annotations

import weakref

import torch

# id(blend_dirs) -> (a weak reference to it, what it was packed from, packed weight, bias); an
# entry goes when its tensor does (tensors compare elementwise, so they cannot key a WeakKeyDictionary).
_PACKED: dict = {}
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
    weight, bias = _packed(template, blend_dirs)
    out = torch.ops.mkldnn._linear_pointwise(coeffs.contiguous(), weight, bias, "none", [], "")
    return out.view(coeffs.shape[0], 3, -1).transpose(0, 1)


def _version(t):
    """In-place edits bump a tensor's version; inference tensors (made under inference_mode)
    keep none, and can be edited only inside inference_mode: their edits go unseen here."""
    return None if t.is_inference() else t._version


def _packed(template, blend_dirs):
    key = (_version(blend_dirs), template.data_ptr(), _version(template))
    entry = _PACKED.get(id(blend_dirs))
    if entry is None or entry[0]() is not blend_dirs or entry[1] != key:
        C, N = blend_dirs.shape[1:]
        weight = blend_dirs.permute(0, 2, 1).reshape(3 * N, C).contiguous()  # rows: (coordinate, vertex)
        ref = weakref.ref(blend_dirs, lambda _, i=id(blend_dirs): _PACKED.pop(i, None))
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        entry = _PACKED[id(blend_dirs)] = (ref, key, packed, template.t().reshape(3 * N).contiguous())
    return entry[2], entry[3]
