"""`hmr-fast info`: versions, devices, and which SMPL / inference backends are usable here (and why not)."""
from __future__ import annotations

import importlib
import os
import platform


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - report any import failure as the reason
        return f"not usable ({type(exc).__name__}: {exc})"


def _triton_status(device) -> tuple:
    try:
        from hmr_fast.kernels import triton_usable
    except Exception as exc:  # noqa: BLE001
        return False, f"hmr_fast.kernels does not import: {exc}"
    return triton_usable(device)


def collect() -> dict:
    """Everything `info` prints, as a dict (also used by benchmarks to stamp their results)."""
    import torch

    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    gpu = torch.device("cuda", 0) if torch.cuda.is_available() else None
    triton_dev = gpu if gpu is not None else torch.device("cpu")
    ok, why = _triton_status(triton_dev)
    backends = {
        "smpl/reference": (True, "pure torch, any device"),
        "smpl/reference C loops (cpu)": _cpu_kernels_status(),
        f"smpl/triton ({triton_dev.type})": (ok, why),
        "infer/onnxruntime": _import_status("onnxruntime"),
        "infer/tensorrt": _import_status("tensorrt", hint="pip install 'hmr_fast[trt]' (needs NVIDIA's index)"),
    }
    return {
        "versions": {
            "python": platform.python_version(), "hmr_fast": _version("hmr_fast"), "torch": torch.__version__,
            "triton": _version("triton"), "torchvision": _version("torchvision"), "numpy": _version("numpy"),
            "opencv": _version("cv2"), "smplx": _version("smplx"),
        },
        "devices": devices,
        "backends": backends,
        "env": {"TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "")},
    }


def _cpu_kernels_status() -> tuple:
    from hmr_fast.kernels import cpu

    line = cpu.status()
    return line.startswith("compiled"), line


def _import_status(module: str, hint: str = "") -> tuple:
    try:
        importlib.import_module(module)
        return True, "installed"
    except Exception as exc:  # noqa: BLE001
        return False, f"{module} does not import ({type(exc).__name__})" + (f"; {hint}" if hint else "")


def add_arguments(parser) -> None:
    del parser  # no options


def run(args) -> int:
    info = collect()
    print("versions:")
    for name, version in info["versions"].items():
        print(f"  {name:12s} {version}")
    print("devices:")
    for device in info["devices"]:
        print(f"  {device}")
    print("backends:")
    for name, (ok, why) in info["backends"].items():
        print(f"  {name:28s} {'yes' if ok else 'no '}  {why}")
    return 0
