"""Shared pieces of the kernels: triton import guard, dtypes, output allocation, sizes, and
whether a call wants a gradient (the Triton and CPU fast paths differ by that).

Nothing here launches a kernel. `triton` may be missing (macOS, CPU-only wheels): importing
this module then still works, and `HAVE_TRITON` is False.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

try:  # pragma: no cover - exercised only where triton is absent
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAVE_TRITON = False

# Every kernel computes in the dtype of its inputs: float32 (the product) or float64 (tests,
# and anyone who asks for it). The corrective GEMM's precision is a separate, opt-in setting.
GEMM_PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16")
_gemm_precision = "ieee"

# Tests set this: every output and partial-sum buffer is then allocated full of NaN instead of
# uninitialised, so an element a kernel forgot to write shows up as NaN.
FILL_OUTPUTS_WITH_NAN = False

# Streaming multiprocessors the grids are sized for (an H100 SXM has 132). Read off the device
# when there is one; under the interpreter it only sets how reductions are split.
_DEFAULT_SM_COUNT = 132


_interpreting = None

if HAVE_TRITON:
    @triton.jit
    def _probe():
        """Never launched: `triton.jit` makes it an InterpretedFunction under TRITON_INTERPRET=1,
        as it does every kernel decorated in the same process."""
        pass


def _interpreter_problem() -> str:
    """Why triton's interpreter cannot run the kernels with this numpy, or "".

    Triton 3.6's interpreter turns loop bounds into 1-element arrays and calls int() on them,
    which numpy >= 2.4 refuses (triton-lang/triton#9171, fixed in triton 3.7)."""
    import numpy

    version = lambda v: tuple(int(x) for x in v.split(".")[:2])  # noqa: E731
    if HAVE_TRITON and version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter cannot run the kernels with numpy "
                f"{numpy.__version__} (triton-lang/triton#9171): pip install 'numpy<2.4' or 'triton>=3.7' "
                "(on a GPU, triton 3.6 is fine)")
    return ""


INTERPRETER_PROBLEM = _interpreter_problem()


def interpreting() -> bool:
    """True when the kernels were created by triton's interpreter (TRITON_INTERPRET=1 at import)."""
    global _interpreting
    if _interpreting is None:
        if not HAVE_TRITON:
            return False
        _interpreting = type(_probe).__name__ == "InterpretedFunction"
    return _interpreting


NEEDS_CUDA = ("the Triton backend needs a CUDA GPU, or TRITON_INTERPRET=1 to run its kernels on the CPU "
              "(slow; for tests)")


def usable(device) -> tuple:
    """(usable, reason): can the kernels run on tensors of this device here?"""
    device = torch.device(device)
    if not HAVE_TRITON:
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1" or interpreting():
            if not interpreting():
                return False, ("TRITON_INTERPRET=1 was set after hmr_fast.kernels was imported; set it "
                               "before triton and hmr_fast.kernels are first imported")
            return not INTERPRETER_PROBLEM, INTERPRETER_PROBLEM
        return False, NEEDS_CUDA
    return False, f"the Triton backend runs on CUDA devices (or the CPU under TRITON_INTERPRET=1), not {device.type}"


def wants_grad(*tensors) -> bool:
    """Whether autograd will record this call: grad mode is on and an input (None allowed)
    requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not (t.device.type == "cpu" and interpreting() and not INTERPRETER_PROBLEM):
        raise RuntimeError(f"hmr_fast kernels cannot run on {t.device}: {usable(t.device)[1]}")


def set_gemm_precision(precision: str) -> None:
    """Precision of the pose-corrective GEMM (blend shapes) for float32 inputs, process-wide.

    "ieee" (default): true float32 products, on CUDA cores. "tf32x3": three TF32 tensor-core
    products per product (error close to float32). "tf32": one TF32 product (10-bit mantissa
    inputs). "bf16": blend directions and coefficients rounded to bfloat16, float32 accumulation.
    float64 inputs always run in IEEE float64. A layer attribute `gemm_precision` overrides this.
    """
    global _gemm_precision
    if precision not in GEMM_PRECISIONS:
        raise ValueError(f"gemm precision must be one of {GEMM_PRECISIONS}, got {precision!r}")
    _gemm_precision = precision


def get_gemm_precision() -> str:
    return _gemm_precision


@contextmanager
def gemm_precision(precision: str):
    """Temporarily set the corrective GEMM's precision: `with gemm_precision("tf32"): ...`."""
    previous = get_gemm_precision()
    set_gemm_precision(precision)
    try:
        yield
    finally:
        set_gemm_precision(previous)


def kernel_precision(precision: str, dtype: torch.dtype) -> str:
    """The constexpr the kernels take: float64 is always IEEE; bf16 is emulated by the interpreter.

    The interpreter neither emulates TF32 (it computes those products in float32) nor runs
    bfloat16 dots correctly, so there "bf16" rounds the operands to bfloat16 and multiplies in
    float32 ("bf16_emulated"); the GPU runs the real thing.
    """
    if dtype == torch.float64 or precision == "ieee":
        return "ieee"
    if precision == "bf16" and interpreting():
        return "bf16_emulated"
    return precision


def empty(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """An output or partial-sum buffer: uninitialised, or all NaN when FILL_OUTPUTS_WITH_NAN."""
    dtype = dtype or like.dtype
    if FILL_OUTPUTS_WITH_NAN and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _DEFAULT_SM_COUNT


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def lane_width(n: int) -> int:
    """Lanes a kernel gives n joints: a power of two (tl.arange) and at least 16 (tl.dot)."""
    return max(16, next_pow2(n))


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def batch_block(batch: int, smallest: int = 16, largest: int = 64) -> int:
    """Samples per program: the smallest power of two >= batch, clamped to [smallest, largest]."""
    return max(smallest, min(largest, next_pow2(batch)))
