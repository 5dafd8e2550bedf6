"""The built-in mannequin: an SMPL-format body model generated here, with no licensed files.

It has SMPL's topology size (6890 vertices), its 24-joint skeleton and conventions (metres,
y up, facing +z, left side at +x, T-pose, pelvis near the origin) and every array an
official SMPL file has, so all of hmr_fast runs and is tested on a fresh machine.

The body is an artist's mannequin: 16 closed tubes (torso, head with neck, and per side
upper arm, forearm, mitten hand, thumb, thigh, shin, foot), each a swept superellipse with
rounded caps, overlapping at the joints. Each tube is genus 0, so F = 2V - 4 per tube and
13716 triangles in all. The vertex order is then permuted so that the vertex ids smplx
reads for its extra joints (nose, eyes, ears, fingertips, toes, heels) and HMR's head-top
vertex sit on those body parts.

Everything is a smooth, deterministic function of the rest geometry: skinning weights from
distances to the bones, shape directions from simple body measurements, pose correctives
from distances to each joint, and joint regressors fitted on rings of vertices.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.sparse
from scipy.interpolate import PchipInterpolator

from ..atomic import atomic_path
from .model_data import NUM_JOINTS, NUM_POSE_FEATURES, SMPL_PARENTS, SMPLModelData

MANNEQUIN_VERSION = "1"
NUM_VERTICES = 6890
NUM_BETAS = 10

# ---------------------------------------------------------------------------------------
# The skeleton: SMPL-like neutral rest joints (metres). Left side is +x; right mirrors it.
# ---------------------------------------------------------------------------------------
_CENTRE_AND_LEFT_JOINTS = {
    0: (0.0, -0.225, 0.025),     # pelvis
    1: (0.070, -0.315, 0.018),   # left hip
    3: (0.0, -0.110, -0.002),    # spine1
    4: (0.105, -0.700, 0.010),   # left knee
    6: (0.0, 0.025, 0.025),      # spine2
    7: (0.088, -1.095, -0.032),  # left ankle
    9: (0.0, 0.080, 0.028),      # spine3
    10: (0.118, -1.150, 0.095),  # left foot (ball of the foot)
    12: (0.0, 0.290, -0.010),    # neck
    13: (0.078, 0.200, -0.003),  # left collar
    15: (0.0, 0.355, 0.045),     # head
    16: (0.175, 0.225, -0.017),  # left shoulder
    18: (0.430, 0.212, -0.035),  # left elbow
    20: (0.680, 0.220, -0.042),  # left wrist
    22: (0.765, 0.214, -0.055),  # left hand (knuckles)
}
# Left joint -> right joint.
_LEFT_TO_RIGHT = {1: 2, 4: 5, 7: 8, 10: 11, 13: 14, 16: 17, 18: 19, 20: 21, 22: 23}

SOLE_Y = -1.175  # floor under the feet
HEAD_TOP_Y = 0.52
HAND_LENGTH = 0.19  # wrist to middle fingertip


def rest_joints() -> np.ndarray:
    """(24, 3) rest joint locations, exactly left-right symmetric."""
    joints = np.zeros((NUM_JOINTS, 3))
    for j, xyz in _CENTRE_AND_LEFT_JOINTS.items():
        joints[j] = xyz
        if j in _LEFT_TO_RIGHT:
            joints[_LEFT_TO_RIGHT[j]] = (-xyz[0], xyz[1], xyz[2])
    return joints


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------------------
# Parts: each a tube swept along a straight axis with a keyframed superellipse section.
# ---------------------------------------------------------------------------------------
# Keyframe columns: t (0..1 along the axis), half-size along +u and -u, along +v and -v,
# offset of the section centre along u and v, superellipse exponent (2 = ellipse).
_KEY_COLUMNS = ("t", "u_pos", "u_neg", "v_pos", "v_neg", "off_u", "off_v", "exponent")


@dataclass(frozen=True)
class PartSpec:
    name: str
    start: tuple  # axis start (the start pole)
    end: tuple  # axis end (the end pole)
    up: tuple  # direction u is taken from (made perpendicular to the axis)
    front: tuple  # v = axis x u, flipped to agree with this
    rings: int
    around: int
    cap_start: float  # length of the rounded cap at each end (m)
    cap_end: float
    keys: tuple  # rows of _KEY_COLUMNS
    joints: tuple  # joints this part may be skinned to
    blend: float  # skinning blend width (m)
    bumps: tuple = ()  # (t, theta, amplitude m, sigma along axis m, sigma theta rad)


def _torso_spec() -> PartSpec:
    y0, y1 = -0.385, 0.305
    # y, half-width (x), front, back, z of the section centre, exponent (boxier at the chest)
    rows = [
        (-0.385, 0.110, 0.080, 0.090, 0.000, 2.2),  # crotch, between the thighs
        (-0.340, 0.160, 0.088, 0.108, 0.000, 2.5),  # buttocks
        (-0.300, 0.166, 0.091, 0.115, 0.003, 2.5),
        (-0.220, 0.163, 0.095, 0.097, 0.012, 2.4),  # hips
        (-0.120, 0.140, 0.095, 0.077, 0.020, 2.4),
        (-0.030, 0.136, 0.100, 0.076, 0.024, 2.4),  # waist
        (0.060, 0.150, 0.106, 0.085, 0.024, 2.5),
        (0.140, 0.166, 0.110, 0.090, 0.018, 2.6),  # chest
        (0.200, 0.182, 0.094, 0.090, 0.002, 2.7),
        (0.250, 0.186, 0.075, 0.076, -0.008, 2.7),  # shoulders
        (0.305, 0.172, 0.060, 0.062, -0.012, 2.6),
    ]
    keys = tuple(((y - y0) / (y1 - y0), hw, hw, front, back, 0.0, z, p)
                 for y, hw, front, back, z, p in rows)
    return PartSpec(
        name="torso", start=(0.0, y0, 0.0), end=(0.0, y1, 0.0), up=(1, 0, 0), front=(0, 0, 1),
        rings=33, around=50, cap_start=0.06, cap_end=0.055, keys=keys,
        joints=(0, 1, 2, 3, 6, 9, 12, 13, 14), blend=0.07)


def _head_spec() -> PartSpec:
    y0, y1 = 0.215, HEAD_TOP_Y
    # y, x half-width, front, back, z of the section centre: neck, jaw, face, skull
    rows = [
        (0.215, 0.060, 0.055, 0.060, -0.015),
        (0.270, 0.056, 0.050, 0.055, -0.012),
        (0.300, 0.055, 0.052, 0.056, -0.006),
        (0.320, 0.058, 0.065, 0.060, 0.004),
        (0.340, 0.066, 0.088, 0.072, 0.013),
        (0.365, 0.071, 0.098, 0.085, 0.016),
        (0.390, 0.075, 0.102, 0.095, 0.017),
        (0.420, 0.078, 0.104, 0.100, 0.016),
        (0.450, 0.080, 0.102, 0.102, 0.014),
        (0.480, 0.079, 0.098, 0.100, 0.012),
        (0.520, 0.076, 0.090, 0.095, 0.010),
    ]
    keys = tuple(((y - y0) / (y1 - y0), hw, hw, front, back, 0.0, z, 2.1)
                 for y, hw, front, back, z in rows)
    t = lambda y: (y - y0) / (y1 - y0)  # noqa: E731
    bumps = (
        (t(0.392), np.pi / 2, 0.022, 0.014, 0.16),  # nose
        (t(0.415), -0.12, 0.013, 0.022, 0.16),  # left ear (+x, a little behind centre)
        (t(0.415), np.pi + 0.12, 0.013, 0.022, 0.16),  # right ear
        (t(0.428), np.pi / 2 - 0.42, -0.006, 0.010, 0.14),  # left eye socket
        (t(0.428), np.pi / 2 + 0.42, -0.006, 0.010, 0.14),  # right eye socket
        (t(0.445), np.pi / 2, 0.004, 0.012, 0.6),  # brow
    )
    return PartSpec(
        name="head", start=(0.0, y0, 0.0), end=(0.0, y1, 0.0), up=(1, 0, 0), front=(0, 0, 1),
        rings=25, around=36, cap_start=0.03, cap_end=0.07, keys=keys,
        joints=(9, 12, 15), blend=0.04, bumps=bumps)


def _limb_keys(rows) -> tuple:
    """Rows of (t, u+, u-, v+, v-) with centred sections and exponent 2 (or given last)."""
    out = []
    for row in rows:
        t, up, un, vp, vn = row[:5]
        exponent = row[5] if len(row) > 5 else 2.0
        out.append((t, up, un, vp, vn, 0.0, 0.0, exponent))
    return tuple(out)


def _left_hand_points(J: np.ndarray) -> dict:
    """Where the left hand's parts go: the mitten's axis and the thumb's base and tip."""
    wrist = J[20]
    along = _unit(J[22] - wrist)  # palm down, fingers out along the wrist -> knuckles line
    thumb_base = wrist + 0.035 * along + np.array([0.0, -0.006, 0.028])
    thumb_dir = _unit(0.55 * along + np.array([0.0, -0.10, 0.83]))  # forward and out
    return {"along": along, "fingertip": wrist + HAND_LENGTH * along,
            "thumb_base": thumb_base, "thumb_tip": thumb_base + 0.085 * thumb_dir}


def _left_foot_points() -> tuple:
    """Heel and toe tip of the left foot (toes turned out a little, as SMPL's are)."""
    return np.array([0.083, -1.140, -0.105]), np.array([0.135, -1.150, 0.165])


def _left_arm_specs(J: np.ndarray) -> list:
    shoulder, elbow, wrist = J[16], J[18], J[20]
    a_upper = _unit(elbow - shoulder)
    a_fore = _unit(wrist - elbow)
    hand = _left_hand_points(J)
    a_hand = hand["along"]
    upper = PartSpec(
        name="left_upper_arm", start=tuple(shoulder - 0.05 * a_upper),
        end=tuple(elbow + 0.036 * a_upper), up=(0, 1, 0), front=(0, 0, 1),
        rings=16, around=24, cap_start=0.05, cap_end=0.036,
        # u = up (y), v = front (z): deltoid at the shoulder, biceps in front
        keys=_limb_keys([(0.0, 0.052, 0.050, 0.050, 0.050), (0.15, 0.054, 0.050, 0.052, 0.052),
                         (0.40, 0.046, 0.044, 0.048, 0.044), (0.70, 0.041, 0.040, 0.043, 0.040),
                         (0.88, 0.037, 0.037, 0.038, 0.037), (1.0, 0.036, 0.036, 0.036, 0.036)]),
        joints=(13, 16, 18), blend=0.04)
    fore = PartSpec(
        name="left_forearm", start=tuple(elbow - 0.036 * a_fore),
        end=tuple(wrist + 0.022 * a_fore), up=(0, 1, 0), front=(0, 0, 1),
        rings=15, around=22, cap_start=0.036, cap_end=0.022,
        keys=_limb_keys([(0.0, 0.037, 0.037, 0.038, 0.038), (0.25, 0.039, 0.039, 0.043, 0.042),
                         (0.60, 0.031, 0.031, 0.036, 0.035), (0.92, 0.023, 0.023, 0.031, 0.030),
                         (1.0, 0.022, 0.022, 0.029, 0.029)]),
        joints=(16, 18, 20), blend=0.04)
    # Palm down (thin along y), fingers together like a mitten, thumb a separate tube.
    mitten = PartSpec(
        name="left_hand", start=tuple(wrist - 0.02 * a_hand), end=tuple(hand["fingertip"]),
        up=(0, 1, 0), front=(0, 0, 1), rings=16, around=20, cap_start=0.02, cap_end=0.03,
        keys=_limb_keys([(0.0, 0.021, 0.021, 0.030, 0.030, 2.4),  # wrist
                         (0.20, 0.021, 0.021, 0.040, 0.038, 2.6),
                         (0.50, 0.018, 0.017, 0.046, 0.044, 2.8),  # knuckles
                         (0.72, 0.013, 0.012, 0.044, 0.042, 2.8),
                         (1.0, 0.011, 0.010, 0.040, 0.038, 2.6)]),  # fingertips
        joints=(18, 20, 22), blend=0.03)
    thumb = PartSpec(
        name="left_thumb", start=tuple(hand["thumb_base"]), end=tuple(hand["thumb_tip"]),
        up=(0, 1, 0), front=(1, 0, 0), rings=6, around=10, cap_start=0.015, cap_end=0.010,
        keys=_limb_keys([(0.0, 0.016, 0.016, 0.017, 0.017), (0.4, 0.013, 0.013, 0.013, 0.013),
                         (0.8, 0.011, 0.011, 0.011, 0.011), (1.0, 0.010, 0.010, 0.010, 0.010)]),
        joints=(20, 22), blend=0.03)
    return [upper, fore, mitten, thumb]


def _left_leg_specs(J: np.ndarray) -> list:
    hip, knee, ankle = J[1], J[4], J[7]
    a_thigh = _unit(knee - hip)
    a_shin = _unit(ankle - knee)
    thigh = PartSpec(
        name="left_thigh", start=tuple(hip - 0.09 * a_thigh), end=tuple(knee + 0.05 * a_thigh),
        up=(1, 0, 0), front=(0, 0, 1), rings=20, around=24, cap_start=0.07, cap_end=0.05,
        # u = outward (x): fuller on the outside; v = front (z): buttock/hamstring behind.
        # The rounded top stays inside the torso so the hip reads as one surface.
        keys=_limb_keys([(0.0, 0.076, 0.066, 0.072, 0.078), (0.17, 0.082, 0.068, 0.078, 0.086),
                         (0.35, 0.078, 0.066, 0.078, 0.080), (0.60, 0.066, 0.058, 0.068, 0.066),
                         (0.80, 0.055, 0.050, 0.056, 0.055), (0.90, 0.050, 0.048, 0.052, 0.050),
                         (1.0, 0.048, 0.046, 0.050, 0.048)]),
        joints=(0, 1, 4), blend=0.045)
    shin = PartSpec(
        name="left_shin", start=tuple(knee - 0.048 * a_shin), end=tuple(ankle + 0.03 * a_shin),
        up=(1, 0, 0), front=(0, 0, 1), rings=16, around=20, cap_start=0.048, cap_end=0.03,
        keys=_limb_keys([(0.0, 0.048, 0.046, 0.048, 0.046), (0.10, 0.048, 0.046, 0.046, 0.050),
                         (0.30, 0.047, 0.045, 0.042, 0.062), (0.55, 0.040, 0.038, 0.036, 0.050),
                         (0.85, 0.030, 0.030, 0.030, 0.034), (0.93, 0.030, 0.030, 0.030, 0.032),
                         (1.0, 0.031, 0.031, 0.031, 0.032)]),
        joints=(1, 4, 7), blend=0.045)
    heel, toe = _left_foot_points()
    # t, height above the axis, half-width, exponent: high instep at the ankle, flat toes.
    # The depth below the axis reaches exactly down to the floor, so the sole is flat.
    foot_rows = [(0.0, 0.030, 0.030, 2.6), (0.20, 0.050, 0.034, 2.8), (0.35, 0.050, 0.038, 3.0),
                 (0.60, 0.028, 0.043, 3.0), (0.80, 0.018, 0.046, 3.0), (1.0, 0.016, 0.042, 2.8)]
    axis_height = lambda t: heel[1] + t * (toe[1] - heel[1]) - SOLE_Y  # noqa: E731
    foot = PartSpec(
        name="left_foot", start=tuple(heel), end=tuple(toe), up=(0, 1, 0), front=(1, 0, 0),
        rings=13, around=20, cap_start=0.035, cap_end=0.03,
        keys=tuple((t, top, axis_height(t), half_w, half_w, 0.0, 0.0, p)
                   for t, top, half_w, p in foot_rows),
        joints=(4, 7, 10), blend=0.035)
    return [thigh, shin, foot]


# ---------------------------------------------------------------------------------------
# Tube meshing
# ---------------------------------------------------------------------------------------
@dataclass
class PartMesh:
    vertices: np.ndarray  # (n, 3)
    faces: np.ndarray  # (f, 3), indices local to the part
    centres: np.ndarray  # (n, 3) the axis point (section centre) each vertex was swept from
    axis: np.ndarray  # (3,)


def _tube_faces(rings: int, around: int) -> np.ndarray:
    """Triangles of a closed tube: pole 0, rings of `around` vertices, then the other pole."""
    i = np.arange(around)
    j = (i + 1) % around
    start_fan = np.stack([np.zeros(around, dtype=np.int64), 1 + j, 1 + i], axis=1)
    bands = []
    for r in range(rings - 1):
        a, b = 1 + r * around, 1 + (r + 1) * around
        bands.append(np.stack([a + i, a + j, b + j], axis=1))
        bands.append(np.stack([a + i, b + j, b + i], axis=1))
    last_ring = 1 + (rings - 1) * around
    end_pole = 1 + rings * around
    end_fan = np.stack([np.full(around, end_pole), last_ring + i, last_ring + j], axis=1)
    return np.concatenate([start_fan, *bands, end_fan]).astype(np.int64)


def _ring_stations(spec: PartSpec, length: float, mean_end_radius: tuple):
    """Axial position x and section scale g of each ring: quarter-ellipse caps, straight middle.

    Rings are spread evenly along the profile's approximate arc length so caps get as many
    rings per metre of surface as the straight part.
    """
    c0, c1 = spec.cap_start, spec.cap_end
    straight = length - c0 - c1
    assert straight >= 0.0, spec.name
    arc0 = 0.5 * np.pi * np.sqrt(0.5 * (c0**2 + mean_end_radius[0] ** 2))
    arc1 = 0.5 * np.pi * np.sqrt(0.5 * (c1**2 + mean_end_radius[1] ** 2))
    total = arc0 + straight + arc1
    s = total * np.arange(1, spec.rings + 1) / (spec.rings + 1)
    x = np.empty_like(s)
    g = np.ones_like(s)
    in_start = s < arc0
    in_end = s > arc0 + straight
    alpha0 = 0.5 * np.pi * s[in_start] / arc0
    x[in_start], g[in_start] = c0 * (1.0 - np.cos(alpha0)), np.sin(alpha0)
    mid = ~in_start & ~in_end
    x[mid] = c0 + (s[mid] - arc0)
    alpha1 = 0.5 * np.pi * (total - s[in_end]) / arc1
    x[in_end], g[in_end] = length - c1 * (1.0 - np.cos(alpha1)), np.sin(alpha1)
    return x, g


def _signed_power(c: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    return np.sign(c) * np.abs(c) ** (2.0 / exponent)


def _angle_difference(a, b):
    return np.angle(np.exp(1j * (a - b)))


def build_part(spec: PartSpec) -> PartMesh:
    """Mesh one tube: rings of superellipse sections along the axis, a pole at each end."""
    start, end = np.asarray(spec.start, float), np.asarray(spec.end, float)
    length = float(np.linalg.norm(end - start))
    axis = (end - start) / length
    u = np.asarray(spec.up, float) - np.dot(spec.up, axis) * axis
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    if np.dot(v, spec.front) < 0:
        v = -v

    keys = np.asarray(spec.keys, dtype=np.float64)
    profile = PchipInterpolator(keys[:, 0], keys[:, 1:], axis=0)
    ends = profile([0.0, 1.0])  # the sections at the two poles
    mean_end_radius = tuple(ends[:, :4].mean(axis=1))
    x, g = _ring_stations(spec, length, mean_end_radius)
    t = x / length
    sec = profile(t)  # (rings, 7)
    u_pos, u_neg, v_pos, v_neg, off_u, off_v, exponent = (sec[:, k:k + 1] for k in range(7))

    theta = 2.0 * np.pi * np.arange(spec.around) / spec.around
    cos_t, sin_t = np.cos(theta)[None, :], np.sin(theta)[None, :]
    cu = _signed_power(cos_t, exponent)
    cv = _signed_power(sin_t, exponent)
    du = np.where(cu >= 0, u_pos, u_neg) * cu  # (rings, around)
    dv = np.where(cv >= 0, v_pos, v_neg) * cv
    radial_len = np.hypot(du, dv)
    bump = np.zeros_like(du)
    for t0, theta0, amplitude, sigma_x, sigma_theta in spec.bumps:
        along = (x[:, None] - t0 * length) / sigma_x
        across = _angle_difference(theta[None, :], theta0) / sigma_theta
        bump += amplitude * np.exp(-0.5 * (along**2 + across**2))
    scale = g[:, None] * (1.0 + bump / radial_len)
    centres = start + x[:, None] * axis + off_u * u + off_v * v  # (rings, 3)
    ring_points = (centres[:, None, :]
                   + (scale * du)[..., None] * u + (scale * dv)[..., None] * v)

    # Poles sit on the (offset) section centre at each end.
    start_pole = start + ends[0, 4] * u + ends[0, 5] * v
    end_pole = end + ends[1, 4] * u + ends[1, 5] * v
    vertices = np.concatenate([start_pole[None], ring_points.reshape(-1, 3), end_pole[None]])
    vertex_centres = np.concatenate(
        [start_pole[None], np.repeat(centres, spec.around, axis=0), end_pole[None]])
    faces = _tube_faces(spec.rings, spec.around)
    if _signed_volume(vertices, faces) < 0:  # make every part's triangles face outward
        faces = faces[:, ::-1].copy()
    return PartMesh(vertices, faces, vertex_centres, axis)


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _mirror_spec(spec: PartSpec) -> PartSpec:
    """The right-side twin of a left part (geometry is mirrored after meshing)."""
    return PartSpec(**{**spec.__dict__, "name": spec.name.replace("left", "right"),
                       "joints": tuple(_LEFT_TO_RIGHT.get(j, j) for j in spec.joints)})


def _mirror_mesh(mesh: PartMesh) -> PartMesh:
    flip = np.array([-1.0, 1.0, 1.0])
    # Mirroring reverses orientation, so reverse each triangle to keep normals outward.
    return PartMesh(mesh.vertices * flip, mesh.faces[:, ::-1].copy(), mesh.centres * flip,
                    mesh.axis * flip)


# ---------------------------------------------------------------------------------------
# The assembled body (before the vertex permutation)
# ---------------------------------------------------------------------------------------
@dataclass
class Body:
    vertices: np.ndarray
    faces: np.ndarray
    centres: np.ndarray  # section centre of every vertex
    part_of: np.ndarray  # (V,) index into specs
    specs: list
    axes: list
    ranges: dict  # part name -> (first, stop)


def _part_specs(J: np.ndarray) -> list:
    left = _left_arm_specs(J) + _left_leg_specs(J)
    return [_torso_spec(), _head_spec()] + left + [_mirror_spec(s) for s in left]


def build_body(J: np.ndarray) -> Body:
    specs = _part_specs(J)
    meshes = {}
    for spec in specs:
        if spec.name.startswith("right"):
            meshes[spec.name] = _mirror_mesh(meshes[spec.name.replace("right", "left")])
        else:
            meshes[spec.name] = build_part(spec)
    vertices, faces, centres, part_of, ranges, offset = [], [], [], [], {}, 0
    for index, spec in enumerate(specs):
        mesh = meshes[spec.name]
        n = len(mesh.vertices)
        vertices.append(mesh.vertices)
        faces.append(mesh.faces + offset)
        centres.append(mesh.centres)
        part_of.append(np.full(n, index))
        ranges[spec.name] = (offset, offset + n)
        offset += n
    assert offset == NUM_VERTICES, f"parts hold {offset} vertices, SMPL has {NUM_VERTICES}"
    return Body(np.concatenate(vertices), np.concatenate(faces), np.concatenate(centres),
                np.concatenate(part_of), specs, [meshes[s.name].axis for s in specs], ranges)


# ---------------------------------------------------------------------------------------
# Vertex ids that smplx (and HMR's head top) read, placed on the right body parts
# ---------------------------------------------------------------------------------------
SMPLX_VERTEX_IDS = {
    "nose": 332, "reye": 6260, "leye": 2800, "rear": 4071, "lear": 583,
    "rthumb": 6191, "rindex": 5782, "rmiddle": 5905, "rring": 6016, "rpinky": 6133,
    "lthumb": 2746, "lindex": 2319, "lmiddle": 2445, "lring": 2556, "lpinky": 2673,
    "LBigToe": 3216, "LSmallToe": 3226, "LHeel": 3387,
    "RBigToe": 6617, "RSmallToe": 6624, "RHeel": 6787,
}
HEAD_TOP_VERTEX = 411


def _landmark_targets(J: np.ndarray) -> dict:
    """name -> (part, point): the landmark is the part's vertex nearest that point."""
    hand = _left_hand_points(J)
    heel, toe = _left_foot_points()
    left = {  # left side; the right side mirrors it
        "eye": ("head", (0.030, 0.430, 0.115)),
        "ear": ("head", (0.095, 0.415, 0.0)),
        "thumb": ("thumb", hand["thumb_tip"]),
        # fingertips spread across the end of the mitten, the index finger next to the thumb
        "index": ("hand", hand["fingertip"] - 0.010 * hand["along"] + [0, 0, 0.026]),
        "middle": ("hand", hand["fingertip"] + [0, 0, 0.009]),
        "ring": ("hand", hand["fingertip"] - 0.004 * hand["along"] + [0, 0, -0.009]),
        "pinky": ("hand", hand["fingertip"] - 0.014 * hand["along"] + [0, 0, -0.026]),
        "BigToe": ("foot", toe + [-0.022, -0.01, -0.005]),  # toe tip, inner side, near the floor
        "SmallToe": ("foot", toe + [0.030, -0.01, -0.035]),  # outer side, a little behind
        "Heel": ("foot", heel + [0.0, -0.01, -0.03]),  # back of the heel
    }
    targets = {"head_top": ("head", (0.0, HEAD_TOP_Y + 0.05, 0.01)),
               "nose": ("head", (0.0, 0.392, 0.25))}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        for name, (part, point) in left.items():
            key = (side[0].upper() if name[0].isupper() else side[0]) + name
            part = part if part == "head" else f"{side}_{part}"
            targets[key] = (part, np.asarray(point, float) * [sign, 1.0, 1.0])
    return targets


def landmark_vertex_order(body: Body, J: np.ndarray) -> np.ndarray:
    """new -> old vertex order that gives each smplx landmark id the nearest body vertex."""
    wanted = dict(SMPLX_VERTEX_IDS, head_top=HEAD_TOP_VERTEX)
    chosen = {}
    for name, (part, point) in _landmark_targets(J).items():
        first, stop = body.ranges[part]
        d = np.linalg.norm(body.vertices[first:stop] - np.asarray(point), axis=1)
        chosen[wanted[name]] = first + int(np.argmin(d))
    assert len(set(chosen.values())) == len(chosen), "two landmarks picked the same vertex"
    order = np.full(NUM_VERTICES, -1, dtype=np.int64)
    for new, old in chosen.items():
        order[new] = old
    rest = np.setdiff1d(np.arange(NUM_VERTICES), list(chosen.values()))
    order[order < 0] = rest  # everything else keeps its relative order
    return order


def _permute(body: Body, order: np.ndarray) -> Body:
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    ranges = {}  # parts are no longer contiguous; keep membership via part_of instead
    return Body(body.vertices[order], inverse[body.faces], body.centres[order],
                body.part_of[order], body.specs, body.axes, ranges)


# ---------------------------------------------------------------------------------------
# Skinning weights
# ---------------------------------------------------------------------------------------
def _bone_segments(J: np.ndarray) -> dict:
    """joint -> list of (start, end) segments it moves: to each child, or a stub for leaves."""
    segments = {j: [] for j in range(NUM_JOINTS)}
    for child, parent in enumerate(SMPL_PARENTS):
        if parent >= 0:
            segments[parent].append((J[parent], J[child]))
    segments[0].append((J[0], np.array([0.0, -0.37, 0.01])))  # pelvis also carries the crotch
    segments[15].append((J[15], np.array([0.0, HEAD_TOP_Y - 0.02, 0.03])))
    mirror = np.array([-1.0, 1.0, 1.0])
    (heel, toe), fingertip = _left_foot_points(), _left_hand_points(J)["fingertip"]
    segments[10].append((J[10], toe))
    segments[11].append((J[11], toe * mirror))
    segments[7].append((J[7], heel))  # the ankle carries the heel
    segments[8].append((J[8], heel * mirror))
    segments[22].append((J[22], fingertip))
    segments[23].append((J[23], fingertip * mirror))
    return segments


def _distance_to_segment(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip((points - a) @ ab / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def _collar_side_fade(points: np.ndarray, joints) -> np.ndarray:
    """A collar moves its own side of the chest only: fade it out across the midline.

    Without this, vertices on the breastbone feel both collars, the neck and two spine
    joints at once, and keeping 4 of those 5 makes the weights change steeply there.
    """
    fade = np.ones((len(points), len(joints)))
    for k, j in enumerate(joints):
        if j in (13, 14):
            side = 1.0 if j == 13 else -1.0
            fade[:, k] = _smoothstep(side * points[:, 0], 0.0, 0.08)
    return fade


def skinning_weights(body: Body, J: np.ndarray, max_influences: int = 4) -> np.ndarray:
    """Gaussian in the squared distance to each allowed bone, then the top 4 kept smoothly.

    For a vertex at the joint plane the two bones are equally far, so weights blend 50/50
    there and fade over about `blend` metres either side. Keeping the top 4 by subtracting
    the 5th largest weight (rather than cutting) keeps the weights continuous.
    """
    segments = _bone_segments(J)
    weights = np.zeros((len(body.vertices), NUM_JOINTS))
    for index, spec in enumerate(body.specs):
        mask = body.part_of == index
        points = body.vertices[mask]
        d2 = np.stack([
            np.min([_distance_to_segment(points, a, b) for a, b in segments[j]], axis=0) ** 2
            for j in spec.joints], axis=1)
        logits = -(d2 - d2.min(axis=1, keepdims=True)) / (2.0 * spec.blend**2)
        w = np.exp(logits) * _collar_side_fade(points, spec.joints)
        w /= w.sum(axis=1, keepdims=True)
        if w.shape[1] > max_influences:
            # Only entries above the 5th largest survive the subtraction: at most 4.
            fifth = np.sort(w, axis=1)[:, -(max_influences + 1)][:, None]
            w = np.maximum(w - fifth, 0.0)
            w /= w.sum(axis=1, keepdims=True)
        weights[np.ix_(mask, np.asarray(spec.joints))] = w
    weights[weights < 1e-6] = 0.0  # far tails carry no motion; keep the rows sparse
    return weights / weights.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Shape directions
# ---------------------------------------------------------------------------------------
def _softplus(z: np.ndarray, width: float) -> np.ndarray:
    return width * np.logaddexp(0.0, z / width)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    s = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def shape_directions(body: Body) -> np.ndarray:
    """(V, 3, 10): per unit of beta. +3 of beta 0 adds about 10 cm of height."""
    v, c = body.vertices, body.centres
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    names = [s.name for s in body.specs]
    part = np.array(names, dtype=object)[body.part_of]
    is_torso = part == "torso"
    is_head = part == "head"
    is_limb = np.array([n.endswith(("arm", "forearm", "thigh", "shin")) for n in part])
    outward = v - c  # from the section centre: "thicker" without moving the bone
    dirs = np.zeros((len(v), 3, NUM_BETAS))

    # 0 height: uniform scale about the pelvis
    dirs[:, :, 0] = 0.02 * (v - np.array([0.0, -0.22, 0.0]))
    # 1 girth / weight: every section grows, the torso most
    girth = np.where(is_torso, 1.0, np.where(is_head, 0.3, 0.7))
    dirs[:, :, 1] = 0.05 * girth[:, None] * outward
    # 2 leg length: everything below the hips moves down in proportion
    dirs[:, 1, 2] = -0.03 * _softplus(-0.30 - y, 0.03)
    # 3 arm length: everything beyond the shoulders moves outward in proportion
    above_waist = _smoothstep(y, 0.0, 0.10)
    dirs[:, 0, 3] = 0.035 * np.tanh(x / 0.01) * _softplus(np.abs(x) - 0.20, 0.02) * above_waist
    # 4 shoulder width: the upper torso widens, the arms shift out with it (not the head)
    upper = _smoothstep(y, -0.05, 0.15) * (~is_head)
    dirs[:, 0, 4] = 0.08 * 0.18 * np.tanh(x / 0.18) * upper
    # 5 hip width: the pelvis widens, the legs shift out with it
    lower = 1.0 - _smoothstep(y, -0.25, -0.05)
    dirs[:, 0, 5] = 0.08 * 0.17 * np.tanh(x / 0.17) * lower
    # 6 belly: the front of the waist pushes out
    belly = np.exp(-0.5 * ((x / 0.11) ** 2 + ((y + 0.06) / 0.11) ** 2)) * is_torso
    front = _smoothstep(z - c[:, 2], -0.08, 0.08)
    dirs[:, 2, 6] = 0.02 * belly * front
    dirs[:, 0, 6] = 0.008 * belly * np.tanh(x / 0.05)
    # 7 torso length: the chest, arms and head rise over a stretch of the spine
    dirs[:, 1, 7] = 0.06 * (_softplus(y + 0.20, 0.03) - _softplus(y - 0.12, 0.03))
    # 8 head size: the skull scales about its centre, fading out down the neck
    head_centre = np.array([0.0, 0.42, 0.015])
    dirs[:, :, 8] = 0.08 * (_smoothstep(y, 0.24, 0.36) * is_head)[:, None] * (v - head_centre)
    # 9 limb thickness: arms and legs only
    dirs[:, :, 9] = 0.06 * is_limb[:, None] * outward
    return dirs


# ---------------------------------------------------------------------------------------
# Pose correctives
# ---------------------------------------------------------------------------------------
def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    face_normals = np.cross(b - a, c - a)  # area-weighted
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def pose_directions(body: Body, J: np.ndarray, seed: int = 20150107) -> np.ndarray:
    """(V, 3, 207): feature 9*(j-1)+e belongs to joint j's (R - I) entry e.

    Near joint j the vertices bulge along their normal and slide a little (up to ~1 cm per
    unit feature), fading with distance; a tiny smooth global term that never crosses zero
    keeps every entry non-zero, so the corrective GEMM is dense real work like SMPL's.
    """
    rng = np.random.default_rng(seed)
    v = body.vertices
    normals = vertex_normals(v, body.faces)
    along_normal = rng.uniform(-1.0, 1.0, size=(NUM_JOINTS - 1, 9))
    slide = rng.uniform(-0.5, 0.5, size=(NUM_JOINTS - 1, 9, 3))
    frequency = rng.uniform(1.0, 4.0, size=(NUM_POSE_FEATURES, 3, 3))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(NUM_POSE_FEATURES, 3))
    sign = np.where(rng.random((NUM_POSE_FEATURES, 3)) < 0.5, -1.0, 1.0)

    dist2 = ((v[:, None, :] - J[None, 1:, :]) ** 2).sum(-1)  # (V, 23)
    falloff = np.exp(-0.5 * dist2 / 0.08**2)
    near = (0.010 * falloff[:, :, None, None]
            * (along_normal[None, :, :, None] * normals[:, None, None, :] + slide[None]))
    near = near.reshape(len(v), NUM_POSE_FEATURES, 3).transpose(0, 2, 1)  # (V, 3, 207)
    wave = np.einsum("vi,kci->vck", v, frequency) + phase.T[None]  # (V, 3, 207)
    tiny = 2e-4 * sign.T[None] * (1.5 + np.cos(wave))
    return near + tiny


# ---------------------------------------------------------------------------------------
# Joint regressors: sparse rings of vertices whose weighted mean is the joint
# ---------------------------------------------------------------------------------------
def fit_ring(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 with points.T @ w == target, spread evenly.

    A bounded least-squares problem: the position and the sum are weighted heavily, and a
    small pull towards equal weights spreads the row over the whole ring, so the regressed
    joint moves with the ring when the shape changes.
    """
    n = len(points)
    stiff = 1e3
    A = np.vstack([stiff * points.T, stiff * np.ones((1, n)), np.eye(n)])
    b = np.concatenate([stiff * target, [stiff], np.full(n, 1.0 / n)])
    w, _ = scipy.optimize.nnls(A, b, maxiter=50 * n)
    w[w < 1e-3 * w.max()] = 0.0
    return w / w.sum()


def _ring_row(body: Body, parts, point, axis, max_dist: float, slab: float = 0.03) -> np.ndarray:
    """A regressor row for `point` over a ring of vertices: the slab through it across `axis`.

    The slab is thicker than the ring spacing so that rings on both sides of the point are
    in it and the point lies inside their convex hull.
    """
    point = np.asarray(point, float)
    rel = body.vertices - point
    candidates = np.nonzero(_parts_mask(body, parts) & (np.abs(rel @ axis) < slab)
                            & (np.linalg.norm(rel, axis=1) < max_dist))[0]
    row = np.zeros(len(body.vertices))
    row[candidates] = fit_ring(body.vertices[candidates], point)
    return row


def _landmark_row(body: Body, normals: np.ndarray, vertex_id: int, inset: float = 0.004,
                  radius: float = 0.018) -> np.ndarray:
    """The head vertices around a surface landmark, regressing a point just under it."""
    point = body.vertices[vertex_id]
    candidates = np.nonzero(_parts_mask(body, ["head"])
                            & (np.linalg.norm(body.vertices - point, axis=1) < radius))[0]
    row = np.zeros(len(body.vertices))
    row[candidates] = fit_ring(body.vertices[candidates], point - inset * normals[vertex_id])
    return row


_UP = np.array([0.0, 1.0, 0.0])


def _axis_of(body: Body, part: str) -> np.ndarray:
    return body.axes[[s.name for s in body.specs].index(part)]


def _joint_ring_specs(body: Body, J: np.ndarray) -> dict:
    """joint -> (parts, axis, max distance) of the ring that regresses it."""
    axis_of = {s.name: a for s, a in zip(body.specs, body.axes)}
    rings = {0: (["torso"], _UP, 0.25), 3: (["torso"], _UP, 0.25), 6: (["torso"], _UP, 0.25),
             9: (["torso"], _UP, 0.25), 12: (["head"], _UP, 0.12), 15: (["head"], _UP, 0.15)}
    for side, s in (("left", 1), ("right", -1)):
        joint = (lambda j: j) if s > 0 else (lambda j: _LEFT_TO_RIGHT[j])
        rings[joint(1)] = ([f"{side}_thigh"], axis_of[f"{side}_thigh"], 0.15)
        rings[joint(4)] = ([f"{side}_thigh", f"{side}_shin"],
                           _unit(axis_of[f"{side}_thigh"] + axis_of[f"{side}_shin"]), 0.12)
        rings[joint(7)] = ([f"{side}_shin"], axis_of[f"{side}_shin"], 0.10)
        rings[joint(10)] = ([f"{side}_foot"], axis_of[f"{side}_foot"], 0.10)
        rings[joint(13)] = (["torso"], _unit(J[joint(16)] - J[joint(13)]), 0.13)
        rings[joint(16)] = ([f"{side}_upper_arm"], axis_of[f"{side}_upper_arm"], 0.10)
        rings[joint(18)] = ([f"{side}_upper_arm", f"{side}_forearm"],
                            _unit(axis_of[f"{side}_upper_arm"] + axis_of[f"{side}_forearm"]), 0.08)
        rings[joint(20)] = ([f"{side}_forearm", f"{side}_hand"],
                            _unit(axis_of[f"{side}_forearm"] + axis_of[f"{side}_hand"]), 0.06)
        rings[joint(22)] = ([f"{side}_hand"], axis_of[f"{side}_hand"], 0.07)
    return rings


def _parts_mask(body: Body, names) -> np.ndarray:
    indices = [i for i, s in enumerate(body.specs) if s.name in names]
    return np.isin(body.part_of, indices)


def joint_regressor(body: Body, J: np.ndarray) -> np.ndarray:
    rows = np.zeros((NUM_JOINTS, len(body.vertices)))
    for j, (parts, axis, max_dist) in sorted(_joint_ring_specs(body, J).items()):
        rows[j] = _ring_row(body, parts, J[j], axis, max_dist)
    return rows


def hmr19_regressor(body: Body, J: np.ndarray, joint_rows: np.ndarray) -> np.ndarray:
    """HMR's 19 cocoplus keypoints: LSP's 14, then nose, eyes, ears."""
    normals = vertex_normals(body.vertices, body.faces)
    rows = [joint_rows[j] for j in (8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20)]
    rows.append(_ring_row(body, ["head"], (0.0, 0.255, -0.005), _UP, 0.12))  # base of the neck
    rows.append(_landmark_row(body, normals, HEAD_TOP_VERTEX, inset=0.006))
    rows += [_landmark_row(body, normals, SMPLX_VERTEX_IDS[k])
             for k in ("nose", "leye", "reye", "lear", "rear")]
    return np.stack(rows)


def h36m_regressor(body: Body, J: np.ndarray, joint_rows: np.ndarray) -> np.ndarray:
    """Human3.6M's 17 joints in SPIN's order; hips sit a little wider and lower than SMPL's."""
    def hip(side, sign):
        point = J[1] * [sign, 1.0, 1.0] + [0.015 * sign, -0.01, 0.0]
        return _ring_row(body, [f"{side}_thigh"], point, _axis_of(body, f"{side}_thigh"), 0.15)

    pelvis = _ring_row(body, ["torso"], 0.5 * (J[1] + J[2]) + [0.0, 0.02, 0.0], _UP, 0.25)
    spine = _ring_row(body, ["torso"], (0.0, 0.0, 0.02), _UP, 0.25)
    thorax = _ring_row(body, ["head"], (0.0, 0.245, -0.005), _UP, 0.12)
    nose = _ring_row(body, ["head"], (0.0, 0.39, 0.05), _UP, 0.15)  # H36M's "neck/nose"
    top = _ring_row(body, ["head"], (0.0, 0.47, 0.015), _UP, 0.15)  # H36M's "head"
    rows = [pelvis, hip("right", -1.0), joint_rows[5], joint_rows[8], hip("left", 1.0),
            joint_rows[4], joint_rows[7], spine, thorax, nose, top, joint_rows[16],
            joint_rows[18], joint_rows[20], joint_rows[17], joint_rows[19], joint_rows[21]]
    return np.stack(rows)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
def build_mannequin() -> SMPLModelData:
    """The mannequin as SMPL arrays, built in memory (pure and deterministic)."""
    J = rest_joints()
    body = _permute(built := build_body(J), landmark_vertex_order(built, J))
    joint_rows = joint_regressor(body, J)
    return SMPLModelData(
        v_template=body.vertices.copy(),
        faces=body.faces.astype(np.int64),
        J_regressor=joint_rows,
        parents=np.array(SMPL_PARENTS, dtype=np.int64),
        weights=skinning_weights(body, J),
        shapedirs=shape_directions(body),
        posedirs=pose_directions(body, J),
        extra_regressors={"hmr19": hmr19_regressor(body, J, joint_rows),
                          "h36m": h36m_regressor(body, J, joint_rows)},
        source=f"hmr_fast mannequin v{MANNEQUIN_VERSION}",
    )


def _official_payload(data: SMPLModelData) -> dict:
    """The dict an official SMPL pkl holds (numpy instead of chumpy), plus HMR's cocoplus."""
    kintree = np.array([data.parents, np.arange(NUM_JOINTS)], dtype=np.int64)
    kintree[0, 0] = 4294967295
    return {
        "v_template": data.v_template,
        "f": data.faces.astype(np.uint32),
        "J_regressor": scipy.sparse.csc_matrix(data.J_regressor),
        "kintree_table": kintree.astype(np.uint32),
        "weights": data.weights,
        "shapedirs": data.shapedirs,
        "posedirs": data.posedirs,
        "cocoplus_regressor": scipy.sparse.csc_matrix(data.extra_regressors["hmr19"]),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def _write_atomic(path: Path, write) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_mannequin(out_dir) -> Path:
    """Write out_dir/smpl/SMPL_NEUTRAL.pkl (smplx's layout) and J_regressor_h36m.npy beside it."""
    data = build_mannequin()
    folder = Path(out_dir) / "smpl"
    folder.mkdir(parents=True, exist_ok=True)
    pkl = folder / "SMPL_NEUTRAL.pkl"
    payload = _official_payload(data)
    _write_atomic(pkl, lambda f: pickle.dump(payload, f, protocol=2))
    _write_atomic(folder / "J_regressor_h36m.npy",
                  lambda f: np.save(f, data.extra_regressors["h36m"], allow_pickle=False))
    return pkl


def _cache_root() -> Path:
    if os.environ.get("HMR_FAST_CACHE"):
        return Path(os.environ["HMR_FAST_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hmr_fast"


def mannequin_dir() -> Path:
    """The cached mannequin folder, (re)built on first use or when MANNEQUIN_VERSION changes.

    Each file is replaced atomically and holds the same bytes whoever builds it, and the
    version stamp is written last, so processes building at once cannot see a torn model.
    """
    folder = _cache_root() / "mannequin"
    stamp = folder / "VERSION"
    if not (stamp.is_file() and stamp.read_text().strip() == MANNEQUIN_VERSION
            and (folder / "smpl" / "SMPL_NEUTRAL.pkl").is_file()):
        write_mannequin(folder)
        _write_atomic(stamp, lambda f: f.write(f"{MANNEQUIN_VERSION}\n".encode()))
    return folder


def mannequin_path() -> Path:
    return mannequin_dir() / "smpl" / "SMPL_NEUTRAL.pkl"


# ---------------------------------------------------------------------------------------
# `hmr-fast mannequin --out DIR`
# ---------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to write smpl/SMPL_NEUTRAL.pkl and smpl/J_regressor_h36m.npy")


def run(args) -> int:
    pkl = write_mannequin(args.out)
    print(pkl)
    print(pkl.parent / "J_regressor_h36m.npy")
    return 0
