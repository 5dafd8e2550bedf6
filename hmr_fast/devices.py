"""Where things run and at what precision: the one resolver every command and API uses."""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from hmr_fast.errors import DeviceError, UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device=None) -> torch.device:
    """None or "auto": CUDA when torch sees a GPU, else the CPU. A CUDA device asked for
    where there is none is an error here, not a crash later."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device} was asked for, but torch sees no CUDA device here")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 on CUDA, fp32 on the CPU; fp16 only on CUDA (CPU convolutions lack it)."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("precision 'fp16' needs a CUDA device (CPU convolutions in fp16 are not supported); "
                         "use 'fp32' or 'bf16'")
    return precision


def cpu_threads() -> int:
    """Torch threads for a CPU pipeline that has other threads (decode, encode, render):
    half the cores. When a 2-core machine's cores are all taken, torch's two OpenMP threads
    wait on each other at every barrier (measured: 24 FPS video with one thread, 2 FPS with
    two), so one thread is the safe choice there."""
    return max(1, (os.cpu_count() or 2) // 2)


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Run the block with n torch threads (None: leave them), then restore the previous count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
