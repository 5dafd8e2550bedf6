"""TensorRT engines: built from our ONNX graphs with the tensorrt Python API, and run.

    hmr-fast export --checkpoint C --format tensorrt --out model.engine \
        [--precision fp16|fp32] [--max-batch 64] [--opt-batch 8] [--timing-cache F] [--no-plugins]

Build steps (`build_engine`):
1. ONNX graphs (onnx.py) beside the engine: OUT.plugins.onnx, whose SMPL is the three
   Triton plugins (trt_plugins.py), and OUT.onnx, whose SMPL is plain ONNX ops.
   For fp16 the encoder + regressor are stored in float16 in the graph and the network is
   built strongly typed: the body model stays float32 whatever the precision.
2. The plugin graph is parsed and built first (plugins registered with tensorrt.plugin,
   their PTX compiled for this GPU); if anything about the plugins fails (TensorRT too
   old for tensorrt.plugin's AOT path, no triton, a parse or build error), the plain graph
   is built instead, with a warning saying why.
3. One optimisation profile for the input "images": batch 1 .. max_batch, tuned at
   opt_batch. A timing cache file (default OUT.timing.cache) is read if present and
   written back, so rebuilding is fast.
4. The serialized engine is written atomically, with OUT.json (img_size, joint set, body
   model, precision, which SMPL graph was built) beside it.
Running an engine: hmr_fast.infer.tensorrt_engine (Predictor's "tensorrt" backend).

Without a GPU, `build_from_onnx` still runs with TensorRT-RTX (`pip install tensorrt-rtx-cu12`,
real PyPI wheels): its builder compiles ahead of time for a named compute capability
(SM75/80/86/89/120; not SM90) on a CPU. The tests build the plain graph that way, so a real
TensorRT ONNX parser and builder check every op, the dynamic batch and the fp16 typing.
TensorRT-RTX's wheel lacks tensorrt.plugin, so the plugin graph waits for a GPU and TensorRT.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from hmr_fast.atomic import atomic_path
from hmr_fast.infer.tensorrt_engine import require_tensorrt
from hmr_fast.model.artefact import export_metadata, write_sidecar
from hmr_fast.model.checkpoint import load_checkpoint

from .onnx import export_onnx
from .trt_plugins import register_plugins

def _logger(trt, verbose: bool = False):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def _strongly_typed_flag(trt):
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    return getattr(flags, "STRONGLY_TYPED", None) if flags is not None else None


def _is_rtx(trt) -> bool:
    """TensorRT-RTX: builds for named compute capabilities, has no timing cache."""
    return hasattr(trt, "ComputeCapability")


def _compute_capability(trt, capability: int):
    name = f"SM{int(capability)}"
    if not hasattr(trt.ComputeCapability, name):
        known = [n for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
        raise ValueError(f"compute_capability {capability}: this TensorRT-RTX builds only for {known}")
    return getattr(trt.ComputeCapability, name)


def network_io(network) -> dict:
    """A parsed network's {"inputs"/"outputs": {name: [shape, dtype]}} (-1: dynamic) and
    "layer_dtypes": {dtype: how many layers' first outputs have it}."""
    io = {"inputs": {}, "outputs": {}, "layer_dtypes": {}}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.num_outputs:
            name = layer.get_output(0).dtype.name
            io["layer_dtypes"][name] = io["layer_dtypes"].get(name, 0) + 1
    for kind, count, get in (("inputs", network.num_inputs, network.get_input),
                             ("outputs", network.num_outputs, network.get_output)):
        for i in range(count):
            t = get(i)
            io[kind][t.name] = [list(t.shape), t.dtype.name]
    return io


def build_from_onnx(onnx_path, engine_path, precision: str, max_batch: int, opt_batch: int, img_size: int,
                    timing_cache=None, workspace_gb: float = 4.0, verbose: bool = False, trt=None,
                    compute_capability: int | None = None) -> dict:
    """Parse `onnx_path`, build an engine and write it atomically; returns build facts.

    trt: the TensorRT module (default: `tensorrt`, required); pass `tensorrt_rtx` with a
    compute_capability (e.g. 86) to build ahead of time on a machine without a GPU."""
    trt = trt or require_tensorrt()
    rtx = _is_rtx(trt)
    if (compute_capability is not None) != rtx:
        raise ValueError("compute_capability is TensorRT-RTX's ahead-of-time target: give it with tensorrt_rtx "
                         "and only then (TensorRT builds for the GPU it runs on)")
    logger = _logger(trt, verbose)
    builder = trt.Builder(logger)
    strong = _strongly_typed_flag(trt)
    # Strongly typed: the graph's own dtypes rule (fp16 encoder, fp32 SMPL). TensorRT < 9
    # lacks it and falls back to the FP16 builder flag over a float32 graph.
    network = builder.create_network(1 << int(strong) if strong is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if strong is None and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # float32 engines match torch to 1e-4, not TF32's 1e-3
    if rtx:
        config.num_compute_capabilities = 1
        config.set_compute_capability(_compute_capability(trt, compute_capability), 0)
    profile = builder.create_optimization_profile()
    shape = lambda b: (b, 3, img_size, img_size)  # noqa: E731
    profile.set_shape("images", shape(1), shape(min(opt_batch, max_batch)), shape(max_batch))
    config.add_optimization_profile(profile)
    if timing_cache and not rtx:  # TensorRT-RTX ignores timing caches
        cache_bytes = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (run with --verbose for its log)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache and not rtx:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    facts = {"onnx": str(onnx_path), "strongly_typed": strong is not None, "tensorrt": trt.__version__,
             "package": trt.__name__, **network_io(network)}
    if rtx:
        facts["compute_capability"] = int(compute_capability)
    return facts


def build_engine(checkpoint, engine_path, precision: str = "fp16", max_batch: int = 64, opt_batch: int = 8,
                 timing_cache=None, plugins: bool = True, workspace_gb: float = 4.0, verbose: bool = False) -> dict:
    """The full export (see the module docstring); returns what was built."""
    require_tensorrt()
    if not torch.cuda.is_available():
        raise RuntimeError("building a TensorRT engine needs an NVIDIA GPU; none is visible to torch here")
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r}")
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")
    engine_path = Path(engine_path)
    stem = engine_path.with_suffix("")
    timing_cache = timing_cache or f"{stem}.timing.cache"
    _hmr, config = load_checkpoint(checkpoint)
    img_size = int(config["model"]["img_size"])
    plain = export_onnx(checkpoint, f"{stem}.onnx", precision=precision)
    built, reason = None, None
    if plugins:
        try:
            register_plugins()
            graph = export_onnx(checkpoint, f"{stem}.plugins.onnx", smpl_graph="plugins", precision=precision,
                                batch_hint=opt_batch)
            built = build_from_onnx(graph, engine_path, precision, max_batch, opt_batch, img_size, timing_cache,
                                    workspace_gb, verbose)
            built["smpl_graph"] = "plugins"
        except (ImportError, RuntimeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"TensorRT SMPL plugins not used ({reason}); building the plain ONNX SMPL graph",
                          stacklevel=2)
    if built is None:
        built = build_from_onnx(plain, engine_path, precision, max_batch, opt_batch, img_size, timing_cache,
                                workspace_gb, verbose)
        built["smpl_graph"] = "plain"
        if reason:
            built["plugin_fallback_reason"] = reason
    meta = dict(export_metadata(config), precision=precision, max_batch=int(max_batch), opt_batch=int(opt_batch),
                build=built)
    write_sidecar(engine_path, meta)
    return meta
