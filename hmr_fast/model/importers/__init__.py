"""Importers: other projects' released checkpoints as hmr_fast checkpoints, one file per source.

Each module (spin.py, ...) exposes
    NAME         the source's name on the command line (`hmr-fast import NAME FILE --out C.pt`)
    DESCRIPTION  one line: what file it reads
    convert(path, **options) -> (model_config dict, state dict of the HMR's weights)
and reads its file without running anything in it (load_torch_file: torch's weights-only
unpickler). A file that is not what the source releases is a CheckpointError, one line
naming the file and what is missing. `import_checkpoint` writes the result as an hmr_fast
checkpoint, which load_checkpoint, `eval`, `video`, `images`, `export` and `train`
(model.init) read like any other.

A new source (e.g. CLIFF's ResNet-50 release, whose fc1 also reads the box) adds its module
here, a regressor wiring in regressor.py if the network differs, and its name in SOURCES.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from hmr_fast.errors import UsageError

SOURCES = {"spin": "hmr_fast.model.importers.spin"}


def importer(name: str):
    if name not in SOURCES:
        raise UsageError(f"unknown source {name!r}; importers: {', '.join(sorted(SOURCES))}")
    return importlib.import_module(SOURCES[name])


def import_checkpoint(source: str, path, out, **options) -> Path:
    """Convert `path` (a `source` release) and write the hmr_fast checkpoint `out`."""
    from ..checkpoint import build_model, load_weights, save_checkpoint

    module = importer(source)
    model_config, state = module.convert(path, **options)
    model = build_model(model_config, pretrained=False)
    load_weights(model, state, path, skip_prefix="smpl.")  # every key and shape must fit
    config = {"model": model_config, "imported": {"source": source, "file": str(path)}}
    save_checkpoint(out, model, config, step=0)
    return Path(out)
