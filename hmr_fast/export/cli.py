"""`hmr-fast export --checkpoint C --format onnx|tensorrt|aoti --out PATH`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hmr_fast.devices import DEVICES, resolve_device
from hmr_fast.model.artefact import SUFFIXES as BACKEND_SUFFIXES

from .aoti import export_aoti
from .onnx import export_onnx, verify_onnx
from .tensorrt import build_engine

FORMATS = ("onnx", "tensorrt", "aoti")
# the file suffixes of each format: those the backend that runs it recognises
SUFFIXES = {"onnx": BACKEND_SUFFIXES["onnxruntime"], "tensorrt": BACKEND_SUFFIXES["tensorrt"],
            "aoti": BACKEND_SUFFIXES["aoti"]}


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="an hmr_fast checkpoint (hmr-fast train's last.pt)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="output file: .onnx, .engine (TensorRT) or .pt2 (AOTInductor)")
    parser.add_argument("--precision", default=None,
                        help="onnx: fp32 (default) or fp16; tensorrt: fp16 (default) or fp32; aoti: fp32 (default), "
                             "bf16 or fp16 (CUDA only)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch (tensorrt profile, aoti dynamic dim)")
    parser.add_argument("--opt-batch", type=int, default=8, help="tensorrt: the batch the engine is tuned for")
    parser.add_argument("--timing-cache", help="tensorrt: timing cache file (default OUT.timing.cache)")
    parser.add_argument("--no-plugins", action="store_true",
                        help="tensorrt: build the plain ONNX SMPL graph, not the Triton-kernel plugins")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="aoti: where the package runs (default: cuda when available)")
    parser.add_argument("--verify", action="store_true",
                        help="onnx: compare onnxruntime with torch (1e-4) after export")
    parser.add_argument("--verbose", action="store_true", help="tensorrt: the builder's verbose log")


def run(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES[args.format]:
        raise SystemExit(f"hmr-fast export: --out for --format {args.format} must end in "
                         f"{' or '.join(SUFFIXES[args.format])}, got {out}")
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"hmr-fast export: --checkpoint {args.checkpoint} not found")
    if args.format == "onnx":
        path = export_onnx(args.checkpoint, out, args.opset, precision=args.precision or "fp32")
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        if args.verify:
            worst = verify_onnx(path, args.checkpoint, atol=1e-4 if (args.precision or "fp32") == "fp32" else 5e-2)
            print("onnxruntime vs torch, max abs difference: " + json.dumps({k: f"{v:.2e}" for k, v in worst.items()}))
        return 0
    if args.format == "tensorrt":
        try:
            meta = build_engine(args.checkpoint, out, args.precision or "fp16", args.max_batch, args.opt_batch,
                                args.timing_cache, plugins=not args.no_plugins, verbose=args.verbose)
        except ImportError as exc:
            print(f"hmr-fast export: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {out} ({meta['precision']}, batch 1..{meta['max_batch']}, SMPL: {meta['build']['smpl_graph']})")
        return 0
    device = resolve_device(args.device)
    path = export_aoti(args.checkpoint, out, device, args.max_batch, args.precision or "fp32")
    print(f"wrote {path} ({device}; load with torch._inductor.aoti_load_package, no hmr_fast needed)")
    return 0
