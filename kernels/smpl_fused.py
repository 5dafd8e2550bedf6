"""The SMPL forward composed from the fused ops: three launches.

    pose_chain      (B/16 programs)       rotations, blend coefficients, posed joints, 3x4 transforms
    blend_skin      (B/BB x N/64 tiles)   vertices (all 6890, or a joint set's support only)
    regress_project (B/BB programs)       joints (+ the HMR keypoints with a camera)

`prepare(layer)` re-lays the layer's buffers for the kernels once (coordinate planes of
blend_dirs padded to whole tiles, a bfloat16 copy, per-vertex skinning pairs, the block
sparsity of the blend directions, each joint set's regressor and support mesh) and caches
them on the layer as a plain attribute (not a buffer: nothing enters the state dict). It is
rebuilt when the layer's device, dtype or buffers change.
Under torch.compile the cache must exist already (one eager call, or `prepare(layer)`
before compiling): building it reads the model on the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch

from . import _common
from .blend_skin import SkinMesh, blend_skin_launch, build_skin_mesh
from .joints_projection import regress_project_launch
from .kinematic_chain import pose_chain_launch, tree_tables

_CACHE_ATTR = "_hmr_fast_kernel_cache"


@dataclass
class JointSetPlan:
    num_joints: int
    support: torch.Tensor  # (S,) int32: rows of the full vertex array
    support_local: torch.Tensor  # (S,) int32: 0..S-1, rows of the support-only vertex array
    regT: torch.Tensor  # (S, JOP) regressor transposed, zero on chain rows
    selT: torch.Tensor  # (JP, JOP) one-hot chain selection
    rowsum: torch.Tensor  # (JOP,) regressor row sums
    mesh: Optional[SkinMesh]  # the support vertices' mesh (None when S == 0)


@dataclass
class Prepared:
    key: tuple
    device: torch.device
    dtype: torch.dtype
    J_template: torch.Tensor
    J_shapedirs: torch.Tensor
    parents: torch.Tensor
    depth: torch.Tensor
    children: torch.Tensor
    num_levels: int
    mesh: SkinMesh
    forced_sparse: Optional[bool] = None
    forced_block_n: Optional[int] = None
    joint_sets: dict = field(default_factory=dict)

    @property
    def c_pad(self) -> int:
        return self.mesh.c_pad


class MeshArgs(NamedTuple):
    """The mesh side of one `hmr_fast::blend_skin` call: the op's parameters after
    (coeffs, transforms, transl), under the op's names and in its order (checked below)."""
    template_planes: torch.Tensor
    dirs_planes: torch.Tensor  # the copy the GEMM precision reads (bfloat16 for "bf16")
    skin_indices: torch.Tensor
    skin_weights: torch.Tensor
    weights_dense: torch.Tensor
    chunk_list: torch.Tensor
    chunk_count: torch.Tensor
    chunk_mask: torch.Tensor
    num_vertices: int
    sparse: bool
    precision: str

    def op_args(self) -> tuple:
        """The op's arguments after (coeffs, transforms, transl): torch.library ops take them flat."""
        return tuple(self)


# op_args() relies on the field order: fail at import, not with a mismatched call, if the op changes
assert MeshArgs._fields == tuple(a.name for a in torch.ops.hmr_fast.blend_skin.default._schema.arguments)[3:], \
    "MeshArgs must list hmr_fast::blend_skin's parameters after (coeffs, transforms, transl), in order"


def _buffers(layer):
    return (layer.v_template, layer.blend_dirs, layer.lbs_weights, layer.skin_indices, layer.skin_weights,
            layer.J_template, layer.J_shapedirs)


def _key(layer) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in _buffers(layer)) + (layer.v_template.device,
                                                                          layer.v_template.dtype)


def prepare(layer, sparse: Optional[bool] = None, block_n: Optional[int] = None) -> Prepared:
    """The kernels' view of `layer` (cached on it).

    sparse: force the block-sparse or the dense blend variant (None: block-sparse when enough
    (coefficient chunk, vertex block) tiles of the blend directions are zero).
    block_n: vertices per sparsity block (None: 64 on a GPU, wider under the interpreter;
    tests pass 64 to run the GPU's tile shapes under the interpreter).
    A forced choice sticks to the layer until another is forced.
    """
    cached = getattr(layer, _CACHE_ATTR, None)
    ref = layer.v_template
    if torch.compiler.is_compiling():
        if cached is None or cached.device != ref.device or cached.dtype != ref.dtype:
            raise RuntimeError("hmr_fast.kernels.prepare(layer) must run before torch.compile traces an SMPL "
                               "layer with the Triton backend (or call the layer once eagerly first)")
        return cached
    key = _key(layer)
    if (cached is not None and cached.key == key and (sparse is None or cached.forced_sparse == sparse)
            and (block_n is None or cached.forced_block_n == block_n)):
        return cached
    if cached is not None:
        sparse = cached.forced_sparse if sparse is None else sparse
        block_n = cached.forced_block_n if block_n is None else block_n
    with torch.no_grad():
        prep = _build(layer, key, sparse, block_n)
    object.__setattr__(layer, _CACHE_ATTR, prep)
    return prep


def _build(layer, key, sparse, block_n) -> Prepared:
    ref = layer.v_template
    device, dtype = ref.device, ref.dtype
    NJ = layer.J_template.shape[0]
    tables = tree_tables(layer.parents, device)
    mesh = build_skin_mesh(layer.v_template, layer.blend_dirs, layer.skin_indices, layer.skin_weights,
                           layer.lbs_weights, NJ, sparse=sparse, block_n=block_n)
    prep = Prepared(key=key, device=device, dtype=dtype, J_template=layer.J_template.detach().contiguous(),
                    J_shapedirs=layer.J_shapedirs.detach().contiguous(), parents=tables["parents"],
                    depth=tables["depth"], children=tables["children"], num_levels=tables["num_levels"], mesh=mesh,
                    forced_sparse=sparse, forced_block_n=block_n)
    jp = _common.lane_width(NJ)
    for name in layer.joint_sets:
        js = layer.joint_set_tensors(name)
        J = js.chain_index.shape[0]
        S = js.support.shape[0]
        jop = _common.lane_width(J)
        regT = torch.zeros(S, jop, dtype=dtype, device=device)
        regT[:, :J] = js.vertex_regressor.detach().t()
        selT = torch.zeros(jp, jop, dtype=dtype, device=device)
        chain = js.chain_index.detach().cpu().tolist()
        for j, c in enumerate(chain):
            if c >= 0:
                selT[c, j] = 1.0
        rowsum = torch.zeros(jop, dtype=dtype, device=device)
        rowsum[:J] = js.row_sums.detach()
        support = js.support.to(torch.int32)
        sub = None
        if S:
            sub = build_skin_mesh(js.template, js.blend_dirs, layer.skin_indices[js.support],
                                  layer.skin_weights[js.support], js.weights, NJ, sparse=sparse, block_n=block_n)
        prep.joint_sets[name] = JointSetPlan(
            num_joints=J, support=support, support_local=torch.arange(S, dtype=torch.int32, device=device),
            regT=regT, selT=selT, rowsum=rowsum, mesh=sub)
    return prep


def _precision(layer) -> str:
    precision = getattr(layer, "gemm_precision", None) or _common.get_gemm_precision()
    if precision not in _common.GEMM_PRECISIONS:
        raise ValueError(f"gemm_precision must be one of {_common.GEMM_PRECISIONS}, got {precision!r}")
    return precision


class _Direct:
    """The launchers called directly: no dispatcher, no autograd (inference outside torch.compile)."""

    @staticmethod
    def pose_chain(*args):
        return pose_chain_launch(*args)

    @staticmethod
    def blend_skin(coeffs, transforms, transl, mesh_args: MeshArgs):
        # the forward reads neither weights_dense nor chunk_mask (the backward's)
        return blend_skin_launch(
            coeffs, transforms, transl, template_planes=mesh_args.template_planes,
            dirs_planes=mesh_args.dirs_planes, skin_indices=mesh_args.skin_indices,
            skin_weights=mesh_args.skin_weights, chunk_list=mesh_args.chunk_list, chunk_count=mesh_args.chunk_count,
            num_vertices=mesh_args.num_vertices, sparse=mesh_args.sparse, precision=mesh_args.precision)

    @staticmethod
    def regress_project(*args):
        return regress_project_launch(*args)


class _Ops:
    """The registered torch ops: autograd, torch.compile, CUDA graphs."""

    @staticmethod
    def pose_chain(*args):
        return torch.ops.hmr_fast.pose_chain(*args)

    @staticmethod
    def blend_skin(coeffs, transforms, transl, mesh_args: MeshArgs):
        return torch.ops.hmr_fast.blend_skin(coeffs, transforms, transl, *mesh_args.op_args())

    @staticmethod
    def regress_project(*args):
        return torch.ops.hmr_fast.regress_project(*args)


def _dispatch(*tensors):
    if torch.compiler.is_compiling():
        return _Ops
    if _common.wants_grad(*tensors):
        return _Ops
    return _Direct


def _mesh_args(mesh: SkinMesh, precision: str) -> MeshArgs:
    return MeshArgs(template_planes=mesh.template_planes, dirs_planes=mesh.planes(precision),
                    skin_indices=mesh.skin_indices, skin_weights=mesh.skin_weights, weights_dense=mesh.weights_dense,
                    chunk_list=mesh.chunk_list, chunk_count=mesh.chunk_count, chunk_mask=mesh.chunk_mask,
                    num_vertices=mesh.num_vertices, sparse=mesh.sparse, precision=precision)


def _chain(ops, prep: Prepared, betas, full_pose, pose2rot):
    return ops.pose_chain(full_pose, betas, prep.J_template, prep.J_shapedirs, prep.parents, prep.depth,
                          prep.children, prep.num_levels, bool(pose2rot), prep.c_pad)


def _support_vertices(ops, plan: JointSetPlan, coeffs, transforms, precision):
    if plan.mesh is None:
        return coeffs.new_zeros((coeffs.shape[0], 0, 3))
    return ops.blend_skin(coeffs, transforms, None, _mesh_args(plan.mesh, precision))


def smpl_forward(layer, betas, full_pose, transl, pose2rot, return_verts, joint_set):
    """(vertices (B, V, 3) or None, joints (B, J, 3), rot_mats (B, 24, 3, 3)) on `layer`'s model."""
    _common.check_device(betas)
    prep = prepare(layer)
    precision = _precision(layer)
    plan = prep.joint_sets[joint_set]
    ops = _dispatch(betas, full_pose, transl)
    rot, coeffs, posed, transforms = _chain(ops, prep, betas, full_pose, pose2rot)
    if return_verts:
        vertices = ops.blend_skin(coeffs, transforms, transl, _mesh_args(prep.mesh, precision))
        joints, _ = ops.regress_project(vertices, plan.support, plan.regT, plan.selT, plan.rowsum, posed, transl,
                                        None, plan.num_joints, True)
    else:
        vertices = None
        support = _support_vertices(ops, plan, coeffs, transforms, precision)
        joints, _ = ops.regress_project(support, plan.support_local, plan.regT, plan.selT, plan.rowsum, posed,
                                        transl, None, plan.num_joints, False)
    return vertices, joints, rot


def smpl_joints_projected(layer, betas, full_pose, transl, cam, pose2rot, joint_set):
    """The training path: (joints3d (B, J, 3), keypoints2d (B, J, 2), rot_mats (B, 24, 3, 3)).

    Only the joint set's support vertices are posed. keypoints2d = s * (joints[..., :2] + (tx, ty))
    for cam (B, 3) = (s, tx, ty), HMR's weak perspective. Differentiable w.r.t. betas, full_pose,
    transl and cam.
    """
    _common.check_device(betas)
    prep = prepare(layer)
    precision = _precision(layer)
    plan = prep.joint_sets[joint_set]
    ops = _dispatch(betas, full_pose, transl, cam)
    rot, coeffs, posed, transforms = _chain(ops, prep, betas, full_pose, pose2rot)
    support = _support_vertices(ops, plan, coeffs, transforms, precision)
    joints, keypoints = ops.regress_project(support, plan.support_local, plan.regT, plan.selT, plan.rowsum, posed,
                                            transl, cam, plan.num_joints, False)
    return joints, keypoints, rot
