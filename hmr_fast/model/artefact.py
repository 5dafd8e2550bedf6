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
    """The metadata dict from its JSON text; ValueError naming `source` when it is not ours."""
    try:
        meta = json.loads(text)
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{source} is not hmr_fast export metadata (format {EXPORT_FORMAT!r} expected)")
    return meta


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
    return parse_metadata(sidecar.read_text(), sidecar)
