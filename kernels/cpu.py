"""The SMPL forward's small loops on the CPU as C (cpu.c), compiled on first use by the
machine's C compiler, for calls that need no gradient (inference, drawing, a fit's final pose).

Eager PyTorch runs Rodrigues and the kinematic chain as a hundred-odd tiny ops (~0.4 ms at one
sample, whatever the batch up to tens) and skinning as passes through memory. Here:
- `rodrigues`: axis-angle -> rotation matrices, the formulas of `reference.rodrigues_fast`;
- `chain`: the kinematic chain and skinning transforms (`reference.kinematic_chain` then
  `reference.skinning_transforms`), joint by joint;
- `skin`: linear blend skinning in one pass over the vertices. `reference.skin` forms every
  vertex's blended transform (12 numbers per vertex and sample) as a GEMM over all 24 joints,
  writes it out and reads it back to apply it; SMPL's skinning weights have 2-4 non-zeros per
  vertex, so this takes them in sparse (CSR) form, blends and applies each vertex's few
  transforms in registers, adds the translation and writes the posed vertex interleaved, the
  layout the forward returns. Measured on one thread of the 2-core EPYC (skinning alone, the
  mannequin): 0.04 / 0.26 / 2.0 ms at B = 1 / 8 / 64 against 0.17 / 0.8 / 12.6 ms for
  `reference.skin` on the whole mesh.

`reference` calls these for CPU float32 and float64 tensors when nothing needs a gradient
(there is no backward here; training runs the torch path) and outside traced or compiled graphs.
The library is built once per machine into $HMR_FAST_CACHE (default ~/.cache/hmr_fast) with
`$CC` (else cc, gcc or clang); without a compiler, or with ENABLED set False, the torch path runs
and `status()` says why. ctypes releases the GIL during a call, so with several torch threads
`skin` splits the samples (or, for one sample, the vertices) across a thread pool.
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

_MAX_JOINTS = 64  # MAX_JOINTS in cpu.c: the kernels keep a sample's joints on the stack

# Vertices x samples below which a call stays on one thread: the handoff to the pool costs
# tens of microseconds, the kernel ~5 ns per vertex and sample.
PARALLEL_MIN = 65536

_SOURCE = Path(__file__).with_name("cpu.c")
_POINTER, _LONG = ctypes.c_void_p, ctypes.c_long
_ARGTYPES = {
    "rodrigues": [_LONG, _POINTER, _POINTER],
    "chain": [_LONG, _LONG] + [_POINTER] * 5,
    "skin": [_LONG] * 5 + [_POINTER, _LONG, _LONG] + [_POINTER] * 6 + [_LONG],
}


def usable(*tensors: torch.Tensor, joints: int = 0) -> bool:
    """True when the C loops can run on these tensors here: CPU, all float32 or all float64,
    outside traced and compiled graphs, the library built and `joints` within its limit."""
    if not ENABLED or torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype or not _plain(t) for t in tensors):
        return False
    return joints <= _MAX_JOINTS and _library()[0] is not None


def _plain(t: torch.Tensor) -> bool:
    """A tensor with its own strided memory: not a subclass (fake, sparse, DTensor) nor a
    torch.func wrapper (vmap, grad), whose data the C loops could not address."""
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided
            and not torch._C._functorch.is_functorch_wrapped_tensor(t))


def status() -> str:
    """One line for `hmr-fast info`: where the library is, or why the torch path runs."""
    lib, detail = _library()
    if not ENABLED:
        return "off (hmr_fast.kernels.cpu.ENABLED is False)"
    return f"compiled ({detail})" if lib is not None else f"unavailable, the torch path runs: {detail}"


def _kernel(name, dtype):
    return getattr(_library()[0], f"{name}_f32" if dtype == torch.float32 else f"{name}_f64")


def rodrigues(axis_angle):
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices, contiguous."""
    w = axis_angle.contiguous()
    R = w.new_empty(*w.shape[:-1], 3, 3)
    _kernel("rodrigues", w.dtype)(w.numel() // 3, w.data_ptr(), R.data_ptr())
    return R


def chain(rot_mats, rest_joints, parents):
    """(skinning transforms (B, J, 12), posed joints (B, J, 3)) from local rotations
    (B, J, 3, 3) and rest joints (B, J, 3); parents a tuple with parents[j] < j (see
    `chain_usable`)."""
    B, J = rest_joints.shape[:2]
    rot_mats, rest_joints = rot_mats.contiguous(), rest_joints.contiguous()
    transforms, posed = rest_joints.new_empty(B, J, 12), rest_joints.new_empty(B, J, 3)
    _kernel("chain", rest_joints.dtype)(B, J, _parents(parents).data_ptr(), rot_mats.data_ptr(),
                                        rest_joints.data_ptr(), transforms.data_ptr(), posed.data_ptr())
    return transforms, posed


@functools.lru_cache(maxsize=64)
def chain_usable(parents: tuple) -> bool:
    """The C chain walks joints in index order: every parent must come before its child."""
    return len(parents) <= _MAX_JOINTS and parents[0] < 0 and all(0 <= p < j for j, p in enumerate(parents) if j)


@functools.lru_cache(maxsize=64)
def _parents(parents):
    return torch.tensor(parents, dtype=torch.int32)


def skin(planes, transforms, weights, transl, out, start=0):
    """Posed vertices start .. start + n of every sample, written into out (B, N, 3).

    planes (3, B, n): the blended rest vertices start .. start + n as coordinate planes (any
    strides with the vertices contiguous); transforms (B, J, 12) the rows of each joint's 3x4
    transform; weights (N, J) the skinning weights of the whole mesh; transl (B, 3) or None;
    out with each sample's (N, 3) rows contiguous (any stride between samples).
    """
    B, J = transforms.shape[:2]
    n = planes.shape[-1]
    if planes.stride(-1) != 1:
        planes = planes.contiguous()
    if J > _MAX_JOINTS:
        raise ValueError(f"cpu.skin: at most {_MAX_JOINTS} joints (see usable), got {J}")
    if out.stride()[1:] != (3, 1) or out.dtype != planes.dtype or out.shape[1] < start + n:
        raise ValueError(f"cpu.skin: out must be (B, >= {start + n}, 3) {planes.dtype} with rows of 3 "
                         f"contiguous, got {tuple(out.shape)} {out.dtype} strides {out.stride()}")
    rowptr, col, val = derived("cpu.skin", weights, _sparse_weights)
    transforms = transforms.contiguous()
    shift = None if transl is None else transl.contiguous()
    kernel = _kernel("skin", planes.dtype)
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
_POOL: list = [None, 0, 0]  # the executor, its worker count, the process it was made in


def _pool(workers):
    """The thread pool, grown to `workers`; made afresh in a forked child, whose copy of the
    parent's pool has no threads behind it."""
    with _POOL_LOCK:
        if _POOL[1] < workers or _POOL[2] != os.getpid():
            if _POOL[0] is not None and _POOL[2] == os.getpid():
                _POOL[0].shutdown(wait=False)
            _POOL[:] = [ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hmr_fast_cpu"), workers,
                        os.getpid()]
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
    libs = ["-lm"]
    key = hashlib.sha256(source + repr((compiler, flags, cpu, platform.machine())).encode()).hexdigest()[:16]
    path = _cache_folder() / f"cpu-{key}.so"
    try:
        if path.exists() and not _ours(path):  # someone else's file: build our own, for this process
            path = Path(tempfile.mkdtemp(prefix="hmr_fast_")) / path.name
        if not path.exists():
            _compile(compiler, flags, libs, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as err:
        lines = str(err).strip().splitlines()
        reason = f"could not build or load {_SOURCE.name} with {compiler}: {lines[-1] if lines else type(err).__name__}"
        warnings.warn(f"hmr_fast: {reason}; the CPU forward runs the slower torch path", stacklevel=3)
        return None, reason
    lib.max_joints.restype = ctypes.c_int
    if lib.max_joints() != _MAX_JOINTS:
        return None, f"{path} was built for {lib.max_joints()} joints, cpu.py expects {_MAX_JOINTS}"
    for name, argtypes in _ARGTYPES.items():
        for suffix in ("_f32", "_f64"):
            getattr(lib, name + suffix).argtypes = argtypes
            getattr(lib, name + suffix).restype = None
    return lib, str(path)


def _compile(compiler, flags, libs, path):
    """Build into a temporary file beside `path`, then rename: another process building at the
    same moment never sees a half-written library."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", tmp, str(_SOURCE), *libs], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0 and "-march=native" in flags:  # a compiler without it (older Apple clang)
            flags = [f for f in flags if f != "-march=native"]
            done = subprocess.run([compiler, *flags, "-o", tmp, str(_SOURCE), *libs], capture_output=True, text=True,
                                  timeout=300)
        if done.returncode != 0:
            raise OSError(done.stderr or f"{compiler} exited with {done.returncode}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _ours(path: Path) -> bool:
    """Whether a library found in the cache can be loaded: owned by this user and writable by
    no one else (a cache folder in a shared place, such as HMR_FAST_CACHE=/tmp, must not let
    another user plant the code this process runs)."""
    if not hasattr(os, "getuid"):
        return True
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


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
