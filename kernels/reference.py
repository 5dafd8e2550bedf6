"""The SMPL math in plain torch: the reference backend, and the twin every Triton kernel is held to.

Each function is one step of SMPL (Loper et al. 2015) as smplx's `lbs.py` names them, in
cheaper forms than smplx's:
- joints are linear in the betas, so the rest joints never touch the vertices;
- transforms are 3x4 (rotation, translation), never homogeneous 4x4;
- the kinematic chain runs level by level over Python-int parents (SMPL's tree has 9 levels),
  so nothing reads an index back from the device;
- shape and pose blend shapes are one GEMM over [betas, pose features];
- joint sets regress from only the vertices in their support, so a joints-only forward
  (the training case) poses a few hundred vertices instead of 6890.
Everything is differentiable, in float32 and float64. The rotation maps are in
hmr_fast.rotations and HMR's camera in hmr_fast.camera (both re-exported here).

The last section holds the twins of the three fused ops (pose_chain, blend_skin,
regress_project) and of `smpl_joints_projected`, with the ops' own signatures and the
kernels' tensor layouts, so each op can be tested on its own against plain torch.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from hmr_fast.camera import project_weak_perspective
from hmr_fast.rotations import rodrigues, rot6d_to_rotmat

__all__ = ["rodrigues", "rot6d_to_rotmat", "project_weak_perspective", "KinematicTree", "kinematic_tree",
           "pose_features", "blend_shapes", "rest_joints", "kinematic_chain", "skinning_transforms", "skin",
           "pose_vertices", "regress_joints", "smpl_forward", "pose_chain", "blend_skin", "regress_project",
           "smpl_joints_projected"]


class KinematicTree(NamedTuple):
    """A kinematic tree's structure: parents (root's is -1), depth of each joint, the joints
    of each depth (root level first) and the children of each joint."""

    parents: tuple
    depth: tuple
    levels: tuple
    children: tuple


def kinematic_tree(parents) -> KinematicTree:
    """The structure of a tree given as each joint's parent (SMPL-format trees list parents
    before children; the root's parent is -1 or any negative number)."""
    parents = tuple(int(p) for p in parents)
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        if not 0 <= parents[j] < j:
            raise ValueError(f"kinematic tree must list parents before children; parent of {j} is {parents[j]}")
        depth[j] = depth[parents[j]] + 1
    levels = tuple(tuple(j for j in range(len(parents)) if depth[j] == d) for d in range(max(depth, default=0) + 1))
    children = tuple(tuple(c for c in range(1, len(parents)) if parents[c] == p) for p in range(len(parents)))
    return KinematicTree((-1,) + parents[1:], tuple(depth), levels, children)


def pose_features(rot_mats: torch.Tensor) -> torch.Tensor:
    """(B, 24, 3, 3) -> (B, 207): R - I of the 23 non-root joints, SMPL's pose-corrective input."""
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - eye).flatten(1)


def blend_shapes(coeffs, template, blend_dirs):
    """Rest-pose vertices with shape and pose correctives, as coordinate planes.

    coeffs (B, C) = [betas, pose features, zero padding]; template (N, 3); blend_dirs
    (3, C, N) stacks shapedirs over posedirs (and zero rows) for each coordinate, so both
    blend shapes are one GEMM per coordinate. Returns (3, B, N): plane i holds coordinate i of
    every sample's vertices, so the steps after it run along contiguous rows of vertices.
    """
    return torch.baddbmm(template.t().unsqueeze(1), coeffs.expand(3, *coeffs.shape), blend_dirs)


def rest_joints(betas, J_template, J_shapedirs):
    """Rest joints (B, 24, 3) = J_template + betas @ J_shapedirs: joints are linear in betas."""
    return J_template + (betas @ J_shapedirs).view(betas.shape[0], *J_template.shape)


def kinematic_chain(rot_mats, joints, parents, levels):
    """Global joint transforms, walking SMPL's tree one level at a time.

    rot_mats (B, 24, 3, 3) local rotations; joints (B, 24, 3) rest joints; parents a tuple
    of ints; levels a tuple of tuples of joint indices, root level first (`kinematic_tree`).
    Joint j's local transform is [R_j | J_j - J_parent] ([R_0 | J_0] for the root); a
    joint's parent is always on the level just above it, so each level is one batched
    matmul of the parents' 3x4 global transforms with the children's local ones (made 4x4
    by a [0, 0, 0, 1] row). Returns (global rotations (B, 24, 3, 3), global translations
    = posed joints (B, 24, 3)).
    """
    B, J = joints.shape[:2]
    bones = torch.cat([joints[:, :1], joints[:, 1:] - joints[:, list(parents[1:])]], dim=1)
    last_row = joints.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(B, J, 1, 4)
    local = torch.cat([torch.cat([rot_mats, bones.unsqueeze(-1)], dim=-1), last_row], dim=-2)
    order = [j for level in levels for j in level]
    local = local[:, order]  # level by level, so each level below is a slice
    done, start = [local[:, : len(levels[0]), :3]], len(levels[0])
    for above, level in zip(levels[:-1], levels[1:]):
        parent_transforms = _select(done[-1], [above.index(parents[j]) for j in level])
        done.append(parent_transforms @ local[:, start : start + len(level)])
        start += len(level)
    global_transforms = torch.cat(done, dim=1)[:, [order.index(j) for j in range(J)]]
    return global_transforms[..., :3], global_transforms[..., 3]


def _select(x, index):
    """x[:, index], as a slice when the index is a run (most of SMPL's levels): indexing
    with a list costs a gather forward and a scatter into zeros backward."""
    if index == list(range(index[0], index[0] + len(index))):
        return x[:, index[0] : index[0] + len(index)]
    return x[:, index]


def skinning_transforms(global_rot, global_trans, joints):
    """The 3x4 transforms (B, 24, 12) that take rest-pose points to posed points.

    A_j = [G_j | t_j - G_j J_j]: rotate about the rest joint, then move to the posed joint.
    """
    offset = global_trans - (global_rot @ joints.unsqueeze(-1)).squeeze(-1)
    return torch.cat([global_rot, offset.unsqueeze(-1)], dim=-1).flatten(2)


def skin(v_posed, transform_rows, weights, shift=None):
    """Linear blend skinning with 3x4 transforms -> posed vertices as planes (3, B, N).

    v_posed (3, B, N) coordinate planes; transform_rows (12 * B, 24) from
    `rows_of_transforms`; weights (N, 24); shift (3, B, 1), the translation, or None. The
    blended transforms of every sample and vertex are one GEMM, transform_rows @ weights^T
    -> (3, 4, B, N); nothing is 4x4 or homogeneous.
    """
    blended = (transform_rows @ weights.t()).view(3, 4, *v_posed.shape[1:])
    return ApplyTransforms.apply(blended, v_posed, shift)


def rows_of_transforms(transforms):
    """(B, 24, 12) skinning transforms -> (12 * B, 24): row (e, b) holds entry e of sample
    b's 24 joint transforms, the left-hand side of skin's GEMM."""
    B, J = transforms.shape[:2]
    return transforms.permute(2, 0, 1).reshape(12 * B, J)


class ApplyTransforms(torch.autograd.Function):
    """posed = R v + t + shift for blended (3, 4, B, N) = [R | t], v (3, B, N) and shift
    (3, B, 1) or None -> (3, B, N). Adding the translation here, along rows of vertices, is
    several times cheaper than adding it to the interleaved (B, N, 3) output.

    Autograd through the same few elementwise ops works, but allocates and concatenates
    a gradient per slice; this backward writes each gradient once (the CPU is memory-bound
    here, so that is most of the backward's time).
    """

    @staticmethod
    def forward(ctx, blended, v, shift):
        ctx.save_for_backward(blended, v)
        posed = torch.addcmul(blended[:, 3], blended[:, 0], v[0])
        posed.addcmul_(blended[:, 1], v[1]).addcmul_(blended[:, 2], v[2])
        return posed if shift is None else posed.add_(shift)

    @staticmethod
    def backward(ctx, grad):
        blended, v = ctx.saved_tensors
        grad = grad.contiguous()  # a view of the interleaved (B, N, 3) gradient: strided
        grad_blended = grad_v = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_blended = torch.empty_like(blended)
            torch.mul(grad.unsqueeze(1), v.unsqueeze(0), out=grad_blended[:, :3])
            grad_blended[:, 3] = grad
        if ctx.needs_input_grad[1]:
            # dL/dv_c = sum_i g_i R_ic, as two fused multiply-adds per coordinate.
            grad_v = torch.empty_like(v)
            for c in range(3):
                torch.mul(grad[0], blended[0, c], out=grad_v[c])
                grad_v[c].addcmul_(grad[1], blended[1, c]).addcmul_(grad[2], blended[2, c])
        if ctx.needs_input_grad[2]:
            grad_shift = grad.sum(-1, keepdim=True)
        return grad_blended, grad_v, grad_shift


# Vertices x samples per chunk in pose_vertices: small enough that a chunk's blended
# transforms (12 floats per vertex and sample) stay in the CPU's cache, large enough that
# a batch of one is a single chunk. Measured on a 2-core EPYC: 1.6x faster forward at B=512.
CHUNK_VERTEX_SAMPLES = 65536


def pose_vertices(betas, pose_feats, transforms, template, blend_dirs, weights, transl=None):
    """Blend shapes, skinning, then translation (B, 3) or None -> posed vertices (B, N, 3),
    a chunk of vertices at a time.

    Unchunked, each step is a pass through memory over B x N x 12 floats; in chunks the
    intermediate stays in cache and only the vertices are written out.
    """
    batch, num = betas.shape[0], template.shape[0]
    if num == 0:  # a joint set that reads no vertices (smpl24)
        return template.new_zeros(batch, 0, 3)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        step = num  # traced graphs (compile, export) keep a batch-independent shape: one chunk
    else:
        step = max(1, CHUNK_VERTEX_SAMPLES // max(batch, 1))
    coeffs = torch.cat([betas, pose_feats], dim=1)
    coeffs = torch.nn.functional.pad(coeffs, (0, blend_dirs.shape[1] - coeffs.shape[1]))  # to the zero rows
    rows = rows_of_transforms(transforms)
    shift = None if transl is None else transl.t().contiguous().unsqueeze(-1)
    chunks = []
    for start in range(0, num, step):
        end = min(num, start + step)
        v_posed = blend_shapes(coeffs, template[start:end], blend_dirs[:, :, start:end])
        chunks.append(skin(v_posed, rows, weights[start:end], shift).permute(1, 2, 0))
    # Interleaving x, y, z is part of the one copy that joins the chunks.
    return chunks[0].contiguous() if len(chunks) == 1 else torch.cat(chunks, dim=1)


def regress_joints(posed_joints, support_vertices, chain_index, vertex_regressor):
    """Output joints of a joint set (B, J, 3).

    Row j is the posed SMPL joint chain_index[j] when that is >= 0, and otherwise the
    regressor row j applied to the posed support vertices (B, S, 3); vertex_regressor is
    (J, S) and zero on chain rows.
    """
    from_vertices = torch.einsum("js,bsc->bjc", vertex_regressor, support_vertices)  # one GEMM, not B
    from_chain = posed_joints[:, chain_index.clamp(min=0)]
    return torch.where((chain_index >= 0)[None, :, None], from_chain, from_vertices)


def smpl_forward(layer, betas, rot_mats, transl, return_verts: bool, joint_set: str):
    """The whole SMPL forward on `layer`'s buffers (see hmr_fast.body.smpl.SMPL).

    rot_mats (B, 24, 3, 3); transl (B, 3) or None. Returns (vertices (B, V, 3) or None,
    joints (B, J, 3)). With return_verts=False only the joint set's support vertices are
    posed.
    """
    js = layer.joint_set_tensors(joint_set)
    joints_rest = rest_joints(betas, layer.J_template, layer.J_shapedirs)
    global_rot, posed_joints = kinematic_chain(rot_mats, joints_rest, layer.parents, layer.levels)
    transforms = skinning_transforms(global_rot, posed_joints, joints_rest)
    feats = pose_features(rot_mats)
    vertices = None
    if return_verts:
        vertices = pose_vertices(betas, feats, transforms, layer.v_template, layer.blend_dirs, layer.lbs_weights, transl)
    if vertices is not None and not (vertices.requires_grad and betas.shape[0] >= REPOSE_SUPPORT_BATCH):
        support, support_moved = vertices[:, js.support], True
    else:
        support, support_moved = pose_vertices(betas, feats, transforms, js.template, js.blend_dirs, js.weights), False
    joints = regress_joints(posed_joints, support, js.chain_index, js.vertex_regressor)
    if transl is not None:
        # Every joint moves by transl exactly once. A row regressed from the moved mesh has
        # moved by transl * (its row sum) already (all of it for smplx's one-vertex joints).
        still_to_move = (1 - js.row_sums)[:, None] if support_moved else 1
        joints = joints + transl[:, None] * still_to_move
    return vertices, joints


# Under autograd, joints read from the posed vertices scatter their gradient into a
# B x V x 3 tensor of zeros; from this batch size on (measured on the CPU), posing the few
# support vertices a second time is cheaper.
REPOSE_SUPPORT_BATCH = 16


# ------------------------------------------------------------------- the fused ops' twins
# Same signatures as the registered ops (torch.ops.hmr_fast.*) and the same tensor layouts
# (`prepare`'s), computed with the functions above: what each op is tested against.
def pose_chain(pose, betas, J_template, J_shapedirs, parents, depth, children, num_levels: int, pose2rot: bool,
               c_pad: int):
    """Twin of hmr_fast::pose_chain -> (rot (B, NJ, 3, 3), coeffs (B, c_pad) = [betas, pose
    features, zeros], posed joints (B, NJ, 3), skinning transforms (B, NJ, 12)).

    pose (B, NJ * 3) axis-angle, or (B, NJ * 9) rotation matrices when not pose2rot; parents
    an int tensor with the root's parent stored as 0 (the kernels' table). depth, children and
    num_levels are the kernels' view of the same tree: the twin derives its own from parents.
    """
    B, NB = betas.shape
    NJ = J_template.shape[0]
    rot = rodrigues(pose.reshape(B, NJ, 3)) if pose2rot else pose.reshape(B, NJ, 3, 3)
    feats = pose_features(rot)
    coeffs = torch.cat([betas, feats, betas.new_zeros(B, c_pad - NB - feats.shape[1])], dim=1)
    joints_rest = rest_joints(betas, J_template, J_shapedirs)
    tree = kinematic_tree([-1] + [int(p) for p in parents.tolist()[1:]])
    global_rot, posed = kinematic_chain(rot, joints_rest, tree.parents, tree.levels)
    return rot, coeffs, posed, skinning_transforms(global_rot, posed, joints_rest)


def blend_skin(coeffs, transforms, transl, template_planes, dirs_planes, skin_indices, skin_weights,
               weights_dense, chunk_list, chunk_count, chunk_mask, num_vertices: int, sparse: bool, precision: str):
    """Twin of hmr_fast::blend_skin -> posed vertices (B, num_vertices, 3).

    v_posed = template + coeffs @ dirs on the padded coordinate planes (template_planes
    (3, N_PAD), dirs_planes (3, C_PAD, N_PAD)); then v = sum_k w_k (R_k v_posed + t_k) over the
    K (index, weight) skinning pairs (N_PAD, K), plus transl (B, 3) when given. Dense, in the
    inputs' dtype: the chunk tables only let the kernel skip all-zero tiles, and `precision`
    only chooses the kernel's GEMM instructions.
    """
    N = num_vertices
    B, NJ = transforms.shape[:2]
    dirs = dirs_planes[:, :, :N].to(coeffs.dtype)
    v_posed = template_planes[:, None, :N] + torch.einsum("bc,dcn->dbn", coeffs, dirs)  # (3, B, N)
    T = transforms.reshape(B, NJ, 3, 4)
    blended = (skin_weights[None, :N, :, None, None] * T[:, skin_indices[:N].long()]).sum(2)  # (B, N, 3, 4)
    vertices = (blended[..., :3] @ v_posed.permute(1, 2, 0).unsqueeze(-1)).squeeze(-1) + blended[..., 3]
    return vertices if transl is None else vertices + transl[:, None]


def regress_project(verts, support, regT, selT, rowsum, posed_joints, transl, cam, num_joints: int,
                    transl_in_verts: bool):
    """Twin of hmr_fast::regress_project -> (joints (B, J, 3), keypoints (B, J, 2), or an empty
    tensor without a camera).

    joints = verts[:, support] @ regT + posed_joints @ selT (regT (S, JOP) zero on chain rows,
    selT (JP, JOP) one-hot on them), then + transl: once for every joint, i.e. times (1 - row
    sum) for rows regressed from vertices that already carry it (transl_in_verts).
    """
    J, NJ = num_joints, posed_joints.shape[1]
    joints = (torch.einsum("bsd,sj->bjd", verts[:, support.long()], regT[:, :J])
              + torch.einsum("bcd,cj->bjd", posed_joints, selT[:NJ, :J]))
    if transl is not None:
        joints = joints + transl[:, None] * ((1 - rowsum[:J])[:, None] if transl_in_verts else 1)
    keypoints = project_weak_perspective(joints, cam) if cam is not None else joints.new_empty(0)
    return joints, keypoints


def smpl_joints_projected(layer, betas, full_pose, transl, cam, pose2rot: bool, joint_set: str):
    """Twin of hmr_fast.kernels.smpl_joints_projected -> (joints (B, J, 3), keypoints (B, J, 2),
    rot_mats (B, 24, 3, 3)): the joints-only forward and HMR's weak perspective."""
    B, NJ = betas.shape[0], layer.J_template.shape[0]
    rot = rodrigues(full_pose.reshape(B, NJ, 3)) if pose2rot else full_pose.reshape(B, NJ, 3, 3)
    _, joints = smpl_forward(layer, betas, rot, transl, False, joint_set)
    return joints, project_weak_perspective(joints, cam), rot
