"""`hmr_fast.SMPL`: a drop-in for smplx's SMPL layer, with a reference and a Triton backend."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from hmr_fast import kernels
from hmr_fast.kernels import cpu, reference

from .joint_sets import JOINT_SET_SIZES, joint_set_rows
from .mannequin import mannequin_path
from .model_data import NUM_JOINTS, SMPLModelData
from .model_file import load_model_file, validate_model_data

BACKENDS = ("auto", "reference", "triton")


@dataclass
class SMPLOutput:
    """What a forward returns; field names follow smplx's SMPLOutput."""

    vertices: Optional[torch.Tensor]  # (B, V, 3), None when return_verts=False
    joints: torch.Tensor  # (B, J, 3) in the joint set's order
    full_pose: torch.Tensor  # (B, 72) axis-angle, or (B, 24, 3, 3) when pose2rot=False
    betas: torch.Tensor  # (B, NB)
    global_orient: torch.Tensor
    body_pose: torch.Tensor
    transl: Optional[torch.Tensor]
    rot_mats: torch.Tensor  # (B, 24, 3, 3) per-joint local rotations


class JointSetTensors(nn.Module):
    """Buffers of one joint set, restricted to the vertices its regressor reads (the support)."""

    def __init__(self, chain_index, regressor, layer_arrays, dtype):
        super().__init__()
        support = np.flatnonzero(np.abs(regressor).sum(0) > 0)
        v_template, blend_dirs, weights = layer_arrays
        dirs = blend_dirs[:, :, support]
        self.register_buffer("chain_index", torch.as_tensor(chain_index))
        self.chain_rows = tuple(int(i) for i in chain_index)  # the same, as Python ints
        self.register_buffer("support", torch.as_tensor(support, dtype=torch.int64))
        self.register_buffer("vertex_regressor", torch.as_tensor(regressor[:, support], dtype=dtype))
        # How much of the mesh's translation a row regressed from it carries (0 on chain rows).
        self.register_buffer("row_sums", self.vertex_regressor.sum(1))
        self.register_buffer("template", torch.as_tensor(v_template[support], dtype=dtype))
        self.register_buffer("blend_dirs", torch.as_tensor(dirs, dtype=dtype))
        self.register_buffer("weights", torch.as_tensor(weights[support], dtype=dtype))
        self._fold(regressor[:, support], v_template[support], dirs, weights[support], dtype)

    def _fold(self, regressor, template, dirs, weights, dtype) -> None:
        """The regressor folded into the skinning, for joints without posed vertices.

        Joint j = sum_s r_js sum_k w_sk A_k [v_s; 1] = sum_k A_k [m_jk; c_jk] with
        c_jk = sum_s r_js w_sk and m_jk = sum_s r_js w_sk v_s, linear in v_s = template_s +
        dirs_s [betas, pose features]: only the (joint, bone) pairs with c_jk != 0 count (46
        for hmr19 on the mannequin, where its support is 1254 vertices). Exact (linear algebra).
        """
        R, W = np.asarray(regressor, np.float64), np.asarray(weights, np.float64)
        C = R @ W
        joint, bone = np.nonzero(np.abs(C) > 0)
        G = R[joint] * W[:, bone].T  # (P, S): how much vertex s of pair p counts
        self.register_buffer("fold_bone", torch.as_tensor(bone, dtype=torch.int64))
        self.register_buffer("fold_weight", torch.as_tensor(C[joint, bone], dtype=dtype))  # (P,) c_jk
        self.register_buffer("fold_template", torch.as_tensor((G @ template).reshape(1, -1), dtype=dtype))  # (1, P*3)
        fold_dirs = np.einsum("ps,cds->dpc", G, np.asarray(dirs, np.float64)).reshape(dirs.shape[1], -1)
        self.register_buffer("fold_dirs", torch.as_tensor(fold_dirs, dtype=dtype))  # (C, P*3)
        to_joints = np.zeros((R.shape[0], len(joint)))
        to_joints[joint, np.arange(len(joint))] = 1.0
        self.register_buffer("fold_rows", torch.as_tensor(to_joints, dtype=dtype))  # (J, P): pairs -> joints


class SMPL(nn.Module):
    """The SMPL body model (Loper et al. 2015).

    model_path: an official SMPL .pkl, a smplx-style .npz, a folder in smplx's layout
    (DIR/smpl/SMPL_NEUTRAL.pkl), or an SMPLModelData; None uses the built-in mannequin.
    backend: "reference" (pure torch), "triton" (fused kernels; CUDA, or the CPU under
    TRITON_INTERPRET=1) or "auto" (triton for CUDA inputs when it is usable, else reference).
    joint_set: the default `joints` returned ("smplx45" like smplx; see joint_sets.py).
    check_finite: raise on NaN/Inf inputs; None checks CPU inputs only (on a GPU the check
    costs a host sync, so it is opt-in there).
    compile: run the reference backend under torch.compile (Inductor) where that is faster
    than eager (small batches: `COMPILE_PAYS_BATCH`), eager elsewhere, so it is never slower;
    the first compiled call at each batch size compiles (seconds). The Triton backend ignores it.
    """

    def __init__(self, model_path=None, gender: str = "neutral", backend: str = "auto",
                 dtype: torch.dtype = torch.float32, joint_set: str = "smplx45",
                 num_betas: Optional[int] = None, check_finite: Optional[bool] = None,
                 compile: bool = False):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        data = _load(model_path, gender)
        self.backend = backend
        self.check_finite = check_finite
        self.compile = bool(compile)
        self.model_source = data.source
        self.num_betas = data.num_betas if num_betas is None else int(num_betas)
        if not 0 < self.num_betas <= data.num_betas:
            raise ValueError(f"num_betas must be in 1..{data.num_betas} for this model, got {num_betas}")
        tree = reference.kinematic_tree(data.parents)
        self.parents, self.levels = tree.parents, tree.levels
        self.faces = data.faces.astype(np.int64)
        self.default_joint_set = joint_set
        self._extra_regressors = data.extra_regressors

        shapedirs = data.shapedirs[:, :, : self.num_betas]
        V = data.num_vertices
        # [shapedirs; posedirs] per coordinate, (3, C, V): both blend shapes in one GEMM per
        # coordinate (reference.blend_shapes). Zero rows pad C = NB + 207 to a multiple of 8,
        # where MKL's GEMM runs ~10% faster; the Triton kernels pad it to 32 in any case.
        blend_dirs = np.concatenate([shapedirs.transpose(1, 2, 0), data.posedirs.transpose(1, 2, 0)], axis=1)
        blend_dirs = np.pad(blend_dirs, ((0, 0), (0, -blend_dirs.shape[1] % 8), (0, 0)))
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
        self.register_buffer("v_template", as_t(data.v_template))
        self.register_buffer("blend_dirs", as_t(blend_dirs))
        self.register_buffer("lbs_weights", as_t(data.weights))
        self.register_buffer("J_template", as_t(data.J_regressor @ data.v_template))
        J_shapedirs = np.einsum("jv,vcb->bjc", data.J_regressor, shapedirs).reshape(self.num_betas, -1)
        self.register_buffer("J_shapedirs", as_t(J_shapedirs))
        # Skinning weights as K (index, weight) pairs per vertex, K measured here (4 for SMPL).
        nonzero = data.weights > 0
        self.skin_k = int(nonzero.sum(1).max())
        order = np.argsort(-data.weights, axis=1, kind="stable")[:, : self.skin_k]
        self.register_buffer("skin_indices", torch.as_tensor(order, dtype=torch.int32))
        self.register_buffer("skin_weights", as_t(np.take_along_axis(data.weights, order, axis=1)))

        self.joint_sets = nn.ModuleDict()
        for name in JOINT_SET_SIZES:
            try:
                chain, regressor = joint_set_rows(name, V, data.extra_regressors)
            except ValueError:
                continue  # not available for this model; joint_set_tensors(name) says why
            self.joint_sets[name] = JointSetTensors(chain, regressor, (data.v_template, blend_dirs, data.weights), dtype)
        self.joint_set_tensors(joint_set)  # fail now on an unknown default

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def joint_set_tensors(self, name: str) -> JointSetTensors:
        if name not in self.joint_sets:
            joint_set_rows(name, self.num_vertices, self._extra_regressors)  # raises the reason
        return self.joint_sets[name]

    def forward(self, betas=None, body_pose=None, global_orient=None, transl=None,
                return_verts: bool = True, pose2rot: bool = True, joint_set: Optional[str] = None,
                **unused) -> SMPLOutput:
        """Pose and shape the body; arguments as smplx's SMPL.forward.

        pose2rot=True: global_orient (B, 3), body_pose (B, 69) axis-angle.
        pose2rot=False: global_orient (B, 1, 3, 3) or (B, 9), body_pose (B, 23, 3, 3) or (B, 207).
        betas (B, NB), transl (B, 3). A missing argument is zeros (the rest pose, mean shape).
        B = 0 gives empty outputs. Inputs of another float dtype (float16, float64) are cast to
        the layer's dtype, and the outputs come in the layer's dtype: build the layer with
        dtype=torch.float64 for float64 results.
        """
        joint_set = joint_set or self.default_joint_set
        B = _batch_size(betas=betas, body_pose=body_pose, global_orient=global_orient, transl=transl)
        ref = self.v_template
        if betas is None:
            betas = ref.new_zeros(B, self.num_betas)
        rot_shape = (3,) if pose2rot else (3, 3)
        if global_orient is None:
            global_orient = ref.new_zeros(B, 3) if pose2rot else torch.eye(3, dtype=ref.dtype, device=ref.device).expand(B, 1, 3, 3)
        if body_pose is None:
            body_pose = ref.new_zeros(B, 69) if pose2rot else torch.eye(3, dtype=ref.dtype, device=ref.device).expand(B, 23, 3, 3)
        betas = _check("betas", betas, B, (self.num_betas,), ref)
        global_orient = _check("global_orient", global_orient, B, (1,) + rot_shape, ref)
        body_pose = _check("body_pose", body_pose, B, (NUM_JOINTS - 1,) + rot_shape, ref)
        if transl is not None:
            transl = _check("transl", transl, B, (3,), ref)
        self._check_finite(betas=betas, global_orient=global_orient, body_pose=body_pose, transl=transl)

        full_pose = torch.cat([global_orient.flatten(1), body_pose.flatten(1)], dim=1)
        if self._resolve_backend(ref.device) == "triton":
            vertices, joints, rot_mats = kernels.smpl_forward(self, betas, full_pose, transl, pose2rot, return_verts, joint_set)
        else:
            rot_mats = reference.rodrigues_fast(full_pose.view(B, NUM_JOINTS, 3)) if pose2rot else full_pose.view(B, NUM_JOINTS, 3, 3)
            run = self._reference("smpl_forward", B, return_verts)
            vertices, joints = run(self, betas, rot_mats, transl, return_verts, joint_set)
        return SMPLOutput(
            vertices=vertices, joints=joints,
            full_pose=full_pose if pose2rot else full_pose.view(B, NUM_JOINTS, 3, 3),
            betas=betas, global_orient=global_orient.reshape(B, *((3,) if pose2rot else (1, 3, 3))),
            body_pose=body_pose.reshape(B, *((69,) if pose2rot else (23, 3, 3))), transl=transl,
            rot_mats=rot_mats,
        )

    def pose_body(self, betas, rot_mats, return_verts: bool = True, joint_set: Optional[str] = None,
                  backend: Optional[str] = None):
        """(vertices (B, V, 3) or None, joints (B, J, 3)) from betas (B, NB) and local rotation
        matrices (B, 24, 3, 3): `forward` without its input checks and output record, for
        callers whose tensors are right by construction (HMR, inference, export).

        backend: this call's backend instead of the layer's ("reference" is what the ONNX and
        AOTInductor exports trace: plain torch ops, no Triton).
        """
        joint_set = joint_set or self.default_joint_set
        if (backend or self._resolve_backend(rot_mats.device)) == "triton":
            vertices, joints, _ = kernels.smpl_forward(self, betas, rot_mats.flatten(1), None, False, return_verts, joint_set)
            return vertices, joints
        run = self._reference("smpl_forward", rot_mats.shape[0], return_verts)
        return run(self, betas, rot_mats, None, return_verts, joint_set)

    def joints_projected(self, betas, rot_mats, cam, joint_set: Optional[str] = None):
        """HMR's training path: (joints (B, J, 3), keypoints (B, J, 2)) from betas (B, NB),
        local rotation matrices (B, 24, 3, 3) and weak-perspective cameras (B, 3) = (s, tx, ty).

        Only the vertices the joint set reads are posed. The Triton backend runs joints,
        projection and their backward as one fused op; the reference backend runs its twin.
        """
        joint_set = joint_set or self.default_joint_set
        fused = self._resolve_backend(rot_mats.device) == "triton"
        op = kernels.smpl_joints_projected if fused else self._reference("smpl_joints_projected", rot_mats.shape[0], False)
        joints, keypoints, _ = op(self, betas, rot_mats.flatten(1), None, cam, False, joint_set)
        return joints, keypoints

    def _reference(self, name: str, batch: int, return_verts: bool):
        """reference.<name>, torch.compile'd where that pays (compile=True; see COMPILE_PAYS)."""
        fn = getattr(reference, name)
        if not self.compile or torch.compiler.is_compiling() or not _compile_pays(batch, return_verts, self.v_template):
            return fn
        compiled = _COMPILED.get(fn)
        if compiled is None:
            compiled = _COMPILED[fn] = torch.compile(fn)
        return compiled

    def _resolve_backend(self, device) -> str:
        """The one place a backend is chosen: "auto" takes the Triton kernels for CUDA inputs
        when they are usable there, the reference everywhere else."""
        if self.backend == "triton":
            usable, why = kernels.triton_usable(device)
            if not usable:
                raise RuntimeError(f"SMPL backend 'triton' is not usable here: {why}")
            return "triton"
        if self.backend == "auto" and device.type == "cuda" and kernels.triton_usable(device)[0]:
            return "triton"
        return "reference"

    def _check_finite(self, **tensors):
        """Raise naming the first input with a NaN or Inf (inputs of one batch, on one device)."""
        given = {name: t for name, t in tensors.items() if t is not None}
        device = next(iter(given.values())).device
        check = self.check_finite if self.check_finite is not None else device.type == "cpu"
        if not check or torch.compiler.is_compiling():
            return
        # One test for all inputs (x * 0 is 0 exactly when x is finite): at a batch of one, a
        # test per input cost as much as a tenth of the forward.
        if bool(torch.cat([t.flatten(1) for t in given.values()], 1).mul(0).eq(0).all()):
            return
        name = next(name for name, t in given.items() if not bool(torch.isfinite(t).all()))
        raise ValueError(f"SMPL input {name!r} contains NaN or Inf")


_COMPILED: dict = {}  # reference function -> its torch.compile'd form, shared by layers
# Where the compiled reference beat eager on the 2-core CPU (one thread; benchmarks/results/
# cpu_smpl_peers_2026-12-02.md): joints-only calls of at most this many samples, and the
# no-grad forward with vertices of one sample where the C loops (kernels/cpu.py) cannot run,
# where Python overhead dominates (with them, eager measured 1.00 against 1.16 ms compiled).
# Everywhere else eager's hand-written backward and cache-sized vertex chunks were as fast or
# faster, so compile=True runs eager there and is never slower than it.
COMPILE_PAYS_BATCH = 8


def _compile_pays(batch: int, return_verts: bool, like: torch.Tensor) -> bool:
    if not return_verts:
        return batch <= COMPILE_PAYS_BATCH
    return batch == 1 and not torch.is_grad_enabled() and not cpu.usable(like)


def _load(model_path, gender) -> SMPLModelData:
    if isinstance(model_path, SMPLModelData):
        return validate_model_data(model_path)
    if model_path is None:
        model_path = mannequin_path()
    return load_model_file(model_path, gender=gender)


def _batch_size(**tensors) -> int:
    """The batch size the given inputs agree on (1 when none is given)."""
    sizes = {name: int(t.shape[0]) for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.dim() > 0}
    if len(set(sizes.values())) > 1:
        found = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise ValueError(f"SMPL inputs disagree on the batch size: {found}")
    return next(iter(sizes.values()), 1)


def _check(name, tensor, batch, per_sample_shape, ref) -> torch.Tensor:
    """Validate one input's shape and type; flat and structured layouts are both accepted."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"SMPL input {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"SMPL input {name!r} must be floating point, got {tensor.dtype}")
    expected = math.prod(per_sample_shape)
    if tensor.dim() < 1 or tensor.shape[0] != batch or math.prod(tensor.shape[1:]) != expected:
        shapes = [per_sample_shape] + ([(expected,)] if len(per_sample_shape) > 1 else [])
        allowed = " or ".join("(B, " + ", ".join(map(str, shape)) + ")" for shape in shapes)
        raise ValueError(f"SMPL input {name!r} must have shape {allowed} with B={batch}; got {tuple(tensor.shape)}")
    if tensor.device != ref.device:
        raise ValueError(f"SMPL input {name!r} is on {tensor.device} but the model is on {ref.device}")
    return tensor.to(ref.dtype)
