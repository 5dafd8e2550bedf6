"""Which head turns MoveNet's feature map into HMR's feature vector: frozen-feature probes.

    hmr-fast synth --out /tmp/synth --num-images 2000 --num-val 400 --num-prior 10 --img-size 192
    python benchmarks/backbone_heads.py --data /tmp/synth --out benchmarks/results/backbone_heads_2026-12-07.json

MoveNet's backbone (hmr_fast.model.movenet, its weights, frozen) encodes the synthetic set's
crops (train.npz / val.npz, no augmentation) at --sizes; each candidate head pools its
(B, 24, S/4, S/4) map to a vector: the global average (24), average pools to 2x2 (96),
4x4 (384) and 8x8 (1536) cells, flattened. Beside them: the global average of the
MobileNetV2's last 1280-channel layer (stride 32, what a classifier would read), and the
concatenation of that and the 4x4 grid, the 4x4 head on a randomly initialised backbone
(how much of a probe's score is the weights') and the training set's mean (no image).
Probes, fitted on train, scored on val: ridge regression (the best of a few penalties) and
a one-hidden-layer MLP (256, ReLU, dropout 0.2, Adam, 300 full-batch steps), each to
  - the 19 HMR keypoints in the crop ([-1, 1] coordinates; error reported in % of the crop side)
  - the 3D joints (19, root-centred on the hips' midpoint; MPJPE in mm).
Writes the JSON and a markdown table beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from hmr_fast.camera import normalise_images
from hmr_fast.data.spin_npz import SpinDataset
from hmr_fast.model.movenet import MoveNetBackbone

HEADS = {"gap": 1, "pool2x2": 2, "pool4x4": 4, "pool8x8": 8}
RIDGE_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def crops(npz, root, size):
    ds = SpinDataset(npz, root, img_size=size)
    samples = [ds[i] for i in range(len(ds))]
    images = torch.from_numpy(np.stack([s["image"] for s in samples]))
    keypoints = np.stack([s["keypoints"] for s in samples])  # (N, 19, 3) crop coords + visibility
    joints = np.stack([s["joints3d"] for s in samples])[..., :3]  # (N, 19, 3) metres
    joints = joints - joints[:, 2:4].mean(1, keepdims=True)  # root: the hips' midpoint
    return images, keypoints, joints


def features(net, images, batch=32):
    """{head: (N, D)} of the 24-channel map, and the 1280-channel layer's global average."""
    out = {h: [] for h in HEADS}
    out["c32_gap1280"] = []
    captured = {}
    hook = net.last.register_forward_hook(lambda m, i, o: captured.__setitem__("c32", o))
    with torch.no_grad():
        for start in range(0, len(images), batch):
            fmap = net(normalise_images(images[start:start + batch]))
            for head, cells in HEADS.items():
                out[head].append(F.adaptive_avg_pool2d(fmap, cells).flatten(1))
            out["c32_gap1280"].append(captured["c32"].mean((2, 3)))
    hook.remove()
    out = {k: torch.cat(v).double().numpy() for k, v in out.items()}
    out["pool4x4+c32_gap1280"] = np.concatenate([out["pool4x4"], out["c32_gap1280"]], 1)
    return out


def standardise(train, val):
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (val - mean) / std


def ridge(xtr, ytr, xva, yva, score):
    xtr, xva = standardise(xtr, xva)
    xtr1, xva1 = np.c_[xtr, np.ones(len(xtr))], np.c_[xva, np.ones(len(xva))]
    best = None
    gram, rhs = xtr1.T @ xtr1, xtr1.T @ ytr
    for lam in RIDGE_PENALTIES:
        w = np.linalg.solve(gram + lam * len(xtr) * np.eye(len(gram)), rhs)
        s = score(xva1 @ w, yva)
        best = s if best is None or s < best else best
    return best


def mlp(xtr, ytr, xva, yva, score, steps=300, hidden=256, seed=0):
    xtr, xva = standardise(xtr, xva)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr, xva = (torch.as_tensor(a, dtype=torch.float32) for a in (xtr, ytr, xva))
    w1 = (torch.randn(xtr.shape[1], hidden, generator=g) / xtr.shape[1] ** 0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = torch.zeros(hidden, ytr.shape[1], requires_grad=True)
    b2 = ytr.mean(0).clone().requires_grad_()
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.mse_loss(F.dropout(torch.relu(xtr @ w1 + b1), 0.2) @ w2 + b2, ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return score((torch.relu(xva @ w1 + b1) @ w2 + b2).double().numpy(), yva)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder `hmr-fast synth` wrote")
    parser.add_argument("--out", required=True, help="the JSON to write (and a .md beside it)")
    parser.add_argument("--sizes", default="128,192", help="crop sizes, multiples of 32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0, load_before = time.perf_counter(), os.getloadavg()
    nets = {"movenet": MoveNetBackbone.pretrained().eval(), "random": MoveNetBackbone().eval()}
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        tr = crops(os.path.join(args.data, "train.npz"), args.data, size)
        va = crops(os.path.join(args.data, "val.npz"), args.data, size)
        vis_tr, vis_va = tr[1][..., 2:] > 0, va[1][..., 2:] > 0
        targets = {
            "keypoints2d": ((tr[1][..., :2] * vis_tr).reshape(len(vis_tr), -1),
                            (va[1][..., :2], vis_va),
                            lambda p, y: float(100 / 2 * (np.linalg.norm(p.reshape(-1, 19, 2) - y[0], axis=-1)
                                                          * y[1][..., 0]).sum() / y[1].sum())),
            "joints3d": (tr[2].reshape(len(tr[2]), -1), va[2],
                         lambda p, y: float(1000 * np.linalg.norm(p.reshape(-1, 19, 3) - y, axis=-1).mean())),
        }
        feats = {name: (features(net, tr[0]), features(net, va[0])) for name, net in nets.items()}
        candidates = [("movenet", h) for h in (*HEADS, "c32_gap1280", "pool4x4+c32_gap1280")]
        candidates.append(("random", "pool4x4"))
        row = {"size": size, "weights": "-", "head": "train mean (no image)", "dim": 0}
        for target, (ytr, yva, score) in targets.items():
            mean = np.tile(ytr.mean(0), (len(va[2]), 1))
            row[f"{target}_ridge"] = row[f"{target}_mlp"] = round(score(mean, yva), 2)
        rows.append(row)
        for weights, head in candidates:
            ftr, fva = feats[weights][0][head], feats[weights][1][head]
            row = {"size": size, "weights": weights, "head": head, "dim": ftr.shape[1]}
            for target, (ytr, yva, score) in targets.items():
                row[f"{target}_ridge"] = round(ridge(ftr, ytr, fva, yva, score), 2)
                row[f"{target}_mlp"] = round(mlp(ftr, ytr, fva, yva, score), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"command": f"python benchmarks/backbone_heads.py --data DATA --out {args.out}",
              "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "seconds": round(time.perf_counter() - t0, 1),
              "train": len(tr[0]), "val": len(va[0]), "rows": rows}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    load = " / ".join(f"{a:.2f}" for a in result["loadavg_before"])
    lines = [f"# Heads for MoveNet's backbone: frozen-feature probes ({result['date']})", "",
             f"`{result['command']}` ({result['train']} train / {result['val']} val synthetic crops, "
             f"{result['threads']} threads, {result['seconds']} s, load average before {load}); DATA from "
             "`hmr-fast synth --out DATA --num-images 2000 --num-val 400 --num-prior 10 --img-size 192` (seed 0).", "",
             "Lower is better. 2D: mean keypoint error in % of the crop side; 3D: root-centred MPJPE (mm).", "",
             "| size | weights | head | dim | 2D kp err % crop (ridge / MLP) | 3D joints mm (ridge / MLP) |",
             "|---:|---|---|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['weights']} | {r['head']} | {r['dim']} | {r['keypoints2d_ridge']} / "
              f"{r['keypoints2d_mlp']} | {r['joints3d_ridge']} / {r['joints3d_mlp']} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
