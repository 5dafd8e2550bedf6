"""`hmr-fast import SOURCE FILE --out C.pt`: another project's released checkpoint as an hmr_fast one.

    hmr-fast import spin data/model_checkpoint.pt --out spin.pt [--smpl-model models/smpl/SMPL_NEUTRAL.pkl]

The file is read without running anything in it (torch's weights-only unpickler); see
hmr_fast/model/importers/ (one module per source).
"""
from __future__ import annotations

from .importers import SOURCES, import_checkpoint, importer


def add_arguments(parser) -> None:
    parser.add_argument("source", choices=sorted(SOURCES), help="whose checkpoint it is")
    parser.add_argument("file", help="the released checkpoint (spin: SPIN's data/model_checkpoint.pt)")
    parser.add_argument("--out", required=True, help="the hmr_fast checkpoint to write")
    parser.add_argument("--smpl-model", default=None,
                        help="SMPL model file or folder the checkpoint's config names (default: the mannequin; "
                             "real images need SMPL's neutral model, the one the weights were trained with)")


def run(args) -> int:
    out = import_checkpoint(args.source, args.file, args.out, smpl_model=args.smpl_model)
    print(f"wrote {out} ({importer(args.source).NAME}: {args.file})")
    return 0
