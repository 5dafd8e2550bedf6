"""`hmr-fast smpl`: pose the SMPL body and save the mesh as an OBJ, timing the forward.

With no --model it runs on the built-in mannequin, so it works on a fresh machine with no
downloads; with the official SMPL files it runs on those.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hmr_fast.atomic import atomic_path
from hmr_fast.devices import DEVICES, resolve_device

from .smpl import SMPL


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="SMPL .pkl/.npz or smplx-layout folder (default: the mannequin)")
    parser.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"],
                        help="which model file of a folder in smplx's layout (default neutral)")
    parser.add_argument("--backend", default="auto", choices=["auto", "reference", "triton"],
                        help="SMPL backend: auto = the Triton kernels on CUDA, the reference elsewhere")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default: cuda when available")
    parser.add_argument("--batch", type=int, default=64, help="bodies per forward (timed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random poses and shapes")
    parser.add_argument("--out", default="smpl_out", help="output folder for body.obj and joints.npy")


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Wavefront OBJ, written atomically so a reader never sees half a mesh."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in vertices)
        f.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces)


def run(args) -> int:
    if args.batch < 1:
        raise SystemExit("--batch must be >= 1")
    device = resolve_device(args.device)
    layer = SMPL(model_path=args.model, gender=args.gender, backend=args.backend).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    # Small random rotations about the rest pose: a plausible, varied body for a quick look.
    body_pose = (torch.randn(args.batch, 69, generator=gen) * 0.25).to(device)
    betas = torch.randn(args.batch, layer.num_betas, generator=gen).to(device)
    global_orient = torch.zeros(args.batch, 3, device=device)
    with torch.no_grad():
        layer(betas=betas, body_pose=body_pose, global_orient=global_orient)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = layer(betas=betas, body_pose=body_pose, global_orient=global_orient)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_obj(out_dir / "body.obj", out.vertices[0].cpu().numpy(), layer.faces)
    np.save(out_dir / "joints.npy", out.joints.cpu().numpy())
    height = out.vertices[0, :, 1].max() - out.vertices[0, :, 1].min()
    print(f"model: {layer.model_source}")
    print(f"backend: {layer._resolve_backend(device)} on {device}; batch {args.batch}: "
          f"{elapsed * 1e3:.2f} ms ({args.batch / elapsed:,.0f} bodies/s)")
    print(f"first body: {layer.num_vertices} vertices, {len(layer.faces)} faces, height {float(height):.3f} m")
    print(f"wrote {out_dir / 'body.obj'} and {out_dir / 'joints.npy'} {tuple(out.joints.shape)}")
    return 0
