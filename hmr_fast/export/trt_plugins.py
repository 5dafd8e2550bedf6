"""The SMPL forward as three TensorRT plugins whose kernels are hmr_fast's Triton kernels.

Export side (no TensorRT needed): `PluginInferenceModel` is the inference graph with its
SMPL part replaced by three custom nodes in the ONNX domain "trt.plugins":
    pose_chain(rot_mats (B, 216), betas, J_template, J_shapedirs, parents, depth)
        -> rot (B, 24, 3, 3), coeffs (B, C_PAD), posed_joints (B, 24, 3), transforms (B, 24, 12)
    blend_skin(coeffs, transforms, template_planes, dirs_planes, skin_indices, skin_weights,
               chunk_list, chunk_count) -> vertices (B, V, 3)
    regress_project(vertices, support, regT, selT, rowsum, posed_joints, cam)
        -> joints3d (B, J, 3), keypoints2d (B, J, 2)
The body model's tensors are initializers laid out exactly as the kernels read them
(hmr_fast.kernels' prepared layouts, GPU tile sizes). Each node carries
plugin_namespace="hmr_fast", aot=1 (TensorRT's ONNX parser then uses the ahead-of-time
implementation) and integer attributes that fix every size but the batch.
`emulate_plugin_graph` runs such a graph on the CPU (onnxruntime for the standard nodes,
torch or the Triton interpreter for the plugin nodes), which is how it is tested here.

TensorRT side: `register_plugins()` declares the three plugins with `tensorrt.plugin`
(@trtp.register for output shapes, @trtp.aot_impl returning the adapters' PTX for the
build GPU with symbolic launch grids, @trtp.impl as a Python fallback).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hmr_fast.body import SMPL
from hmr_fast.infer.tensorrt_engine import require_tensorrt
from hmr_fast.kernels import reference

PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_NAMESPACE = "hmr_fast"
_NUM_OUTPUTS = {"pose_chain": 4, "blend_skin": 1, "regress_project": 2}


# What each plugin computes: its op's plain-torch twin (hmr_fast.kernels.reference) on the
# plugin's own inputs. The export-time stand-in, and the CPU check of a plugin graph's wiring.
def pose_chain_reference(pose, betas, jt, jsd, parents, depth, *, num_betas, num_joints, num_levels, c_pad):
    return reference.pose_chain(pose, betas, jt, jsd, parents, depth, None, num_levels, False, c_pad)


def blend_skin_reference(coeffs, transforms, tmpl, dirs, sidx, sw, chunk_list, chunk_count, *, num_vertices,
                         **_sizes):
    return reference.blend_skin(coeffs, transforms, None, tmpl, dirs, sidx, sw, None, chunk_list, chunk_count, None,
                                num_vertices, False, "ieee")


def regress_project_reference(verts, support, regT, selT, rowsum, posed, cam, *, num_joints, **_sizes):
    return reference.regress_project(verts, support, regT, selT, rowsum, posed, None, cam, num_joints, False)


REFERENCES = {"pose_chain": pose_chain_reference, "blend_skin": blend_skin_reference,
              "regress_project": regress_project_reference}


class _PluginNode(torch.autograd.Function):
    """Traced as one custom ONNX node; computed meanwhile by the plugin's torch reference."""

    @staticmethod
    def forward(ctx, op: str, attrs: tuple, *tensors):
        return REFERENCES[op](*tensors, **dict(attrs))

    @staticmethod
    def symbolic(g, op: str, attrs: tuple, *values):
        int_attrs = {f"{k}_i": int(v) for k, v in attrs}
        outs = g.op(f"{PLUGIN_DOMAIN}::{op}", *values, plugin_namespace_s=PLUGIN_NAMESPACE, plugin_version_s="1",
                    aot_i=1, outputs=_NUM_OUTPUTS[op], **int_attrs)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        # Output types for the exporter's shape inference: float32, the batch dynamic.
        for out, shape in zip(outs, _output_shapes(op, dict(attrs), None)):
            out.setType(values[0].type().with_dtype(torch.float32).with_sizes(list(shape)))
        return outs if len(outs) > 1 else outs[0]


# ---------------------------------------------------------------------------------------
# The plugin graph
# ---------------------------------------------------------------------------------------
def plugin_tables(smpl, joint_set: str, batch_hint: int = 1):
    """({name: tensor} the plugins read, {op: KernelSpec}) for a body model on the CPU."""
    from hmr_fast.kernels import blend_skin as bs
    from hmr_fast.kernels import prepare

    from .trt_kernels import blend_skin_spec, pose_chain_spec, regress_project_spec

    smpl = smpl.cpu().float()
    prep = prepare(smpl)
    if joint_set not in prep.joint_sets:
        raise ValueError(f"joint set {joint_set!r} is not available on this body model")
    plan = prep.joint_sets[joint_set]
    NJ, NB = prep.J_template.shape[0], prep.J_shapedirs.shape[0]
    # The tile layout of the GPU kernels (the interpreter's prepare() may use another one).
    mesh = bs.build_skin_mesh(smpl.v_template, smpl.blend_dirs, smpl.skin_indices, smpl.skin_weights,
                              smpl.lbs_weights, NJ, block_n=bs.BLOCK_N)
    c_pad = mesh.c_pad
    tensors = {
        "J_template": prep.J_template, "J_shapedirs": prep.J_shapedirs, "parents": prep.parents,
        "depth": prep.depth, "template_planes": mesh.template_planes, "dirs_planes": mesh.dirs_planes,
        "skin_indices": mesh.skin_indices, "skin_weights": mesh.skin_weights, "chunk_list": mesh.chunk_list,
        "chunk_count": mesh.chunk_count, "support": plan.support, "regT": plan.regT, "selT": plan.selT,
        "rowsum": plan.rowsum,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    specs = {
        "pose_chain": pose_chain_spec(NB, NJ, prep.num_levels, c_pad),
        "blend_skin": blend_skin_spec(mesh.num_vertices, mesh.template_planes.shape[1], c_pad,
                                      mesh.chunk_list.shape[1], NJ, mesh.skin_indices.shape[1], int(mesh.sparse),
                                      mesh.block_n, batch_hint),
        "regress_project": regress_project_spec(smpl.num_vertices, plan.support.shape[0], NJ, plan.selT.shape[0],
                                                plan.num_joints, plan.regT.shape[1], batch_hint),
    }
    return tensors, specs


PLUGIN_INPUTS = {
    "pose_chain": ("J_template", "J_shapedirs", "parents", "depth"),
    "blend_skin": ("template_planes", "dirs_planes", "skin_indices", "skin_weights", "chunk_list", "chunk_count"),
    "regress_project": ("support", "regT", "selT", "rowsum"),
}


class PluginInferenceModel(nn.Module):
    """InferenceModel with the SMPL forward as the three plugin nodes (see the module docstring)."""

    def __init__(self, hmr, batch_hint: int = 1, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dtype = dtype  # of the encoder + regressor; the plugins run in float32
        self.encoder = hmr.encoder.to(dtype)
        self.regressor = hmr.regressor.to(dtype)
        tensors, self.specs = plugin_tables(hmr.smpl, hmr.joint_set, batch_hint)
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.attrs = {op: tuple(sorted(spec.attrs.items())) for op, spec in self.specs.items()}

    def _node(self, op, *tensors):
        return _PluginNode.apply(op, self.attrs[op], *tensors)

    def forward(self, images):
        theta = self.regressor(self.encoder(images.to(self.dtype)))[-1]
        cam, rot_mats, betas = self.regressor.split(theta.float())
        consts = {op: [getattr(self, n) for n in names] for op, names in PLUGIN_INPUTS.items()}
        B = rot_mats.shape[0]
        _rot, coeffs, posed, transforms = self._node("pose_chain", rot_mats.reshape(B, -1), betas,
                                                     *consts["pose_chain"])
        vertices = self._node("blend_skin", coeffs, transforms, *consts["blend_skin"])
        s, r, sel, rs = consts["regress_project"]
        joints, keypoints = self._node("regress_project", vertices, s, r, sel, rs, posed, cam)
        return rot_mats, betas, cam, joints, keypoints, vertices


def plugin_nodes(model_proto) -> list:
    """The plugin nodes of an ONNX model (domain trt.plugins, namespace hmr_fast)."""
    return [n for n in model_proto.graph.node if n.domain == PLUGIN_DOMAIN]


def node_attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def emulate_plugin_graph(onnx_path, images: np.ndarray, use_kernels: bool = False) -> dict:
    """Run a plugin graph on the CPU: onnxruntime for its standard nodes, and for each plugin
    node either its torch reference or (use_kernels=True) the very adapter kernel TensorRT
    would launch, through Triton's interpreter (TRITON_INTERPRET=1). Returns {output: array}."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from .trt_kernels import spec_from_attrs

    model = onnx.load(str(onnx_path))
    plugins = plugin_nodes(model)
    if not plugins:
        raise ValueError(f"{onnx_path} has no {PLUGIN_DOMAIN} plugin nodes")
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    trunk_values = _trunk_values(model, plugins)
    trunk = _trunk_model(model, plugins, trunk_values)
    session = ort.InferenceSession(trunk.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(trunk_values, session.run(trunk_values, {"images": images.astype(np.float32)})))
    values.update(initializers)
    for node in plugins:
        attrs = {k: v for k, v in node_attrs(node).items() if k not in ("plugin_namespace", "plugin_version", "aot")}
        inputs = [torch.from_numpy(np.array(values[name])) for name in node.input]  # a writable copy
        if use_kernels:
            spec = spec_from_attrs(node.op_type, attrs)
            batch = inputs[0].shape[0]
            outputs = [torch.empty(shape, dtype=torch.float32) for shape in _output_shapes(node.op_type, attrs, batch)]
            spec.launch(inputs, outputs, batch)
        else:
            outputs = REFERENCES[node.op_type](*inputs, **attrs)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        for name, t in zip(node.output, outputs):
            values[name] = t.numpy()
    return {o.name: values[o.name] for o in model.graph.output}


def _output_shapes(op: str, a: dict, B: int) -> list:
    if op == "pose_chain":
        nj = a["num_joints"]
        return [(B, nj, 3, 3), (B, a["c_pad"]), (B, nj, 3), (B, nj, 12)]
    if op == "blend_skin":
        return [(B, a["num_vertices"], 3)]
    return [(B, a["num_joints"], 3), (B, a["num_joints"], 2)]


def _trunk_values(model, plugins) -> list:
    """Values the plugin nodes read that standard nodes compute (not initializers)."""
    produced = {o for n in model.graph.node if n.domain != PLUGIN_DOMAIN for o in n.output}
    produced |= {i.name for i in model.graph.input}
    needed = [i for n in plugins for i in n.input if i in produced]
    needed += [o.name for o in model.graph.output if o.name in produced]
    return list(dict.fromkeys(needed))


def _trunk_model(model, plugins, outputs):
    import onnx

    trunk = onnx.ModelProto()
    trunk.CopyFrom(model)
    keep = [n for n in trunk.graph.node if n.domain != PLUGIN_DOMAIN]
    del trunk.graph.node[:]
    trunk.graph.node.extend(keep)
    used = {i for n in keep for i in n.input}
    inits = [t for t in trunk.graph.initializer if t.name in used]
    del trunk.graph.initializer[:]
    trunk.graph.initializer.extend(inits)
    del trunk.graph.output[:]
    trunk.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in outputs)
    del trunk.opset_import[:]
    trunk.opset_import.extend([o for o in model.opset_import if o.domain != PLUGIN_DOMAIN])
    return trunk


# ---------------------------------------------------------------------------------------
# TensorRT registration
# ---------------------------------------------------------------------------------------
def _device_capability() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _aot_launch(spec, batch_expr):
    """(kernel name, PTX, launch params, extra args) for TensorRT, grids symbolic in the batch."""
    import tensorrt.plugin as trtp

    from .trt_kernels import compile_ptx

    compiled = compile_ptx(spec, _device_capability())
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(batch_expr, spec.block_b)
    launch.grid_y = spec.grid_y
    launch.block_x = compiled.block_x
    launch.shared_mem = compiled.shared
    extra = trtp.SymIntExprs(1)
    extra[0] = trtp.SymInt32(batch_expr)
    return compiled.name.encode(), compiled.ptx.encode(), launch, extra


def _jit_launch(spec, inputs, outputs, stream) -> None:
    """The Python fallback: the same adapter launched through Triton on TensorRT's stream."""
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        ins = [torch.as_tensor(t, device="cuda") for t in inputs]
        outs = [torch.as_tensor(t, device="cuda") for t in outputs]
        spec.launch(ins, outs, ins[0].shape[0])


@functools.lru_cache(maxsize=None)
def register_plugins() -> bool:
    """Declare the three plugins to TensorRT (once per process). Needs tensorrt >= 10.8
    (tensorrt.plugin with aot_impl) and triton; raises ImportError naming what is missing."""
    trt = require_tensorrt()
    try:
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise ImportError("the SMPL plugins need tensorrt.plugin (TensorRT >= 10.8)") from exc
    if not hasattr(trtp, "aot_impl"):
        raise ImportError(f"tensorrt {trt.__version__} has no tensorrt.plugin.aot_impl (TensorRT >= 10.8 needed)")
    from typing import Tuple

    from .trt_kernels import blend_skin_spec, pose_chain_spec, regress_project_spec

    f32, i32 = trt.float32, trt.int32
    D = trtp.TensorDesc
    ns = PLUGIN_NAMESPACE

    # -- pose_chain ---------------------------------------------------------------------
    @trtp.register(f"{ns}::pose_chain")
    def _pc_desc(pose: D, betas: D, jt: D, jsd: D, parents: D, depth: D, num_betas: int, num_joints: int,
                 num_levels: int, c_pad: int) -> Tuple[D, D, D, D]:
        B = pose.shape_expr[0]
        return (trtp.from_shape_expr((B, num_joints, 3, 3), dtype=f32), trtp.from_shape_expr((B, c_pad), dtype=f32),
                trtp.from_shape_expr((B, num_joints, 3), dtype=f32),
                trtp.from_shape_expr((B, num_joints, 12), dtype=f32))

    @trtp.autotune(f"{ns}::pose_chain")
    def _pc_tune(pose, betas, jt, jsd, parents, depth, outputs):
        return [trtp.AutoTuneCombination("FP32, FP32, FP32, FP32, INT32, INT32, FP32, FP32, FP32, FP32")]

    @trtp.aot_impl(f"{ns}::pose_chain")
    def _pc_aot(pose, betas, jt, jsd, parents, depth, num_betas: int, num_joints: int, num_levels: int, c_pad: int,
                outputs, tactic):
        return _aot_launch(pose_chain_spec(num_betas, num_joints, num_levels, c_pad), pose.shape_expr[0])

    @trtp.impl(f"{ns}::pose_chain")
    def _pc_impl(pose, betas, jt, jsd, parents, depth, num_betas: int, num_joints: int, num_levels: int,
                 c_pad: int, outputs, stream):
        _jit_launch(pose_chain_spec(num_betas, num_joints, num_levels, c_pad),
                    (pose, betas, jt, jsd, parents, depth), outputs, stream)

    # -- blend_skin ---------------------------------------------------------------------
    @trtp.register(f"{ns}::blend_skin")
    def _bs_desc(coeffs: D, transforms: D, tmpl: D, dirs: D, sidx: D, sw: D, chunk_list: D, chunk_count: D,
                 num_vertices: int, n_pad: int, c_pad: int, max_chunks: int, num_joints: int, k: int, sparse: int,
                 block_n: int, batch_hint: int) -> D:
        return trtp.from_shape_expr((coeffs.shape_expr[0], num_vertices, 3), dtype=f32)

    @trtp.autotune(f"{ns}::blend_skin")
    def _bs_tune(coeffs, transforms, tmpl, dirs, sidx, sw, chunk_list, chunk_count, outputs):
        return [trtp.AutoTuneCombination("FP32, FP32, FP32, FP32, INT32, FP32, INT32, INT32, FP32")]

    @trtp.aot_impl(f"{ns}::blend_skin")
    def _bs_aot(coeffs, transforms, tmpl, dirs, sidx, sw, chunk_list, chunk_count, num_vertices: int, n_pad: int,
                c_pad: int, max_chunks: int, num_joints: int, k: int, sparse: int, block_n: int, batch_hint: int,
                outputs, tactic):
        spec = blend_skin_spec(num_vertices, n_pad, c_pad, max_chunks, num_joints, k, sparse, block_n, batch_hint)
        return _aot_launch(spec, coeffs.shape_expr[0])

    @trtp.impl(f"{ns}::blend_skin")
    def _bs_impl(coeffs, transforms, tmpl, dirs, sidx, sw, chunk_list, chunk_count, num_vertices: int, n_pad: int,
                 c_pad: int, max_chunks: int, num_joints: int, k: int, sparse: int, block_n: int, batch_hint: int,
                 outputs, stream):
        spec = blend_skin_spec(num_vertices, n_pad, c_pad, max_chunks, num_joints, k, sparse, block_n, batch_hint)
        _jit_launch(spec, (coeffs, transforms, tmpl, dirs, sidx, sw, chunk_list, chunk_count), outputs, stream)

    # -- regress_project ----------------------------------------------------------------
    @trtp.register(f"{ns}::regress_project")
    def _rp_desc(verts: D, support: D, regt: D, selt: D, rowsum: D, posed: D, cam: D, num_source: int,
                 support_size: int, num_chain: int, jp: int, num_joints: int, jop: int,
                 batch_hint: int) -> Tuple[D, D]:
        B = verts.shape_expr[0]
        return (trtp.from_shape_expr((B, num_joints, 3), dtype=f32),
                trtp.from_shape_expr((B, num_joints, 2), dtype=f32))

    @trtp.autotune(f"{ns}::regress_project")
    def _rp_tune(verts, support, regt, selt, rowsum, posed, cam, outputs):
        return [trtp.AutoTuneCombination("FP32, INT32, FP32, FP32, FP32, FP32, FP32, FP32, FP32")]

    @trtp.aot_impl(f"{ns}::regress_project")
    def _rp_aot(verts, support, regt, selt, rowsum, posed, cam, num_source: int, support_size: int, num_chain: int,
                jp: int, num_joints: int, jop: int, batch_hint: int, outputs, tactic):
        spec = regress_project_spec(num_source, support_size, num_chain, jp, num_joints, jop, batch_hint)
        return _aot_launch(spec, verts.shape_expr[0])

    @trtp.impl(f"{ns}::regress_project")
    def _rp_impl(verts, support, regt, selt, rowsum, posed, cam, num_source: int, support_size: int, num_chain: int,
                 jp: int, num_joints: int, jop: int, batch_hint: int, outputs, stream):
        spec = regress_project_spec(num_source, support_size, num_chain, jp, num_joints, jop, batch_hint)
        _jit_launch(spec, (verts, support, regt, selt, rowsum, posed, cam), outputs, stream)

    del i32  # (types are spelled out in the AutoTuneCombination strings)
    return True


def write_plugin_ptx(out_dir, capability: int = 90, batch_hint: int = 1, smpl=None, joint_set: str = "hmr19") -> dict:
    """Compile the three adapters for sm_<capability> and write NAME.ptx files (for inspection
    and for `ptxas`); returns {op: path}. No GPU needed."""
    from .trt_kernels import compile_ptx

    smpl = smpl if smpl is not None else SMPL(joint_set=joint_set)
    _tensors, specs = plugin_tables(smpl, joint_set, batch_hint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for op, spec in specs.items():
        compiled = compile_ptx(spec, capability)
        paths[op] = out / f"{op}_sm{capability}.ptx"
        paths[op].write_text(compiled.ptx)
    return paths
