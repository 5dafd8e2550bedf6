"""A sampler of human poses for SMPL: activities, anatomical joint limits, correlated joints.

Poses are built from anatomical parameters (hip flexion, knee flexion, arm elevation, ...)
rather than from per-joint noise, because human poses are strongly correlated: a walking
stride moves both hips, both knees and the opposite arms together; sitting bends hips and
knees together. A sample picks a lower-body activity (stand, walk, run, sit, squat, lunge,
kneel, step, jump, straddle) and an upper-body activity (arms down, swinging with the
stride, up, out, reaching, hands on hips, guard, ...), draws that activity's parameters,
adds noise, clips every parameter to its joint limit, and turns them into SMPL's
per-joint rotations. Left and right are swapped half the time, so asymmetric activities
(lunge, wave) come in both handednesses.

SMPL's rest frame: x to the body's left, y up, z forward (the body faces +z). Parameters are
written for the left side; a right joint's rotation is the mirror image M R M with
M = diag(-1, 1, 1), so positive flexion means the same motion on both sides.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

# Anatomical parameter -> (low, high) in radians: the joint limits every sample is clipped to.
SIDE_LIMITS = {
    "hip_flex": (-0.6, 2.3),        # thigh forward (+) / back (-)
    "hip_abd": (-0.35, 0.9),        # thigh out to the side
    "hip_twist": (-0.6, 0.6),       # about the thigh
    "knee_flex": (0.0, 2.5),
    "ankle_flex": (-0.4, 0.8),      # toes down (+) / up (-)
    "collar_raise": (-0.15, 0.35),
    "shoulder_abd": (0.0, 3.0),     # arm from hanging (0) out to the side and up (pi)
    "shoulder_flex": (-0.8, 2.6),   # hanging arm swung forward (+) / back (-)
    "shoulder_twist": (-1.0, 1.0),
    "elbow_flex": (0.0, 2.6),
    "wrist_flex": (-1.0, 1.0),
    "wrist_dev": (-0.4, 0.4),
}
CENTRE_LIMITS = {
    "spine_flex": (-0.5, 1.4),      # whole spine, forward bend (+)
    "spine_twist": (-0.8, 0.8),
    "spine_bend": (-0.6, 0.6),      # sideways, toward the left (+)
    "neck_flex": (-0.7, 0.8),       # neck and head together, looking down (+)
    "neck_twist": (-1.1, 1.1),
    "neck_bend": (-0.5, 0.5),
}
SIDES = ("left", "right")
# A T-pose arm hangs once the shoulder turns it down by this much (the abduction origin).
_ARM_HANG = np.pi / 2

# SMPL joint ids.
PELVIS, SPINE = 0, (3, 6, 9)
NECK, HEAD = 12, 15
JOINTS = {
    "left": dict(hip=1, knee=4, ankle=7, foot=10, collar=13, shoulder=16, elbow=18, wrist=20, hand=22),
    "right": dict(hip=2, knee=5, ankle=8, foot=11, collar=14, shoulder=17, elbow=19, wrist=21, hand=23),
}


# ---------------------------------------------------------------------------------------
# Activities: each returns parameters for m samples; missing ones default to neutral.
# ---------------------------------------------------------------------------------------
def _u(rng, lo, hi, m):
    return rng.uniform(lo, hi, m)


def _stride(rng, m, amplitude):
    """Walking / running stride: hips swing in antiphase, knees bend in swing phase."""
    phase = rng.uniform(0, 2 * np.pi, m)
    a = amplitude * rng.uniform(0.6, 1.0, m)
    p = {}
    for side, shift in (("left", 0.0), ("right", np.pi)):
        s = np.sin(phase + shift)
        p[f"{side}.hip_flex"] = 0.1 + a * s
        p[f"{side}.knee_flex"] = 0.15 + 1.6 * a * np.clip(np.sin(phase + shift + 1.0), 0, None)
        p[f"{side}.ankle_flex"] = 0.2 * a * np.cos(phase + shift)
        # the arm on the other side swings with this leg
        other = "right" if side == "left" else "left"
        p[f"{other}.shoulder_flex"] = 0.9 * a * s
    return p, phase


def lower_stand(rng, m):
    return {"left.hip_abd": _u(rng, 0, 0.15, m), "right.hip_abd": _u(rng, 0, 0.15, m),
            "left.knee_flex": _u(rng, 0, 0.2, m), "right.knee_flex": _u(rng, 0, 0.2, m),
            "spine_bend": rng.normal(0, 0.05, m)}


def lower_walk(rng, m):
    p, _ = _stride(rng, m, 0.45)
    p["spine_flex"] = _u(rng, 0.0, 0.15, m)
    p["_arms_swing_elbow"] = _u(rng, 0.2, 0.6, m)
    return p


def lower_run(rng, m):
    p, _ = _stride(rng, m, 0.85)
    p["spine_flex"] = _u(rng, 0.1, 0.35, m)
    p["_arms_swing_elbow"] = _u(rng, 1.2, 1.9, m)
    return p


def lower_sit(rng, m):
    p = {}
    for side in SIDES:
        p[f"{side}.hip_flex"] = _u(rng, 1.3, 1.7, m)
        p[f"{side}.knee_flex"] = _u(rng, 1.2, 1.8, m)
        p[f"{side}.hip_abd"] = _u(rng, 0.0, 0.35, m)
    p["spine_flex"] = _u(rng, -0.1, 0.4, m)
    return p


def lower_squat(rng, m):
    p = {}
    depth = _u(rng, 0.5, 1.0, m)
    for side in SIDES:
        p[f"{side}.hip_flex"] = 2.1 * depth + rng.normal(0, 0.05, m)
        p[f"{side}.knee_flex"] = 2.3 * depth + rng.normal(0, 0.05, m)
        p[f"{side}.hip_abd"] = _u(rng, 0.1, 0.5, m)
        p[f"{side}.ankle_flex"] = -0.35 * depth
    p["spine_flex"] = 0.5 * depth
    return p


def lower_lunge(rng, m):
    return {"left.hip_flex": _u(rng, 0.9, 1.5, m), "left.knee_flex": _u(rng, 0.9, 1.6, m),
            "right.hip_flex": _u(rng, -0.5, -0.1, m), "right.knee_flex": _u(rng, 0.2, 1.5, m),
            "left.ankle_flex": _u(rng, -0.3, 0.0, m), "spine_flex": _u(rng, -0.1, 0.3, m)}


def lower_kneel(rng, m):
    return {"left.hip_flex": _u(rng, 1.2, 1.7, m), "left.knee_flex": _u(rng, 1.3, 1.8, m),
            "right.hip_flex": _u(rng, -0.2, 0.3, m), "right.knee_flex": _u(rng, 1.4, 2.0, m),
            "right.ankle_flex": _u(rng, 0.3, 0.8, m), "spine_flex": _u(rng, 0.0, 0.4, m)}


def lower_step(rng, m):
    """Standing on one leg, the other lifted (climbing, kicking, balancing)."""
    return {"left.hip_flex": _u(rng, 0.3, 1.8, m), "left.knee_flex": _u(rng, 0.0, 2.2, m),
            "left.hip_abd": _u(rng, 0.0, 0.5, m), "right.knee_flex": _u(rng, 0.0, 0.3, m),
            "spine_bend": rng.normal(0, 0.1, m)}


def lower_jump(rng, m):
    tuck = _u(rng, 0.2, 1.0, m)
    p = {}
    for side in SIDES:
        p[f"{side}.hip_flex"] = 1.4 * tuck + rng.normal(0, 0.1, m)
        p[f"{side}.knee_flex"] = 1.9 * tuck + rng.normal(0, 0.1, m)
        p[f"{side}.ankle_flex"] = _u(rng, 0.2, 0.8, m)
    p["_arms_up"] = np.ones(m)
    return p


def lower_straddle(rng, m):
    return {"left.hip_abd": _u(rng, 0.3, 0.85, m), "right.hip_abd": _u(rng, 0.3, 0.85, m),
            "left.knee_flex": _u(rng, 0.0, 0.6, m), "right.knee_flex": _u(rng, 0.0, 0.6, m),
            "spine_bend": rng.normal(0, 0.15, m)}


def lower_bend_over(rng, m):
    return {"left.hip_flex": _u(rng, 0.6, 1.4, m), "right.hip_flex": _u(rng, 0.6, 1.4, m),
            "left.knee_flex": _u(rng, 0.0, 0.5, m), "right.knee_flex": _u(rng, 0.0, 0.5, m),
            "spine_flex": _u(rng, 0.4, 1.2, m), "neck_flex": _u(rng, -0.6, 0.0, m)}


LOWER = {  # activity: (function, probability weight)
    "stand": (lower_stand, 3), "walk": (lower_walk, 4), "run": (lower_run, 2), "sit": (lower_sit, 2),
    "squat": (lower_squat, 1), "lunge": (lower_lunge, 1), "kneel": (lower_kneel, 1),
    "step": (lower_step, 1), "jump": (lower_jump, 0.5), "straddle": (lower_straddle, 1),
    "bend_over": (lower_bend_over, 1),
}


def _arm(rng, m, abd, flex, elbow, twist=(-0.3, 0.3)):
    return {"shoulder_abd": _u(rng, *abd, m), "shoulder_flex": _u(rng, *flex, m),
            "elbow_flex": _u(rng, *elbow, m), "shoulder_twist": _u(rng, *twist, m)}


ARM = {  # one arm's activity: (shoulder abduction, shoulder flexion, elbow flexion) ranges, weight
    "down": (((0.05, 0.35), (-0.2, 0.3), (0.0, 0.5)), 4),
    "up": (((2.4, 3.0), (-0.2, 0.5), (0.0, 0.6)), 1),
    "out": (((1.2, 1.8), (-0.3, 0.6), (0.0, 0.8)), 1.5),
    "reach": (((0.1, 0.6), (1.1, 1.8), (0.0, 0.5)), 1.5),
    "hip": (((0.5, 0.9), (-0.4, 0.0), (1.5, 2.1)), 1),
    "hug": (((0.2, 0.6), (0.9, 1.4), (1.5, 2.2)), 1),
    "guard": (((0.1, 0.5), (0.6, 1.1), (1.9, 2.5)), 1),
    "face": (((0.3, 0.7), (0.4, 1.0), (2.2, 2.6)), 0.7),
    "wave": (((1.6, 2.3), (0.0, 0.6), (1.0, 1.8)), 0.7),
    "free": (((0.0, 2.8), (-0.6, 2.2), (0.0, 2.4)), 2),
}


def _choose(rng, table, m):
    names = list(table)
    weights = np.array([table[n][1] for n in names], dtype=np.float64)
    return np.array(names)[rng.choice(len(names), size=m, p=weights / weights.sum())]


def sample_parameters(rng: np.random.Generator, n: int, noise: float = 0.08) -> dict:
    """Anatomical parameters (name -> (n,) array), clipped to the joint limits."""
    params = {f"{s}.{k}": np.zeros(n) for s in SIDES for k in SIDE_LIMITS}
    params.update({k: np.zeros(n) for k in CENTRE_LIMITS})
    lower = _choose(rng, LOWER, n)
    swing_elbow = np.full(n, np.nan)
    arms_up = np.zeros(n, dtype=bool)
    for name in LOWER:
        idx = np.flatnonzero(lower == name)
        if idx.size:
            for key, value in LOWER[name][0](rng, idx.size).items():
                if key == "_arms_swing_elbow":
                    swing_elbow[idx] = value
                elif key == "_arms_up":
                    arms_up[idx] = True
                else:
                    params[key][idx] = value
    # Arms: mostly both sides doing the same thing; strides usually keep their arm swing.
    left_arm = _choose(rng, ARM, n)
    right_arm = np.where(rng.random(n) < 0.6, left_arm, _choose(rng, ARM, n))
    right_arm = np.where(arms_up, "up", right_arm)
    left_arm = np.where(arms_up, "up", left_arm)
    keep_swing = ~np.isnan(swing_elbow) & (rng.random(n) < 0.75)
    for side, choice in (("left", left_arm), ("right", right_arm)):
        for name, (ranges, _) in ARM.items():
            idx = np.flatnonzero((choice == name) & ~keep_swing)
            if idx.size:
                for key, value in _arm(rng, idx.size, *ranges).items():
                    params[f"{side}.{key}"][idx] = value
        idx = np.flatnonzero(keep_swing)
        params[f"{side}.shoulder_abd"][idx] = _u(rng, 0.05, 0.3, idx.size)
        params[f"{side}.elbow_flex"][idx] = swing_elbow[idx] + rng.normal(0, 0.1, idx.size)
        params[f"{side}.collar_raise"] += rng.normal(0, 0.05, n) + 0.1 * (params[f"{side}.shoulder_abd"] > 2.0)
        params[f"{side}.wrist_flex"] += rng.normal(0, 0.3, n)
        params[f"{side}.wrist_dev"] += rng.normal(0, 0.1, n)
        params[f"{side}.hip_twist"] += rng.normal(0, 0.15, n)
    # The trunk and head: small independent motions on top of what the activity set.
    params["spine_twist"] += rng.normal(0, 0.2, n)
    params["spine_bend"] += rng.normal(0, 0.08, n)
    params["neck_flex"] += rng.normal(0.05, 0.2, n)
    params["neck_twist"] += rng.normal(0, 0.35, n)
    params["neck_bend"] += rng.normal(0, 0.1, n)
    # Noise on everything, then the joint limits.
    for key in params:
        params[key] = params[key] + rng.normal(0, noise, n)
    # Mirror half the samples so asymmetric activities have both handednesses.
    swap = rng.random(n) < 0.5
    for key in SIDE_LIMITS:
        left, right = params[f"left.{key}"].copy(), params[f"right.{key}"].copy()
        params[f"left.{key}"] = np.where(swap, right, left)
        params[f"right.{key}"] = np.where(swap, left, right)
    for key in ("spine_twist", "spine_bend", "neck_twist", "neck_bend"):
        params[key] = np.where(swap, -params[key], params[key])
    return clip_to_limits(params)


def clip_to_limits(params: dict) -> dict:
    out = {}
    for key, value in params.items():
        lo, hi = CENTRE_LIMITS[key] if key in CENTRE_LIMITS else SIDE_LIMITS[key.split(".", 1)[1]]
        out[key] = np.clip(value, lo, hi)
    return out


# ---------------------------------------------------------------------------------------
# Parameters -> SMPL rotations
# ---------------------------------------------------------------------------------------
def _rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotations (n, 3, 3) about a coordinate axis by angles (n,)."""
    rotvec = np.zeros((len(angle), 3))
    rotvec[:, axis] = angle
    return Rotation.from_rotvec(rotvec).as_matrix()


X, Y, Z = 0, 1, 2
_MIRROR = np.diag([-1.0, 1.0, 1.0])


def _left_side_rotations(p: dict, side: str) -> dict:
    """Local rotations of one side's joints, written for the left side (x = outward)."""
    g = lambda k: p[f"{side}.{k}"]  # noqa: E731
    rots = {}
    # Hip: twist about the thigh, flex forward (negative about x), then abduct (about +z).
    rots["hip"] = _rot(Z, g("hip_abd")) @ _rot(X, -g("hip_flex")) @ _rot(Y, g("hip_twist"))
    rots["knee"] = _rot(X, g("knee_flex"))  # the shin folds back: positive about x
    rots["ankle"] = _rot(X, g("ankle_flex") * 0.8) @ _rot(Y, 0.3 * g("hip_twist"))
    rots["collar"] = _rot(Z, g("collar_raise"))
    # Shoulder: the T-pose arm (+x) hangs after -pi/2 about z; abduction lifts it back out
    # and up, flexion swings it forward (about -x), twist turns it about itself.
    hang = _rot(Z, g("shoulder_abd") - _ARM_HANG)
    rots["shoulder"] = _rot(X, -g("shoulder_flex")) @ hang @ _rot(X, g("shoulder_twist"))
    rots["elbow"] = _rot(Y, -g("elbow_flex"))  # the forearm folds forward: negative about y
    rots["wrist"] = _rot(Z, -g("wrist_flex")) @ _rot(Y, g("wrist_dev"))
    return rots


def parameters_to_rotmats(params: dict) -> np.ndarray:
    """Anatomical parameters -> SMPL local rotations (n, 24, 3, 3); the root is identity."""
    n = len(params["spine_flex"])
    R = np.tile(np.eye(3), (n, 24, 1, 1))
    for side in SIDES:
        for name, rot in _left_side_rotations(params, side).items():
            j = JOINTS[side][name]
            R[:, j] = rot if side == "left" else _MIRROR @ rot @ _MIRROR
    # The spine bends spread over its three joints, the neck motion over neck and head.
    spine = (_rot(X, params["spine_flex"] / 3) @ _rot(Y, params["spine_twist"] / 3)
             @ _rot(Z, -params["spine_bend"] / 3))
    for j in SPINE:
        R[:, j] = spine
    neck = (_rot(X, params["neck_flex"] / 2) @ _rot(Y, params["neck_twist"] / 2)
            @ _rot(Z, -params["neck_bend"] / 2))
    R[:, NECK] = neck
    R[:, HEAD] = neck
    return R


def sample_poses(rng: np.random.Generator, n: int, noise: float = 0.08) -> np.ndarray:
    """n SMPL poses (n, 72) axis-angle with an identity root (the caller orients the body)."""
    R = parameters_to_rotmats(sample_parameters(rng, n, noise))
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(n, 72)


def sample_betas(rng: np.random.Generator, n: int, num_betas: int = 10, std: float = 1.0) -> np.ndarray:
    """Body shapes (n, num_betas): SMPL's betas are unit-variance PCA coefficients; the
    tails are clipped at 3 std so no body is grotesque."""
    return np.clip(rng.normal(0, std, (n, num_betas)), -3 * std, 3 * std)
