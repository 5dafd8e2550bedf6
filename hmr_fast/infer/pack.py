"""Pack a training checkpoint for shipping: what inference reads, float16 weights, deflated.

    python -m hmr_fast.infer.pack RUN/last.pt hmr_fast/assets/demo_resnet18.pt

Keeps format, config, model and step (drops the discriminator, optimizers, RNG states),
stores floating-point weights as float16 (Predictor loads them into a float32 model), and
re-zips the torch archive with DEFLATE: torch.load reads compressed archives (not with
mmap=True), and the demo checkpoint fits the package's 25 MB budget.
"""
from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from hmr_fast.atomic import atomic_path
from hmr_fast.model.checkpoint import FORMAT, read_checkpoint


def pack(src, dst) -> Path:
    ckpt = read_checkpoint(src)
    model = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    dst = Path(dst)
    with atomic_path(dst) as packed, tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        plain = Path(tmp) / "plain.pt"
        torch.save({"format": FORMAT, "config": ckpt["config"], "model": model, "step": ckpt["step"]}, plain)
        with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info.filename))
    return dst


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = pack(*argv)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
