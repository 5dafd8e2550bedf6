"""`hmr-fast <command>`: one table of commands; each lives in the module of its feature.

Every command module exposes `add_arguments(parser)` and `run(args) -> int`, and is
imported only when its command runs, so `hmr-fast info` stays quick. Errors in what the user
gave (hmr_fast.errors.HmrFastError, a missing or existing file) print as one line,
`hmr-fast COMMAND: message`, and exit 2; `--debug` (or HMR_FAST_DEBUG=1) shows their
traceback as well. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from hmr_fast.errors import HmrFastError

USER_ERRORS = (HmrFastError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)

COMMANDS = {
    # name: (module, one-line help)
    "info": ("hmr_fast.info", "versions, devices and which SMPL backends are usable"),
    "mannequin": ("hmr_fast.body.mannequin", "write the built-in SMPL-format mannequin model"),
    "smpl": ("hmr_fast.body.run_smpl", "pose the SMPL body (mannequin by default) and save the mesh"),
    "synth": ("hmr_fast.data.synth", "render a synthetic training set of the mannequin"),
    "train": ("hmr_fast.training.train", "train HMR from a YAML config"),
    "eval": ("hmr_fast.training.evaluate", "MPJPE / PA-MPJPE / PCK of a checkpoint on a dataset"),
    "import": ("hmr_fast.model.import_cli", "import another project's checkpoint (SPIN) as an hmr_fast checkpoint"),
    "pack": ("hmr_fast.model.checkpoint", "pack a checkpoint for shipping: inference weights only, float16"),
    "export": ("hmr_fast.export.cli", "export a checkpoint to ONNX, TensorRT or AOTInductor"),
    "fit": ("hmr_fast.infer.fitting", "fit SMPL to keypoint files (OpenPose, COCO, SPIN, npz), batched"),
    "video": ("hmr_fast.infer.video", "recover meshes from a video, image folder or webcam"),
    "images": ("hmr_fast.infer.people.images", "every person in every photograph: meshes fitted to each"),
    "demo": ("hmr_fast.infer.demo", "the end-to-end demo on a synthetic clip, nothing downloaded"),
}


def _available_commands() -> dict:
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_text)
    return found


def main(argv=None) -> int:
    commands = _available_commands()
    parser = argparse.ArgumentParser(prog="hmr-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in commands.items():
        sub.add_parser(name, help=help_text, add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        parser.parse_args(argv)  # prints usage / the error for an unknown command
        return 2
    name = argv[0]
    module = importlib.import_module(commands[name][0])
    command_parser = argparse.ArgumentParser(prog=f"hmr-fast {name}", description=commands[name][1])
    module.add_arguments(command_parser)
    command_parser.add_argument("--debug", action="store_true",
                                help="show the traceback of an error, not just its one-line message")
    args = command_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except USER_ERRORS as exc:
        if args.debug or os.environ.get("HMR_FAST_DEBUG") == "1":
            raise
        print(f"hmr-fast {name}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
