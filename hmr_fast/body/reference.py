"""The SMPL math in plain torch: the reference backend, and the twin the Triton kernels are held to.

Each function is one step of SMPL (Loper et al. 2015) as smplx's `lbs.py` names them, in the
cheaper forms DESIGN.md lists:
- joints are linear in the betas, so the rest joints never touch the vertices;
- transforms are 3x4 (rotation, translation), never homogeneous 4x4;
- the kinematic chain runs level by level over Python-int parents (SMPL's tree has 9 levels),
  so nothing reads an index back from the device;
- shape and pose blend shapes are one GEMM over [betas, pose features];
- joint sets regress from only the vertices in their support, so a joints-only forward
  (the training case) poses a few hundred vertices instead of 6890.
Everything is differentiable, in float32 and float64.
"""
from __future__ import annotations

import torch

# Below this squared angle, sin(t)/t and (1 - cos t)/t^2 come from their Taylor series: the
# closed forms lose all precision there, and their gradients are 0/0 at exactly zero.
_SMALL_ANGLE_SQ = 1e-6


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3): R = I + a K + b K^2.

    K is the cross-product matrix of the (unnormalised) axis-angle vector, a = sin(t)/t,
    b = (1 - cos t)/t^2. Exact, with finite gradients, at t = 0 and near pi.
    """
    theta_sq = (axis_angle * axis_angle).sum(-1, keepdim=True)
    small = theta_sq < _SMALL_ANGLE_SQ
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = safe_sq.sqrt()
    a = torch.where(small, 1 - theta_sq / 6 + theta_sq**2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24 + theta_sq**2 / 720, (1 - torch.cos(theta)) / safe_sq)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """SPIN's 6D rotation (..., 6) -> rotation matrices (..., 3, 3), by Gram-Schmidt.

    The 6 numbers are the first two columns of the matrix, interleaved as a (3, 2) block.
    """
    cols = x.unflatten(-1, (3, 2))
    a1, a2 = cols[..., 0], cols[..., 1]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


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
    return J_template + (betas @ J_shapedirs).view(betas.shape[0], -1, 3)


def kinematic_chain(rot_mats, joints, parents, levels):
    """Global joint transforms, walking SMPL's tree one level at a time.

    rot_mats (B, 24, 3, 3) local rotations; joints (B, 24, 3) rest joints; parents a tuple
    of ints; levels a tuple of tuples of joint indices, root level first (`tree_levels`).
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
        step = max(1, CHUNK_VERTEX_SAMPLES // batch)
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


def project_weak_perspective(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """HMR's camera: x2d = s * (X[:, :2] + [tx, ty]); points (B, J, 3), cam (B, 3) = (s, tx, ty)."""
    return cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:])


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
