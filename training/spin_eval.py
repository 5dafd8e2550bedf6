"""`hmr-fast eval --dataset NAME --root DIR`: SPIN's evaluation (nkolot/SPIN eval.py), number for number.

    hmr-fast eval --checkpoint C --dataset h36m-p1|h36m-p2|3dpw|mpi-inf-3dhp --root DATASET_DIR \
        [--extras SPIN_DATA] [--smpl SMPL_DIR] [--flip] [--per-sample FILE.csv|.npz]

Files (SPIN's layout; --extras is SPIN's data/ folder, --root the dataset's own folder, the one
SPIN's config.py names in DATASET_FOLDERS, which its npz image names are relative to):
    h36m-p1       dataset_extras/h36m_valid_protocol1.npz   imgname, center, scale, S (N, 24, 4)
    h36m-p2       dataset_extras/h36m_valid_protocol2.npz   (same keys)
    3dpw          dataset_extras/3dpw_test.npz               imgname, center, scale, pose (N, 72),
                                                             shape (N, 10), gender (N,) 'm' / 'f'
    mpi-inf-3dhp  dataset_extras/mpi_inf_3dhp_valid.npz (config.py's name) or
                  mpi_inf_3dhp_test.npz (what its preprocessing writes)   imgname, center, scale, S
    J_regressor_h36m.npy (17, 6890)   SMPL_NEUTRAL (predictions); SMPL_MALE / SMPL_FEMALE (3DPW)
Each npz and J_regressor_h36m.npy is looked for in DIR, DIR/dataset_extras, SPIN_DATA and
SPIN_DATA/dataset_extras; SMPL in --smpl, else SPIN_DATA/smpl, else the checkpoint's own.

What is computed, as SPIN's eval.py computes it:
- the crop: scale * 200 px square around center, resized to 224, no rotation, ImageNet
  normalisation (hmr_fast.camera's affine crop: the same box, sampled bilinearly, where
  SPIN rounds the box to whole pixels and resizes). SPIN's crop goes through
  scipy.misc.imresize (scipy 1.0), which min-max stretches each float crop (zero padding
  included) to 0..255 before PIL's bilinear resize; its released weights saw stretched crops,
  so with `stretch` (the default for a model with SPIN's regressor wiring, i.e. imported
  SPIN weights; `--stretch/--no-stretch`) each crop is stretched the same way, after the
  resize here (a linear map: the same but for the min and max the resampling moves);
- predicted joints: J_regressor_h36m @ the predicted mesh (neutral SMPL, the network's pose
  and betas); pelvis = H36M joint 0 of that regression; the 14 LSP joints H36M_TO_J14
  (17 joints H36M_TO_J17 for MPI-INF-3DHP), minus the pelvis;
- ground truth: Human3.6M, MPI-INF-3DHP: S[:, J24_TO_J14 (J17)] as stored (SPIN's npz are
  root-centred when written); 3DPW: J_regressor_h36m @ the mesh of the gendered SMPL model
  at the ground-truth pose and betas, minus its own H36M joint 0, the same 14 joints;
- MPJPE: the mean joint distance (mm); Reconstruction Error (PA-MPJPE): the same after each
  sample's similarity Procrustes alignment (rotation without reflection, scale, translation);
  both averaged over samples, every joint counted (no confidence mask, as SPIN).
- MPI-INF-3DHP also: PCK@150 mm (share of the 17 joints closer than 150 mm) and AUC (PCK
  averaged over thresholds 0, 5, ..., 150 mm: 31 values), on the root-centred joints and after
  Procrustes. SPIN's eval.py prints only MPJPE and Reconstruction Error for this set (its
  README sends PCK/AUC to the dataset's MATLAB code); these two follow that code's definitions
  (error < threshold) on SPIN's 17 joints.
- --flip (not in SPIN's eval.py): the mirrored crop's prediction is mirrored back (left/right
  joints swapped, R -> M R M with M = diag(-1, 1, 1)), averaged with the plain one (rotations
  re-orthonormalised by SVD, betas averaged).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmr_fast import metrics
from hmr_fast.camera import crop_image, crop_matrix, normalise_images
from hmr_fast.data.dataset import read_image, read_npz
from hmr_fast.errors import DataError

# SPIN's constants.py
H36M_TO_J17 = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9)
H36M_TO_J14 = H36M_TO_J17[:14]
J24_TO_J17 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17)
J24_TO_J14 = J24_TO_J17[:14]
SMPL_JOINTS_FLIP_PERM = (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22)
IMG_RES = 224
PCK_THRESHOLD = 0.150  # metres
AUC_THRESHOLDS = np.linspace(0.0, 0.150, 31)

RELEASE = ("SPIN's release puts it in data/dataset_extras/ (fetch_data.sh's dataset_extras.tar.gz; the "
           "Human3.6M files are made by SPIN's `python preprocess_datasets.py --eval_files`)")
REGRESSOR_RELEASE = "SPIN's release puts it at data/J_regressor_h36m.npy (fetch_data.sh's data.tar.gz)"


@dataclass(frozen=True)
class Benchmark:
    files: tuple  # npz names, first found wins
    gt: str  # "S": 3D joints in the npz; "smpl": gendered SMPL meshes from pose/shape/gender
    joints: int  # 14 or 17
    pck: bool = False


BENCHMARKS = {
    "h36m-p1": Benchmark(("h36m_valid_protocol1.npz",), "S", 14),
    "h36m-p2": Benchmark(("h36m_valid_protocol2.npz",), "S", 14),
    "3dpw": Benchmark(("3dpw_test.npz",), "smpl", 14),
    "mpi-inf-3dhp": Benchmark(("mpi_inf_3dhp_valid.npz", "mpi_inf_3dhp_test.npz"), "S", 17, pck=True),
}


def search_dirs(root, extras=None) -> list:
    dirs = []
    for d in (root, extras):
        if d is not None:
            dirs += [Path(d), Path(d) / "dataset_extras"]
    return dirs


def find_file(names, dirs, release: str) -> Path:
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    looked = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(f"{' or '.join(names)} not found (looked in {looked}); {release}")


# ----------------------------------------------------------------------------- files
def read_eval_npz(path, bench: Benchmark) -> dict:
    """SPIN's evaluation npz, checked: one DataError line naming the file and key."""
    need = {"imgname": None, "center": (2,), "scale": ()}
    need.update({"S": (24, 4)} if bench.gt == "S" else {"pose": (72,), "shape": (10,), "gender": None})
    arrays = read_npz(path, list(need))
    for key in need:
        if key not in arrays:
            raise DataError(f"{path}: missing key {key!r} (SPIN's evaluation npz for this set has "
                            f"{', '.join(need)}); has {sorted(arrays) or 'none of them'}")
    names = arrays["imgname"]
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
        raise DataError(f"{path}: key 'imgname' must be a non-empty 1-D array of strings, got dtype "
                        f"{names.dtype} shape {names.shape}")
    n = len(names)
    for key, shape in need.items():
        if shape is None:
            continue
        a = arrays[key]
        if a.shape != (n,) + shape:
            raise DataError(f"{path}: key {key!r} must have shape {(n,) + shape} (N={n} from imgname), got {a.shape}")
        if a.dtype.kind not in "fiu" or not np.isfinite(a).all():
            raise DataError(f"{path}: key {key!r} must hold finite numbers")
    if (arrays["scale"] <= 0).any():
        raise DataError(f"{path}: key 'scale' has values <= 0 (rows {np.flatnonzero(arrays['scale'] <= 0)[:5].tolist()})")
    if names.dtype.kind == "S":
        arrays["imgname"] = np.char.decode(names, "utf-8")
    if bench.gt == "smpl":
        g = arrays["gender"]
        if g.shape != (n,):
            raise DataError(f"{path}: key 'gender' must have shape ({n},), got {g.shape}")
        text = np.char.decode(g, "utf-8") if g.dtype.kind == "S" else g.astype(str)
        bad = np.flatnonzero(~np.isin(text, ["m", "f"]))
        if len(bad):
            raise DataError(f"{path}: key 'gender' must be 'm' or 'f' (SPIN's 3dpw_test.npz), rows {bad[:5].tolist()} "
                            f"hold {text[bad[0]]!r}")
        arrays["female"] = text == "f"  # SPIN: 0 if 'm' else 1
    if bench.gt == "S":
        arrays["S"] = arrays["S"].astype(np.float64)
    return arrays


def read_h36m_regressor(path, num_vertices: int) -> torch.Tensor:
    arrays = None
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a numpy .npy array ({type(exc).__name__}); expected J_regressor_h36m.npy "
                        f"(17, {num_vertices})") from None
    if not isinstance(arrays, np.ndarray) or arrays.shape != (17, num_vertices) or arrays.dtype.kind not in "fiu":
        raise DataError(f"{path}: shape {getattr(arrays, 'shape', None)}; expected J_regressor_h36m.npy "
                        f"(17, {num_vertices}) numbers, as many columns as the SMPL model has vertices")
    return torch.as_tensor(arrays, dtype=torch.float64)


class EvalCrops(torch.utils.data.Dataset):
    """SPIN's evaluation crops: (uint8 (3, 224, 224), index)."""

    def __init__(self, arrays: dict, root, npz_path, stretch: bool = False):
        self.arrays, self.root, self.npz_path, self.stretch = arrays, Path(root), npz_path, stretch

    def __len__(self):
        return len(self.arrays["imgname"])

    def __getitem__(self, i):
        path = self.root / str(self.arrays["imgname"][i])
        image = read_image(str(path))
        if image is None:
            raise DataError(f"{path}: image missing or unreadable (row {i} of {self.npz_path}; --root must be the "
                            "dataset folder SPIN's config.py names, which its imgname entries are relative to)")
        m = crop_matrix(self.arrays["center"][i], float(self.arrays["scale"][i]) * 200.0, IMG_RES)
        crop = crop_image(image, m, IMG_RES)
        if self.stretch:
            crop = stretch_contrast(crop)
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))), i


def stretch_contrast(crop: np.ndarray) -> np.ndarray:
    """The crop's darkest value to 0 and brightest to 255 over all channels, linearly (scipy
    1.0's bytescale, which SPIN's crops went through); uint8 out."""
    lo, hi = float(crop.min()), float(crop.max())
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return np.clip(np.rint((crop.astype(np.float64) - lo) * scale), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------ arithmetic
def select_pred(pred17: torch.Tensor, joints: int) -> torch.Tensor:
    """SPIN: the H36M regression's joint 0 is the pelvis; the LSP 14 (or 17) joints minus it."""
    mapper = H36M_TO_J17 if joints == 17 else H36M_TO_J14
    return pred17[:, list(mapper)] - pred17[:, [0]]


def select_gt_S(S: torch.Tensor, joints: int) -> torch.Tensor:
    """SPIN: S[:, J24_TO_J14 (J17), :3] as stored (its npz files are root-centred)."""
    mapper = J24_TO_J17 if joints == 17 else J24_TO_J14
    return S[:, list(mapper), :3]


def joint_errors(pred: torch.Tensor, gt: torch.Tensor, pck: bool = False) -> dict:
    """Per-sample errors (numpy, mm and shares) of selected, centred joints (B, J, 3) in metres."""
    pred, gt = pred.double(), gt.double()
    aligned = metrics.similarity_procrustes(pred, gt)
    out = {"mpjpe_mm": 1000 * metrics.mpjpe(pred, gt), "pa_mpjpe_mm": 1000 * metrics.mpjpe(aligned, gt)}
    if pck:
        out["pck150"] = metrics.pck3d(pred, gt, PCK_THRESHOLD)
        out["auc"] = metrics.auc3d(pred, gt, AUC_THRESHOLDS)
        out["pa_pck150"] = metrics.pck3d(aligned, gt, PCK_THRESHOLD)
        out["pa_auc"] = metrics.auc3d(aligned, gt, AUC_THRESHOLDS)
    return {k: v.cpu().numpy() for k, v in out.items()}


def unflip_rotations(rot_mats: torch.Tensor) -> torch.Tensor:
    """A mirrored image's SMPL rotations (B, 24, 3, 3) -> the unmirrored body's (SPIN's flip_pose
    on matrices: joints swapped left/right, R -> M R M with M = diag(-1, 1, 1))."""
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=rot_mats.dtype, device=rot_mats.device))
    return M @ rot_mats[:, list(SMPL_JOINTS_FLIP_PERM)] @ M


def mean_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The rotation nearest (a + b) / 2 (SVD projection onto SO(3))."""
    U, _, Vh = torch.linalg.svd((a + b).double() / 2)
    d = torch.sign(torch.linalg.det(U @ Vh))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    return (U @ D @ Vh).to(a.dtype)


# --------------------------------------------------------------------------- the run
@torch.no_grad()
def evaluate_spin_benchmark(model, name: str, root, extras=None, smpl_path=None, batch_size: int = 32,
                            workers: int = 2, flip: bool = False, device="cpu", max_samples: int = 0,
                            stretch=None):
    """(summary dict, per-sample dict of numpy arrays incl. imgname) of `model` on benchmark `name`.
    stretch: SPIN's contrast stretch of each crop (None: for a model with SPIN's regressor)."""
    from hmr_fast.body import SMPL

    bench = BENCHMARKS[name]
    dirs = search_dirs(root, extras)
    npz_path = find_file(bench.files, dirs, RELEASE)
    arrays = read_eval_npz(npz_path, bench)
    if max_samples and max_samples < len(arrays["imgname"]):
        arrays = {k: v[:max_samples] for k, v in arrays.items()}
    if smpl_path is None and extras is not None and (Path(extras) / "smpl").is_dir():
        smpl_path = extras
    smpl = model.smpl if smpl_path is None else SMPL(smpl_path, backend="reference", num_betas=10).to(device)
    num_vertices = int(getattr(smpl, "num_vertices", 6890))
    regressor_dirs = [Path(d) for d in (extras, root) if d is not None] + \
        ([Path(smpl_path)] if smpl_path is not None and Path(smpl_path).is_dir() else [])
    regressor = read_h36m_regressor(find_file(("J_regressor_h36m.npy",), regressor_dirs, REGRESSOR_RELEASE),
                                    num_vertices).to(device)
    gendered = None
    if bench.gt == "smpl":
        if smpl_path is None:
            raise FileNotFoundError("3dpw needs SMPL's male and female models for its ground-truth meshes: pass "
                                    "--smpl DIR (SMPL_MALE.pkl, SMPL_FEMALE.pkl; SPIN keeps them in data/smpl/)")
        gendered = {g: SMPL(smpl_path, gender=g, backend="reference", num_betas=10).to(device)
                    for g in ("male", "female")}
    if stretch is None:
        stretch = getattr(model, "config", {}).get("regressor", "hmr") == "spin"
    loader = torch.utils.data.DataLoader(EvalCrops(arrays, root, npz_path, stretch), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    was_training = model.training
    model.eval()
    per_sample = {}
    for images, index in loader:
        x = normalise_images(images.to(device))
        out = model(x)
        rot_mats, betas = out.rot_mats.float(), out.betas.float()
        if flip:
            out_f = model(torch.flip(x, dims=[3]))
            rot_mats = mean_rotation(rot_mats, unflip_rotations(out_f.rot_mats.float()))
            betas = (betas + out_f.betas.float()) / 2
        vertices, _ = smpl.pose_body(betas, rot_mats, True, None)
        pred17 = torch.einsum("jv,bvc->bjc", regressor, vertices.double())
        pred = select_pred(pred17, bench.joints)
        idx = index.numpy()
        if bench.gt == "S":
            gt = select_gt_S(torch.as_tensor(arrays["S"][idx], device=device), bench.joints)
        else:
            gt = ground_truth_3dpw(gendered, regressor, arrays, idx, device, bench.joints)
        for k, v in joint_errors(pred, gt, bench.pck).items():
            per_sample.setdefault(k, []).append(v)
    model.train(was_training)
    per_sample = {k: np.concatenate(v) for k, v in per_sample.items()}
    summary = {k: float(v.mean()) if len(v) else math.nan for k, v in per_sample.items()}
    summary["samples"] = len(arrays["imgname"])
    summary["dataset"] = name
    summary["file"] = str(npz_path)
    per_sample["imgname"] = np.asarray(arrays["imgname"])
    return summary, per_sample


def ground_truth_3dpw(gendered: dict, regressor, arrays, idx, device, joints: int) -> torch.Tensor:
    """SPIN: the gendered model's mesh at the ground-truth pose and betas, J_regressor_h36m, minus its joint 0."""
    pose = torch.as_tensor(arrays["pose"][idx], dtype=torch.float32, device=device)
    betas = torch.as_tensor(arrays["shape"][idx], dtype=torch.float32, device=device)
    female = torch.as_tensor(arrays["female"][idx], device=device)
    verts = {}
    for g, smpl in gendered.items():
        verts[g] = smpl(betas=betas, body_pose=pose[:, 3:], global_orient=pose[:, :3]).vertices
    vertices = torch.where(female[:, None, None], verts["female"], verts["male"])
    gt17 = torch.einsum("jv,bvc->bjc", regressor, vertices.double())
    return select_pred(gt17, joints)


def print_summary(summary: dict) -> None:
    name = summary["dataset"]
    print(f"{name}: {summary['samples']} samples ({summary['file']})")
    print(f"MPJPE                 {summary['mpjpe_mm']:.2f} mm")
    print(f"Reconstruction Error  {summary['pa_mpjpe_mm']:.2f} mm   (PA-MPJPE)")
    if "pck150" in summary:
        print(f"PCK@150mm             {100 * summary['pck150']:.1f} %   (Procrustes-aligned {100 * summary['pa_pck150']:.1f} %)")
        print(f"AUC 0-150mm           {100 * summary['auc']:.1f} %   (Procrustes-aligned {100 * summary['pa_auc']:.1f} %)")


def write_per_sample(path, per_sample: dict) -> Path:
    """Per-sample errors: .npz (arrays) or .csv (a row per sample, imgname first)."""
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, **per_sample)
        return path
    keys = ["imgname"] + [k for k in per_sample if k != "imgname"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for i in range(len(per_sample["imgname"])):
            w.writerow([per_sample["imgname"][i]] + [f"{per_sample[k][i]:.6g}" for k in keys[1:]])
    return path
