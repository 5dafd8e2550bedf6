"""The SMPL math in plain torch: the reference backend, and the twin every Triton kernel is held to.

Each function is one step of SMPL (Loper et al. 2015) as smplx's `lbs.py` names them, in
cheaper forms than smplx's:
- joints are linear in the betas, so the rest joints never touch the vertices;
- transforms are 3x4 (rotation, translation), never homogeneous 4x4;
- the kinematic chain composes rotations only, level by level over Python-int parents (SMPL's
  tree has 9 levels), or by pointer doubling at small batches, so nothing reads an index back
  from the device;
- shape and pose blend shapes are one GEMM over [betas, pose features] (on the CPU at small
  batches without gradients, oneDNN's with the matrix packed once: cpu_gemm.py);
- joint sets regress from only the vertices in their support, so a joints-only forward
  (the training case) poses a few hundred vertices instead of 6890.
Everything is differentiable, in float32 and float64. Where nothing wants a gradient, CPU
tensors take C loops for Rodrigues, the chain and skinning instead (cpu.py, the functions
here their twins). The rotation maps are in
hmr_fast.rotations and HMR's camera in hmr_fast.camera (both re-exported here).

The last section holds the twins of the three fused ops (pose_chain, blend_skin,
regress_project) and of `smpl_joints_projected`, with the ops' own signatures and the
kernels' tensor layouts, so each op can be tested on its own against plain torch.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from hmr_fast.camera import project_weak_perspective
from hmr_fast.rotations import rodrigues, rot6d_to_rotmat

from . import cpu, cpu_gemm
from ._common import wants_grad

__all__ = ["rodrigues", "rodrigues_fast", "rot6d_to_rotmat", "project_weak_perspective", "KinematicTree", "kinematic_tree",
           "pose_features", "blend_shapes", "rest_joints", "kinematic_chain", "skinning_transforms", "skin",
           "pose_vertices", "regress_joints", "smpl_forward", "smpl_joints", "pose_chain", "blend_skin", "regress_project",
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


def rodrigues_fast(axis_angle: torch.Tensor) -> torch.Tensor:
    """`rodrigues` (axis-angle (..., 3) -> (..., 3, 3)) with a written-out backward: the same
    values to rounding (R = cos(t) I + a K + b w w^T, a = sin(t)/t, b = (1 - cos t)/t^2, both
    from sin(t/2)/(t/2), which needs no series at small angles), in a score of ops where
    `rodrigues` runs some fifty and autograd's backward of it some forty more. What SMPL's
    reference forward uses."""
    if _traced():
        return rodrigues(axis_angle)
    if not wants_grad(axis_angle) and cpu.usable(axis_angle):
        return cpu.rodrigues(axis_angle)
    return _Rodrigues.apply(axis_angle)


# R's nine entries as rows of the table [c, a w0, a w1, a w2, -a w0, -a w1, -a w2].
_RODRIGUES_SLOTS = [0, 6, 2, 3, 0, 4, 5, 1, 0]

# Below this squared angle the derivatives of a and b come from their series: their closed
# forms, (cos t - a) / 2t^2 and (a - 2b) / 2t^2, cancel to a few digits in float32 there.
_SERIES_GRAD_SQ = 1e-2


class _Rodrigues(torch.autograd.Function):
    """Computed component-major, w as (3, ...) and R as (3, 3, ...) with the batch reversed
    and contiguous, so every op runs along contiguous rows; R is returned as a (..., 3, 3)
    view of that, which `kinematic_chain` reads without a copy."""

    @staticmethod
    def forward(ctx, w):
        n = w.dim()
        wc = w.permute(tuple(range(n - 1, -1, -1))).contiguous()  # (3, ...batch reversed)
        t2 = (wc * wc).sum(0)
        half = t2.sqrt().mul_(0.5)  # t / 2
        # With h = sin(t/2) / (t/2) (torch.sinc: 1 at t = 0): a = h cos(t/2) and
        # b = 2 sin^2(t/2) / t^2 = h^2 / 2, neither of which cancels at small angles.
        h = torch.sinc(half * (1 / math.pi))
        a = h * torch.cos(half)
        b = h.square().mul_(0.5)
        c = 1 - b * t2  # cos t
        # R = b w w^T + c I + a K: the outer product, plus the diagonal and K's six entries
        # picked from one (7, ...) table [c, a w, -a w].
        aw = a * wc
        table = torch.cat([c.unsqueeze(0), aw, -aw])
        R = wc[:, None] * (b * wc)[None, :]
        R += table[_RODRIGUES_SLOTS].view(R.shape)
        ctx.save_for_backward(wc, t2, a, b, c)
        return R.permute(tuple(range(n, 1, -1)) + (0, 1))

    @staticmethod
    def backward(ctx, grad):
        wc, t2, a, b, c = ctx.saved_tensors
        n = wc.dim()
        # (3, 3, ...batch reversed), contiguous (a view of the chain's gradient, which comes so)
        g = grad.permute((n - 1, n) + tuple(range(n - 2, -1, -1))).contiguous()
        rows = g.view(9, *g.shape[2:])  # G's entries row by row: g00 g01 g02 g10 ... g22
        trace = rows[0::4].sum(0)
        s = rows[[7, 2, 3]] - rows[[5, 6, 1]]  # vee(G - G^T) = (g21 - g12, g02 - g20, g10 - g01)
        sym_w = ((g + g.transpose(0, 1)) * wc).sum(1)  # (G + G^T) w
        grad_a = (s * wc).sum(0)
        grad_b = (sym_w * wc).sum(0).mul_(0.5).sub_(t2 * trace)  # w^T G w, and c = 1 - b t^2
        # (da/dt2, db/dt2): the closed forms, or their series where those cancel
        series = t2 < _SERIES_GRAD_SQ
        closed = torch.stack([c - a, a - 2 * b]).div_(torch.where(series, 1.0, t2).mul_(2))
        k0, k1, k2 = _series_coefficients(t2)
        d = torch.where(series, torch.addcmul(k0, t2, torch.addcmul(k1, t2, k2)), closed)
        grad_t2 = (torch.stack([grad_a, grad_b]) * d).sum(0).sub_(b * trace)
        gw = torch.addcmul(a * s, b, sym_w).addcmul_(grad_t2, wc, value=2)
        return gw.permute(tuple(range(n - 1, -1, -1)))


# da/dt2 = (c - a) / 2t^2 and db/dt2 = (a - 2b) / 2t^2 as series in t2: the coefficients of
# 1, t2 and t2^2, each a (2, 1, ...) column (da, db), per dtype, device and batch rank.
_SERIES_TERMS = ((-1 / 6, -1 / 24), (1 / 60, 1 / 360), (-1 / 1680, -1 / 13440))
_SERIES_COEFFICIENTS: dict = {}


def _series_coefficients(t2):
    key = (t2.dtype, t2.device, t2.dim())
    coefficients = _SERIES_COEFFICIENTS.get(key)
    if coefficients is None:
        coefficients = _SERIES_COEFFICIENTS[key] = tuple(
            torch.tensor(term, dtype=t2.dtype, device=t2.device).view(2, *([1] * t2.dim())) for term in _SERIES_TERMS)
    return coefficients


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
    Joint j's local transform is [R_j | J_j - J_parent] ([R_0 | J_0] for the root). Only the
    rotations need the chain: G_j = G_parent R_j, one batched 3x3 product per level (a joint's
    parent is always on the level just above it), or up to DOUBLING_BATCH samples, where per-op
    overhead is the cost, four rounds of G_j <- G_ancestor(j) G_j over all joints with the
    ancestor 1, 2, 4, 8 levels up (pointer doubling). The posed joints are then linear in the
    rotated bones, t_j = sum over j's ancestors-or-self k of G_parent(k) (J_k - J_parent(k)),
    which is one product with the tree's (24, 24) ancestor matrix; nothing is 4x4, and the
    backward (`_Chain`) is written out rather than left to autograd. Returns (global
    rotations (B, 24, 3, 3), global translations = posed joints (B, 24, 3)).
    """
    if _traced():
        return _kinematic_chain_traced(rot_mats, joints, parents, levels)
    return _Chain.apply(rot_mats, joints, tuple(parents), tuple(tuple(level) for level in levels))


def _traced() -> bool:
    """Under torch.compile, torch.export or a TorchScript trace (ONNX), the chain and Rodrigues
    run as plain autograd ops: the graph captures them as it always has (and Inductor fuses
    them), rather than tracing the hand-written Functions' in-place writes."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _kinematic_chain_traced(rot_mats, joints, parents, levels):
    """kinematic_chain as plain ops: 4x4 local transforms, one (3x4)@(4x4) product per level."""
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


class _ChainPlan:
    """Constant tables of one tree (per dtype and device) for `_Chain`."""

    def __init__(self, parents, levels, dtype, device):
        J = len(parents)
        par = torch.zeros(J, J, dtype=torch.float64)  # par[c, parent(c)] = 1
        for c in range(1, J):
            par[c, parents[c]] = 1.0
        anc = torch.eye(J, dtype=torch.float64)  # anc[j, k] = 1 when k is j or an ancestor of j
        for j in range(1, J):
            anc[j] += anc[parents[j]]
        self.ancestors = anc.to(dtype=dtype, device=device)
        self.ancestors_t = anc.t().contiguous().to(dtype=dtype, device=device)
        self.bones_map = (torch.eye(J, dtype=torch.float64) - par).to(dtype=dtype, device=device)  # bones = map @ J
        self.bones_map_t = self.bones_map.t().contiguous()
        self.children_sum = par[1:].t().contiguous().to(dtype=dtype, device=device)  # (J, J - 1)
        self.parent_index = torch.tensor(parents[1:], device=device)
        # Pointer doubling: slot J holds the identity; after step k, G_j is the product of the
        # last 2^(k+1) rotations on the path to j (all of it once that is shorter).
        self.doubling, ancestor = [], [p if p >= 0 else J for p in parents] + [J]
        while any(a != J for a in ancestor[:J]):
            self.doubling.append(torch.tensor(ancestor[:J], device=device))
            ancestor = [ancestor[a] for a in ancestor]
        self.eye = torch.eye(3, dtype=dtype, device=device)[:, :, None]
        self.steps = []  # per level below the root: (child slice, parent spec)
        for level in levels[1:]:
            lo, hi = level[0], level[-1] + 1
            if list(level) != list(range(lo, hi)):
                raise ValueError("kinematic_chain needs each level's joints numbered consecutively")
            ps = [parents[j] for j in level]
            if ps == list(range(ps[0], ps[0] + len(ps))):
                spec = ("run", ps[0], ps[0] + len(ps))
            elif len(set(ps)) == 1:
                spec = ("one", ps[0], ps[0] + 1)
            else:
                spec = ("index", torch.tensor(ps, device=device), None)
            self.steps.append((lo, hi, spec))

    @staticmethod
    def parents_of0(x, spec):
        """The parents' rows of a joint-major x for one level."""
        kind, a, b = spec
        return x[a] if kind == "index" else x[a:b]


_CHAIN_PLANS: dict = {}


def _chain_plan(parents, levels, dtype, device) -> _ChainPlan:
    key = (parents, levels, dtype, device)
    plan = _CHAIN_PLANS.get(key)
    if plan is None:
        plan = _CHAIN_PLANS[key] = _ChainPlan(parents, levels, dtype, device)
    return plan


def _matmul3(a, b, out=None, accumulate=False):
    """Products of 3x3 matrices stored component-major, (3, 3, ...batch), with the batch
    contiguous: ops that vectorise along the batch (bmm loops over tiny matrices one by one,
    and elementwise ops along a last dimension of 3 do not vectorise). A product is one
    broadcast multiply and a sum (fewest ops: the chain at small batches is all per-op
    overhead); accumulating adds that product into `out` in place."""
    if not accumulate:
        return torch.sum(a.unsqueeze(2) * b.unsqueeze(0), 1, out=out)
    return out.add_(torch.sum(a.unsqueeze(2) * b.unsqueeze(0), 1))


def _matvec3(m, v, out=None):
    """m (3, 3, ...) times v (3, ...), component-major -> (3, ...)."""
    out = torch.mul(m[:, 0], v[0:1], out=out)
    return out.addcmul_(m[:, 1], v[1:2]).addcmul_(m[:, 2], v[2:3])


def _component_major(x, components: int):
    """(B, J, *c) -> a contiguous (*c, J, B) (a view when x is already one, e.g. from
    rodrigues_fast)."""
    order = tuple(range(x.dim() - components, x.dim())) + tuple(range(x.dim() - components - 1, -1, -1))
    return x.permute(order).contiguous()


# Up to this batch size the chain's rotations are composed by pointer doubling (4 rounds over
# all joints for SMPL's 9 levels: the fewest ops, where per-op overhead is the cost); above it
# level by level (8 rounds over a level's joints: the fewest products). Crossover measured
# on the 2-core EPYC at about 100 samples (doubling 79 us against 165 us at B = 1).
DOUBLING_BATCH = 64


def _global_rotations(R, plan):
    """The global rotations G (3, 3, J, B) of local rotations R (3, 3, J, B), component-major:
    G_j = G_parent(j) R_j."""
    if R.shape[-1] <= DOUBLING_BATCH:
        J = R.shape[2]
        padded = torch.empty(3, 3, J + 1, R.shape[-1], dtype=R.dtype, device=R.device)
        padded[:, :, J] = plan.eye
        G = padded[:, :, :J]
        G.copy_(R)
        for ancestor in plan.doubling:  # G_j <- G_ancestor(j) G_j, the product made before writing
            _matmul3(padded.index_select(2, ancestor), G, out=G)
        return G
    G = torch.empty_like(R)
    G[:, :, 0] = R[:, :, 0]
    for lo, hi, spec in plan.steps:
        kind, a, b = spec
        parent = G[:, :, a] if kind == "index" else G[:, :, a:b]
        _matmul3(parent, R[:, :, lo:hi], out=G[:, :, lo:hi])
    return G


class _Chain(torch.autograd.Function):
    """(rot_mats (B, J, 3, 3), rest joints (B, J, 3)) -> (global rotations, posed joints).

    Works with the batch innermost: rotations component-major, (3, 3, J, B), so a 3x3 product
    is a few ops along contiguous rows of samples; vectors joint-major, (J, 3, B), so the
    tree's constant matrices (bones from joints, posed joints from rotated bones) are one 2D
    GEMM each (the backward reads the bones component-major, a view). Autograd through
    the level loop would zero-fill and scatter a gradient per level and per gather; this
    backward runs the same loop in reverse, accumulating in place: positions: gP = A^T g_t
    (A the ancestor matrix), g_bone_j = G_parent(j)^T gP_j, gG_parent(j) += gP_j bone_j^T;
    rotations, deepest level first: gG_parent += gG_j R_j^T; then gR_j = G_parent(j)^T gG_j.
    """

    @staticmethod
    def forward(ctx, rot_mats, joints, parents, levels):
        ctx.set_materialize_grads(False)
        plan = _chain_plan(parents, levels, rot_mats.dtype, rot_mats.device)
        R = _component_major(rot_mats, 2)  # (3, 3, J, B)
        G = _global_rotations(R, plan)
        B, J = joints.shape[:2]
        # Vectors joint-major, (J, 3, B): the tree's constant matrices apply as plain 2D GEMMs.
        bones = torch.mm(plan.bones_map, joints.permute(1, 2, 0).reshape(J, 3 * B)).view(J, 3, B)
        G_parent = G.index_select(2, plan.parent_index)  # (3, 3, J - 1, B)
        rotated = torch.empty_like(bones)  # G_parent(j) (J_j - J_parent(j)); the root's bone as it is
        rotated[0] = bones[0]
        torch.sum(G_parent * bones[1:].transpose(0, 1), 1, out=rotated[1:].transpose(0, 1))
        posed = torch.mm(plan.ancestors, rotated.view(J, 3 * B)).view(J, 3, B)
        ctx.save_for_backward(R, G_parent, bones.transpose(0, 1))
        ctx.plan = plan
        return G.permute(3, 2, 0, 1), posed.permute(2, 0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad_G, grad_posed):
        R, G_parent, bones = ctx.saved_tensors
        plan = ctx.plan
        gG = None
        if grad_posed is not None:
            gP = torch.matmul(plan.ancestors_t, grad_posed.permute(2, 1, 0))  # (3, J, B)
            g_bones = torch.empty_like(gP)
            g_bones[:, 0] = gP[:, 0]
            _matvec3(G_parent.transpose(0, 1), gP[:, 1:], out=g_bones[:, 1:])  # G_parent^T gP
            gG = torch.matmul(plan.children_sum, gP[:, None, 1:] * bones[None, :, 1:])  # (3, 3, J, B)
            if grad_G is not None:
                gG += grad_G.permute(2, 3, 1, 0)
        elif grad_G is not None:
            gG = _component_major(grad_G, 2).clone()
        grad_rot = grad_joints = None
        if gG is None:
            return None, None, None, None
        Rt = R.transpose(0, 1)
        for lo, hi, spec in reversed(plan.steps):
            kind, a, b = spec
            if kind == "run":
                _matmul3(gG[:, :, lo:hi], Rt[:, :, lo:hi], out=gG[:, :, a:b], accumulate=True)
            elif kind == "one":
                gG[:, :, a] += _matmul3(gG[:, :, lo:hi], Rt[:, :, lo:hi]).sum(2)
            else:
                gG.index_add_(2, a, _matmul3(gG[:, :, lo:hi], Rt[:, :, lo:hi]))
        if ctx.needs_input_grad[0]:
            grad_rot = torch.empty_like(gG)
            grad_rot[:, :, 0] = gG[:, :, 0]
            _matmul3(G_parent.transpose(0, 1), gG[:, :, 1:], out=grad_rot[:, :, 1:])
            grad_rot = grad_rot.permute(3, 2, 0, 1)
        if ctx.needs_input_grad[1] and grad_posed is not None:
            grad_joints = torch.matmul(plan.bones_map_t, g_bones).permute(2, 1, 0)
        return grad_rot, grad_joints, None, None


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


# Batch sizes whose blend shapes come from oneDNN's packed GEMM (cpu_gemm) on the CPU when no
# gradient is wanted, in one call for the whole mesh: 1.3x faster forward at B = 4 and 8,
# 1.03-1.08x at 16 to 64 (in-process A/B, one thread); at one sample the plain GEMV is faster,
# and from a hundred samples the cache-sized chunks of the plain GEMM are as fast.
PACKED_GEMM_BATCHES = (2, 64)


def chunk_vertex_samples() -> int:
    """Vertices x samples per chunk for torch's current thread count: CHUNK_VERTEX_SAMPLES per
    thread, so each thread's share of a chunk stays cache-sized while a multithreaded forward
    meets half as many (2 threads) of the per-op joins at which a thread that the OS has
    descheduled (the other core busy) stalls all the others."""
    return CHUNK_VERTEX_SAMPLES * max(1, torch.get_num_threads())


@torch.compiler.disable
def _pose_vertices_chunked(betas, pose_feats, transforms, template, blend_dirs, weights, transl):
    """pose_vertices run eagerly, in chunks, from inside a torch.compile'd graph (on contiguous
    inputs: Inductor's outputs may come in other strides, which slow the GEMMs down)."""
    betas, pose_feats, transforms = betas.contiguous(), pose_feats.contiguous(), transforms.contiguous()
    return pose_vertices(betas, pose_feats, transforms, template, blend_dirs, weights,
                         None if transl is None else transl.contiguous())


def pose_vertices(betas, pose_feats, transforms, template, blend_dirs, weights, transl=None):
    """Blend shapes, skinning, then translation (B, 3) or None -> posed vertices (B, N, 3),
    a chunk of vertices at a time.

    Unchunked, each step is a pass through memory over B x N x 12 floats; in chunks the
    intermediate stays in cache and only the vertices are written out.
    """
    batch, num = betas.shape[0], template.shape[0]
    if num == 0:  # a joint set that reads no vertices (smpl24)
        return template.new_zeros(batch, 0, 3)
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        step = num  # exported graphs (ONNX, AOTInductor) keep a batch-independent shape: one chunk
    elif torch.compiler.is_compiling() and batch * num > chunk_vertex_samples():
        # torch.compile: the chunks that pay run eagerly (Inductor's one-chunk graph is 1.5x
        # slower from B = 64 on); a batch that fits one chunk stays in the compiled graph.
        return _pose_vertices_chunked(betas, pose_feats, transforms, template, blend_dirs, weights, transl)
    else:
        step = max(1, chunk_vertex_samples() // max(batch, 1))
    coeffs = torch.cat([betas, pose_feats], dim=1)
    coeffs = torch.nn.functional.pad(coeffs, (0, blend_dirs.shape[1] - coeffs.shape[1]))  # to the zero rows
    no_grad = not wants_grad(coeffs, transforms, template, blend_dirs, weights, transl)
    packed = PACKED_GEMM_BATCHES[0] <= batch <= PACKED_GEMM_BATCHES[1] and no_grad and cpu_gemm.usable(blend_dirs)
    planes = cpu_gemm.blend_planes(coeffs, template, blend_dirs) if packed else None
    extra = [] if transl is None else [transl]
    if no_grad and cpu.usable(template, blend_dirs, transforms, weights, *extra, joints=weights.shape[1]):
        # Blend shapes (the packed GEMM: the whole mesh at once), then the fused skinning writes
        # each chunk's vertices into place.
        out = template.new_empty(batch, num, 3)
        step = num if packed else step
        for start in range(0, num, step):
            end = min(num, start + step)
            v_posed = planes if packed else blend_shapes(coeffs, template[start:end], blend_dirs[:, :, start:end])
            cpu.skin(v_posed, transforms, weights, transl, out, start)
        return out
    rows = rows_of_transforms(transforms)
    shift = None if transl is None else transl.t().contiguous().unsqueeze(-1)
    chunks = []
    for start in range(0, num, step):
        end = min(num, start + step)
        if packed:
            v_posed = planes[:, :, start:end]
        else:
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
    B, S = support_vertices.shape[:2]
    # One 2D GEMM for the whole batch (einsum's planning alone cost as much at small batches).
    flat = support_vertices.transpose(0, 1).reshape(S, 3 * B)
    from_vertices = torch.mm(vertex_regressor, flat).view(vertex_regressor.shape[0], B, 3).transpose(0, 1)
    from_chain = posed_joints[:, chain_index.clamp(min=0)]
    return torch.where((chain_index >= 0)[None, :, None], from_chain, from_vertices)


def regress_joints_folded(posed_joints, betas, pose_feats, transforms, js):
    """`regress_joints` of the support vertices that `pose_vertices` would pose, without
    posing them: the regressor is folded into the skinning (JointSetTensors._fold), so a
    regressed row is a sum over its few (joint, bone) pairs of A_k [m_jk; c_jk], with m_jk
    one small GEMM of the blend coefficients. Same numbers, a fraction of the work."""
    batch = betas.shape[0]
    coeffs = torch.cat([betas, pose_feats], dim=1)
    coeffs = torch.nn.functional.pad(coeffs, (0, js.fold_dirs.shape[0] - coeffs.shape[1]))
    m = torch.addmm(js.fold_template, coeffs, js.fold_dirs).view(batch, -1, 3)  # (B, P, 3)
    A = transforms.view(batch, -1, 3, 4)[:, js.fold_bone]  # (B, P, 3, 4)
    pairs = (A[..., :3] @ m.unsqueeze(-1)).squeeze(-1) + A[..., 3] * js.fold_weight[:, None]
    from_vertices = torch.einsum("jp,bpc->bjc", js.fold_rows, pairs)
    from_chain = posed_joints[:, js.chain_index.clamp(min=0)]
    return torch.where((js.chain_index >= 0)[None, :, None], from_chain, from_vertices)


def smpl_forward(layer, betas, rot_mats, transl, return_verts: bool, joint_set: str):
    """The whole SMPL forward on `layer`'s buffers (see hmr_fast.body.smpl.SMPL).

    rot_mats (B, 24, 3, 3); transl (B, 3) or None. Returns (vertices (B, V, 3) or None,
    joints (B, J, 3)). With return_verts=False only what the joint set reads is computed
    (`smpl_joints`).
    """
    if not return_verts:
        return None, smpl_joints(layer, betas, rot_mats, transl, joint_set)
    js = layer.joint_set_tensors(joint_set)
    joints_rest = rest_joints(betas, layer.J_template, layer.J_shapedirs)
    transforms, posed_joints = _chain_transforms(layer, rot_mats, joints_rest)
    feats = pose_features(rot_mats)
    vertices = pose_vertices(betas, feats, transforms, layer.v_template, layer.blend_dirs, layer.lbs_weights, transl)
    if not (vertices.requires_grad and betas.shape[0] >= REPOSE_SUPPORT_BATCH):
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


def _chain_transforms(layer, rot_mats, joints_rest, transforms: bool = True):
    """(skinning transforms (B, 24, 12), or None when not asked for, posed joints (B, 24, 3)):
    cpu.chain where nothing wants a gradient and it can run here (it makes both at once),
    else kinematic_chain and skinning_transforms."""
    if (not wants_grad(rot_mats, joints_rest) and cpu.usable(rot_mats, joints_rest)
            and cpu.chain_usable(layer.parents)):
        return cpu.chain(rot_mats, joints_rest, layer.parents)
    global_rot, posed_joints = kinematic_chain(rot_mats, joints_rest, layer.parents, layer.levels)
    return (skinning_transforms(global_rot, posed_joints, joints_rest) if transforms else None), posed_joints


def smpl_joints(layer, betas, rot_mats, transl, joint_set: str):
    """The joints-only forward (B, J, 3): only what the joint set reads.

    The chain runs on rotations and bone vectors alone (`kinematic_chain`); a set of chain
    joints only (smpl24) stops there: no skinning transform, pose feature or vertex. A set
    with vertex rows poses just its support vertices (a few, or a few hundred for a
    regressor), with the skinning transforms of the joints that move them.
    """
    js = layer.joint_set_tensors(joint_set)
    joints_rest = rest_joints(betas, layer.J_template, layer.J_shapedirs)
    reads_vertices = js.support.shape[0] > 0
    transforms, posed_joints = _chain_transforms(layer, rot_mats, joints_rest, transforms=reads_vertices)
    rows = _chain_rows(js)
    if not reads_vertices:
        joints = posed_joints if rows == tuple(range(posed_joints.shape[1])) else posed_joints[:, list(rows)]
    else:
        joints = regress_joints_folded(posed_joints, betas, pose_features(rot_mats), transforms, js)
    return joints if transl is None else joints + transl[:, None]


def _chain_rows(js) -> tuple:
    """The joint set's chain_index as Python ints (cached on the set: no read-back per call)."""
    rows = getattr(js, "chain_rows", None)
    if rows is None:
        rows = tuple(int(i) for i in js.chain_index.tolist())
        try:
            js.chain_rows = rows
        except (AttributeError, TypeError):
            pass
    return rows


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
    rot = rodrigues_fast(full_pose.reshape(B, NJ, 3)) if pose2rot else full_pose.reshape(B, NJ, 3, 3)
    joints = smpl_joints(layer, betas, rot, transl, joint_set)
    return joints, project_weak_perspective(joints, cam), rot
