"""What an exported artefact carries besides its weights, and how a file's type is told.

Every export (`hmr-fast export`) stores the same metadata, as JSON: the export format tag,
the crop size, joint set and body model the graph needs, the output names and the training
config. ONNX files keep it in metadata_props[METADATA_KEY], AOTInductor packages in their
metadata under METADATA_KEY, TensorRT engines (which carry none of their own) in a sidecar
file ENGINE.json beside them. The file suffix says which inference backend runs a file.
"""
from __future__ import annotations

import json
from pathlib import Path

from hmr_fast.atomic import atomic_path
from hmr_fast.errors import CheckpointError

from .inference import OUTPUT_NAMES

EXPORT_FORMAT = "hmr_fast.export/1"
METADATA_KEY = "hmr_fast"
# backend -> the file suffixes it runs (anything else is an hmr_fast checkpoint)
SUFFIXES = {"onnxruntime": (".onnx",), "tensorrt": (".engine", ".plan", ".trt"), "aoti": (".pt2",)}


def backend_for_path(path) -> str:
    """The backend a file's suffix implies ("onnxruntime", "tensorrt", "aoti"), else "checkpoint"."""
    suffix = Path(str(path)).suffix.lower()
    return next((backend for backend, suffixes in SUFFIXES.items() if suffix in suffixes), "checkpoint")


def export_metadata(config: dict) -> dict:
    """The metadata of a graph exported from a checkpoint with this training config."""
    model = config["model"]
    return {"format": EXPORT_FORMAT, "img_size": int(model["img_size"]), "joint_set": model["joint_set"],
            "smpl_model": model.get("smpl_model"), "backbone": model["backbone"],
            "output_names": list(OUTPUT_NAMES), "config": config}


def parse_metadata(text, source) -> dict:
    """The metadata dict from its JSON text; CheckpointError (a ValueError) naming `source`
    when it is not ours: not JSON, another format, or without the facts inference needs."""
    try:
        meta = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        meta = None
    expected = f"expected the JSON `hmr-fast export` writes (format {EXPORT_FORMAT!r})"
    if not isinstance(meta, dict):
        found = "no valid JSON" if meta is None else f"JSON holding a {type(meta).__name__}"
        raise CheckpointError(f"{source} is not hmr_fast export metadata: found {found}; {expected}")
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{source} is not hmr_fast export metadata: format {_short(meta.get('format'))}; "
                              f"{expected}")
    for key, ok, wanted in _METADATA_FIELDS:
        if not ok(meta.get(key)):
            found = "missing" if key not in meta else _short(meta[key])
            raise CheckpointError(f"{source}: hmr_fast export metadata {key!r} is {found}; expected {wanted}")
    return meta


def _short(value, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# key, check, what is expected: the facts the inference backends read from an export's metadata.
_METADATA_FIELDS = (
    ("img_size", _positive_int, "a positive int"),
    ("joint_set", lambda v: isinstance(v, str), "a joint set name"),
    ("smpl_model", lambda v: v is None or isinstance(v, str), "a body model path or null"),
    ("max_batch", lambda v: v is None or _positive_int(v), "a positive int or null"),
    ("device", lambda v: v is None or isinstance(v, str), "a device type or null"),
)


def write_sidecar(path, metadata: dict) -> Path:
    """PATH.json beside an engine (TensorRT engines carry no metadata of their own)."""
    sidecar = Path(str(path) + ".json")
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(metadata, indent=1) + "\n")
    return sidecar


def read_sidecar(path) -> dict:
    sidecar = Path(str(path) + ".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} not found: `hmr-fast export` writes it beside {path} "
                                "(img_size, joint_set, body model); keep the two together")
    try:
        text = sidecar.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{sidecar} cannot be read ({exc.strerror or exc}); it holds {path}'s "
                              "metadata (img_size, joint_set, body model)") from None
    return parse_metadata(text, sidecar)
