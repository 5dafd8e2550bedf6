"""Priors of the fit: what a plausible human pose and shape are.

- `GaussianMixturePrior`: a Gaussian mixture over the 69 body-pose axis-angle numbers, as
  SMPLify's pose prior, fitted here with scikit-learn to pose data the user has (an AMASS
  npz, or the prior npz `hmr-fast synth` writes) and stored as a plain npz (loaded with
  allow_pickle=False: nothing in the file runs). SMPLify's own mixture is licensed and is not
  shipped; the default (`default_pose_prior`) is fitted to the pose sampler's poses
  (`python -m hmr_fast.fit.priors --out FILE` makes it again). Its penalty is SMPLify's
  max-mixture approximation: min over components of -log(w_k N(x; mu_k, Sigma_k)), so
  the gradient pulls towards the nearest plausible pose class.
- `shape_prior`: betas are unit-variance PCA coefficients: sum of squares.
- `bending_prior`: elbows and knees do not bend backwards: exp(theta) on the wrong-way
  angle of each (SMPL's axes: the left elbow folds about -y, the right about +y, the knees
  about +x), as SMPLify.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hmr_fast.atomic import atomic_path
from hmr_fast.data.pose_sampler import sample_poses
from hmr_fast.data.prior import PosePrior
from hmr_fast.errors import DataError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_PRIOR = ASSETS / "pose_prior_gmm.npz"
POSE_DIM = 69
FORMAT = "hmr_fast.pose_gmm/1"

# (body-pose index, sign): the wrong-way bend of left elbow (y), right elbow (y), left knee (x),
# right knee (x); body_pose index = 3 * (joint - 1) + axis.
BENDS = ((3 * 17 + 1, 1.0), (3 * 18 + 1, -1.0), (3 * 3 + 0, -1.0), (3 * 4 + 0, -1.0))


class GaussianMixturePrior(nn.Module):
    """-log of the best component's weighted density, per sample: (B, 69) -> (B,)."""

    def __init__(self, weights, means, covariances):
        super().__init__()
        weights, means, covariances = (np.asarray(a, dtype=np.float64) for a in (weights, means, covariances))
        K, D = means.shape
        if weights.shape != (K,) or covariances.shape != (K, D, D) or not (weights > 0).all():
            raise DataError(f"a pose mixture needs weights (K,) > 0, means (K, D), covariances (K, D, D); got "
                            f"{weights.shape}, {means.shape}, {covariances.shape}")
        try:
            chol = np.linalg.cholesky(covariances)
        except np.linalg.LinAlgError:
            raise DataError("a pose mixture's covariances must be symmetric positive definite") from None
        precision_chol = np.linalg.inv(chol)  # L^-1: |L^-1 (x - mu)|^2 is the Mahalanobis distance
        log_det = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)
        const = -np.log(weights / weights.sum()) + 0.5 * log_det + 0.5 * D * math.log(2 * math.pi)
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))
        self.register_buffer("precision_chol", torch.as_tensor(precision_chol, dtype=torch.float32))
        self.register_buffer("const", torch.as_tensor(const, dtype=torch.float32))
        self.arrays = dict(weights=weights / weights.sum(), means=means, covariances=covariances)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def forward(self, body_pose: torch.Tensor) -> torch.Tensor:
        diff = body_pose[:, None, :] - self.means.to(body_pose.dtype)  # (B, K, D)
        z = torch.einsum("kij,bkj->bki", self.precision_chol.to(body_pose.dtype), diff)
        nll = 0.5 * (z * z).sum(-1) + self.const.to(body_pose.dtype)  # (B, K)
        return nll.min(dim=1).values

    # -- files ----------------------------------------------------------------------------
    @classmethod
    def fit(cls, poses: np.ndarray, components: int = 8, seed: int = 0) -> "GaussianMixturePrior":
        """Fit to body poses (N, 69) axis-angle with scikit-learn's EM (full covariances)."""
        from sklearn.mixture import GaussianMixture

        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] != POSE_DIM or len(poses) < 10 * components:
            raise DataError(f"fitting a pose prior needs (N, {POSE_DIM}) body poses with N >= {10 * components}, "
                            f"got {poses.shape}")
        gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=200)
        gmm.fit(poses)
        return cls(gmm.weights_, gmm.means_, gmm.covariances_)

    def save(self, path) -> Path:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, format=np.array(FORMAT), **self.arrays)
        return Path(path)

    @classmethod
    def load(cls, path) -> "GaussianMixturePrior":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pose prior {path} not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: not a readable npz file ({type(exc).__name__})") from None
        if str(arrays.get("format", "")) != FORMAT or not {"weights", "means", "covariances"} <= set(arrays):
            raise DataError(f"{path}: not a pose prior (an npz with format {FORMAT!r}, weights, means, covariances)")
        try:
            return cls(arrays["weights"], arrays["means"], arrays["covariances"])
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None


def default_pose_prior() -> GaussianMixturePrior:
    """The shipped mixture, fitted to the pose sampler's poses (see the module docstring)."""
    return GaussianMixturePrior.load(DEFAULT_PRIOR)


def shape_prior(betas: torch.Tensor) -> torch.Tensor:
    return (betas * betas).sum(-1)


def bending_prior(body_pose: torch.Tensor) -> torch.Tensor:
    """(B, 69) -> (B,): exp of each elbow's and knee's wrong-way angle, squared."""
    index = [i for i, _ in BENDS]
    signs = body_pose.new_tensor([s for _, s in BENDS])
    return torch.exp(body_pose[:, index] * signs).pow(2).sum(-1)


def poses_from_file(path) -> np.ndarray:
    """Body poses (N, 69) from an AMASS npz (`poses` (T, >= 66)) or an npz with `pose` (N, 72)."""
    prior = PosePrior([Path(path)])
    return prior.poses[:, 3:72].numpy().astype(np.float64)


# `python -m hmr_fast.fit.priors --out FILE [--poses AMASS.npz] [--components K]`
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="fit a Gaussian-mixture pose prior")
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--poses", help="an AMASS npz or hmr-fast synth's prior.npz (default: the pose sampler)")
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20000, help="pose-sampler poses when --poses is not given")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.poses:
        poses = poses_from_file(args.poses)
    else:
        poses = sample_poses(np.random.default_rng(args.seed), args.samples)[:, 3:]
    prior = GaussianMixturePrior.fit(poses, args.components, args.seed)
    print(f"wrote {prior.save(args.out)}: {prior.num_components} components over {len(poses)} poses")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
