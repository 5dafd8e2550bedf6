"""Linear blend skinning on the CPU in one pass over the vertices: a small C kernel
(cpu_skin.c), compiled on first use by the machine's C compiler.

`reference.skin`, its plain-torch twin, forms every vertex's blended transform (12 numbers per
vertex and sample) as a GEMM over all 24 joints, writes it out, and reads it back to apply it.
SMPL's skinning weights have 2-4 non-zeros per vertex, so this kernel takes the weights in
sparse (CSR) form and, per vertex, blends and applies its few transforms in registers, adds the
translation and writes the posed vertex interleaved, the layout the forward returns. Measured on
one thread of the 2-core EPYC (skinning alone, the mannequin): 0.04 / 0.26 / 2.0 ms at B = 1 / 8
/ 64 against 0.17 / 0.8 / 12.6 ms for `reference.skin` on the whole mesh.

`reference.pose_vertices` uses it for CPU float32 and float64 when nothing needs a gradient
(there is no backward here; training runs the torch path). The library is built once per
machine into $HMR_FAST_CACHE (default ~/.cache/hmr_fast) with `$CC` (else cc, gcc or clang);
without a compiler, or with ENABLED set False, the torch path runs and `status()` says why.
ctypes releases the GIL during a call, so with several torch threads the samples (or, for one
sample, the vertices) are split across a thread pool.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .derived import derived

# Set False to run the torch path everywhere (for comparisons; the results agree to rounding).
ENABLED = True

# Vertices x samples below which a call stays on one thread: the handoff to the pool costs
# tens of microseconds, the kernel ~5 ns per vertex and sample.
PARALLEL_MIN = 65536

_SOURCE = Path(__file__).with_name("cpu_skin.c")
_POINTER, _LONG = ctypes.c_void_p, ctypes.c_long
_ARGTYPES = [_LONG] * 5 + [_POINTER, _LONG, _LONG] + [_POINTER] * 6 + [_LONG]


def usable(*tensors: torch.Tensor, joints: int = 0) -> bool:
    """True when the kernel can skin these tensors here: CPU, all float32 or all float64,
    outside traced and compiled graphs, the library built and `joints` within its limit."""
    if not ENABLED or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        return False
    lib = _library()[0]
    return lib is not None and joints <= lib.max_joints()


def status() -> str:
    """One line for `hmr-fast info`: where the library is, or why the torch path runs."""
    lib, detail = _library()
    if not ENABLED:
        return "off (hmr_fast.kernels.cpu_skin.ENABLED is False)"
    return f"compiled ({detail})" if lib is not None else f"unavailable, the torch path runs: {detail}"


def skin(planes, transforms, weights, transl, out, start=0):
    """Posed vertices start .. start + n of every sample, written into out (B, N, 3).

    planes (3, B, n): the blended rest vertices start .. start + n as coordinate planes (any
    strides with the vertices contiguous); transforms (B, J, 12) the rows of each joint's 3x4
    transform; weights (N, J) the skinning weights of the whole mesh; transl (B, 3) or None.
    """
    B, J = transforms.shape[:2]
    n = planes.shape[-1]
    if planes.stride(-1) != 1:
        planes = planes.contiguous()
    lib, _ = _library()
    if J > lib.max_joints():
        raise ValueError(f"cpu_skin.skin: at most {lib.max_joints()} joints (see usable), got {J}")
    rowptr, col, val = derived("cpu_skin", weights, _sparse_weights)
    transforms = transforms.contiguous()
    shift = None if transl is None else transl.contiguous()
    kernel = lib.skin_f32 if planes.dtype == torch.float32 else lib.skin_f64
    size = planes.element_size()

    def run(b0, b1, v0, v1):  # v0, v1: vertices of this chunk, 0 .. n
        kernel(b0, b1, start + v0, start + v1, J,
               planes.data_ptr() + v0 * size, planes.stride(1), planes.stride(0),
               transforms.data_ptr(), rowptr.data_ptr(), col.data_ptr(), val.data_ptr(),
               None if shift is None else shift.data_ptr(),
               out.data_ptr() + (start + v0) * 3 * size, out.stride(0))

    parts = _parts(B, n, torch.get_num_threads())
    if len(parts) == 1:
        run(*parts[0])
        return out
    pool = _pool(len(parts) - 1)
    pending = [pool.submit(run, *part) for part in parts[1:]]
    run(*parts[0])
    for job in pending:
        job.result()
    return out


def _parts(B, n, threads):
    """(b0, b1, v0, v1) ranges for the threads: whole samples when there are enough."""
    threads = min(threads, B * n // PARALLEL_MIN + 1)
    if threads <= 1:
        return [(0, B, 0, n)]
    if B >= threads:
        cuts = [B * i // threads for i in range(threads + 1)]
        return [(cuts[i], cuts[i + 1], 0, n) for i in range(threads)]
    cuts = [n * i // threads for i in range(threads + 1)]
    return [(0, B, cuts[i], cuts[i + 1]) for i in range(threads)]


_POOL_LOCK = threading.Lock()
_POOL: list = [None, 0]  # the executor and its worker count


def _pool(workers):
    with _POOL_LOCK:
        if _POOL[1] < workers:
            if _POOL[0] is not None:
                _POOL[0].shutdown(wait=False)
            _POOL[:] = [ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hmr_fast_skin"), workers]
        return _POOL[0]


def _sparse_weights(weights):
    """The skinning weights (N, J) in CSR form: row pointers and joint indices (int32) and the
    non-zero weights, each vertex's in joint order."""
    vertex, joint = weights.detach().nonzero(as_tuple=True)
    counts = torch.bincount(vertex, minlength=weights.shape[0])
    rowptr = torch.zeros(weights.shape[0] + 1, dtype=torch.int32)
    rowptr[1:] = counts.cumsum(0)
    return rowptr, joint.to(torch.int32), weights.detach()[vertex, joint].contiguous()


@functools.lru_cache(maxsize=None)
def _library():
    """(the loaded library or None, its path or why it is missing), built once per machine."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        return None, "no C compiler found (install gcc or clang, or set CC)"
    source = _SOURCE.read_bytes()
    cpu = _cpu_identity()
    # -march=native only where the CPU is identified: the key then keeps a shared cache folder
    # (a cluster's home directory) from handing one machine's build to another.
    flags = ["-O3", "-fPIC", "-shared"] + (["-march=native"] if cpu else [])
    key = hashlib.sha256(source + repr((compiler, flags, cpu, platform.machine())).encode()).hexdigest()[:16]
    folder = _cache_folder()
    path = folder / f"cpu_skin-{key}.so"
    try:
        if not path.exists():
            _compile(compiler, flags, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as err:
        lines = str(err).strip().splitlines()
        reason = f"could not build {_SOURCE.name} with {compiler}: {lines[-1] if lines else type(err).__name__}"
        warnings.warn(f"hmr_fast: {reason}; skinning on the CPU runs the slower torch path", stacklevel=3)
        return None, reason
    for name in ("skin_f32", "skin_f64"):
        getattr(lib, name).argtypes = _ARGTYPES
        getattr(lib, name).restype = None
    lib.max_joints.restype = ctypes.c_int
    return lib, str(path)


def _compile(compiler, flags, path):
    """Build into a temporary file beside `path`, then rename: another process building at the
    same moment never sees a half-written library."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", tmp, str(_SOURCE)], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0 and "-march=native" in flags:  # a compiler without it (older Apple clang)
            flags = [f for f in flags if f != "-march=native"]
            done = subprocess.run([compiler, *flags, "-o", tmp, str(_SOURCE)], capture_output=True, text=True,
                                  timeout=300)
        if done.returncode != 0:
            raise OSError(done.stderr or f"{compiler} exited with {done.returncode}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cache_folder() -> Path:
    root = os.environ.get("HMR_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hmr_fast")
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        if os.access(root, os.W_OK):
            return Path(root)
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="hmr_fast_"))  # a read-only home: this process only


def _cpu_identity():
    """The CPU's model and instruction-set flags (Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    except OSError:
        return None
    return hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()[:16] if lines else None
