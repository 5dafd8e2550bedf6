"""One-Euro smoothing: held against the known truth of synthetic signals."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hmr_fast.infer.smoothing import OneEuroFilter, ParameterSmoother, jitter
from hmr_fast.rotations import rot6d_to_rotmat_np as rot6d_to_rotmat, rotmat_to_6d

FPS = 30.0


def _run(filt, signal, fps=FPS):
    return np.stack([filt(x, i / fps) for i, x in enumerate(signal)])


@pytest.mark.parametrize("amplitude, freq, max_rmse, max_jitter", [
    (0.05, 0.2, 0.6, 0.3),  # a body nearly at rest: error and jitter both drop
    (0.3, 0.5, 1.0, 0.5),  # a moving joint: jitter halves, the lag costs no net error
])
def test_reduces_jitter_against_the_truth(amplitude, freq, max_rmse, max_jitter):
    t = np.arange(600) / FPS
    truth = amplitude * np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], 1)
    noisy = truth + np.random.default_rng(0).normal(0, 0.05, truth.shape)
    smooth = _run(OneEuroFilter(min_cutoff=1.5, beta=2.0), noisy)
    raw_rmse = np.sqrt(np.mean((noisy - truth) ** 2))
    smooth_rmse = np.sqrt(np.mean((smooth - truth) ** 2))
    assert smooth_rmse < max_rmse * raw_rmse
    assert jitter(smooth, truth) < max_jitter * jitter(noisy, truth)


def test_step_lag_is_bounded_and_never_overshoots():
    signal = np.r_[np.zeros(30), np.ones(60)]
    for beta, max_frames in ((0.0, 12), (5.0, 4)):
        out = _run(OneEuroFilter(min_cutoff=1.0, beta=beta), signal)
        after = out[30:]
        frames_to_90 = int(np.argmax(after >= 0.9))
        assert after[frames_to_90] >= 0.9 and frames_to_90 <= max_frames, (beta, frames_to_90)
        assert after.max() <= 1.0 + 1e-12 and out[:30].max() == 0.0
    # speed-adaptive: a larger beta follows the step faster
    slow = _run(OneEuroFilter(1.0, 0.0), signal)[31]
    fast = _run(OneEuroFilter(1.0, 5.0), signal)[31]
    assert fast > slow


def test_first_sample_passes_and_constants_stay_put():
    f = OneEuroFilter(0.5, 0.1)
    x = np.array([[1.0, -2.0], [3.0, 4.0]])
    assert np.array_equal(f(x, 0.0), x)
    for i in range(1, 5):
        assert np.allclose(f(x, i / FPS), x)


def test_skipped_frames_use_real_timestamps():
    """A longer gap means a larger alpha: the filter moves further toward the new value."""
    a, b = OneEuroFilter(1.0, 0.0), OneEuroFilter(1.0, 0.0)
    a(0.0, 0.0)
    b(0.0, 0.0)
    assert b(1.0, 10 / FPS) > a(1.0, 1 / FPS)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0)
    with pytest.raises(ValueError, match="beta"):
        OneEuroFilter(beta=-1)
    f = OneEuroFilter()
    f(1.0, 1.0)
    with pytest.raises(ValueError, match="timestamps"):
        f(1.0, 1.0)


def test_6d_round_trip_on_rotations():
    R = Rotation.random(50, random_state=1).as_matrix()
    assert np.allclose(rot6d_to_rotmat(rotmat_to_6d(R)), R, atol=1e-12)


def test_parameter_smoother_keeps_rotations_valid_and_closer_to_truth():
    rng = np.random.default_rng(2)
    T = 120
    t = np.arange(T) / FPS
    # truth: every joint turning slowly about its own axis
    axes = Rotation.random(24, random_state=3).as_rotvec()
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = 0.8 * np.sin(2 * np.pi * 0.25 * t)[:, None, None] * axes[None]
    truth = Rotation.from_rotvec(angles.reshape(-1, 3)).as_matrix().reshape(T, 24, 3, 3)
    noise = Rotation.from_rotvec(rng.normal(0, 0.05, (T * 24, 3))).as_matrix().reshape(T, 24, 3, 3)
    noisy = noise @ truth
    betas = np.ones(10) + rng.normal(0, 0.1, (T, 10))
    cam = np.array([0.9, 0.0, 0.1]) + rng.normal(0, 0.01, (T, 3))
    smoother = ParameterSmoother()
    out = [smoother(noisy[i], betas[i], cam[i], t[i]) for i in range(T)]
    rots = np.stack([o[0] for o in out])
    assert np.allclose(rots @ rots.swapaxes(-1, -2), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(rots), 1.0, atol=1e-9)

    def angle_error(R):
        rel = R[10:] @ truth[10:].swapaxes(-1, -2)
        return np.arccos(np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1) / 2, -1, 1))

    assert angle_error(rots).mean() < 0.8 * angle_error(noisy).mean()
    smoothed_betas = np.stack([o[1] for o in out])
    assert np.abs(smoothed_betas[30:] - 1).mean() < 0.5 * np.abs(betas[30:] - 1).mean()
