"""The OpenCV mesh rasteriser: coverage, shading, drawing order, culling."""
import numpy as np
import pytest

from hmr_fast.render import lambert_shade, mesh_mask, render_mesh

# A triangle facing the camera (counter-clockwise seen from the camera: the camera looks
# along +z with y down, so the normal (v1-v0)x(v2-v0) must point to -z).
FRONT = np.array([[2.0, 2.0, 5.0], [2.0, 17.0, 5.0], [17.0, 2.0, 5.0]])
FACE = np.array([[0, 1, 2]])


def test_front_triangle_is_filled_inside_only():
    image = render_mesh(np.zeros((20, 20, 3), np.uint8), FRONT, FACE, color=(100, 150, 200), ambient=1.0)
    assert image[5, 5].tolist() == [100, 150, 200]  # inside: exactly the colour (ambient 1)
    assert image[18, 18].tolist() == [0, 0, 0]  # beyond the hypotenuse
    assert image[0, 0].tolist() == [0, 0, 0]


def test_back_face_is_culled_unless_asked():
    back = FACE[:, ::-1].copy()
    culled = render_mesh(np.zeros((20, 20, 3), np.uint8), FRONT, back, color=(255, 255, 255))
    assert culled.max() == 0
    both = render_mesh(np.zeros((20, 20, 3), np.uint8), FRONT, back, color=(255, 255, 255),
                       cull_back_faces=False)
    assert both[5, 5].max() > 0


def test_nearer_face_wins_whatever_the_input_order():
    near = FRONT.copy()
    far = FRONT.copy()
    far[:, 2] = 50.0
    vertices = np.concatenate([near, far])
    for faces in (np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [0, 1, 2]])):
        colors = np.zeros((6, 3))
        colors[:3] = (0, 0, 255)  # near: red in BGR
        colors[3:] = (255, 0, 0)  # far: blue
        image = render_mesh(np.zeros((20, 20, 3), np.uint8), vertices, faces, color=colors, ambient=1.0)
        assert image[5, 5].tolist() == [0, 0, 255]


def test_shading_is_brighter_facing_the_light():
    toward = lambert_shade(np.array([[0.0, 0.0, -1.0]]), light=(0, 0, -1), ambient=0.2)
    oblique = lambert_shade(np.array([[0.0, -np.sqrt(0.5), -np.sqrt(0.5)]]), light=(0, 0, -1), ambient=0.2)
    away = lambert_shade(np.array([[0.0, 0.0, 1.0]]), light=(0, 0, -1), ambient=0.2)
    assert toward[0] == pytest.approx(1.0)
    assert oblique[0] == pytest.approx(0.2 + 0.8 * np.sqrt(0.5))
    assert away[0] == pytest.approx(0.2)


def test_mesh_mask_covers_the_triangle():
    mask = mesh_mask((20, 20), FRONT, FACE)
    assert mask[5, 5] and not mask[18, 18]
    # about half of the 15 x 15 box
    assert 80 < mask.sum() < 160


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="image"):
        render_mesh(np.zeros((20, 20), np.uint8), FRONT, FACE)
    with pytest.raises(ValueError, match="color"):
        render_mesh(np.zeros((20, 20, 3), np.uint8), FRONT, FACE, color=np.zeros((4, 3)))


def test_simplified_mesh_looks_like_the_mesh_and_follows_its_vertices():
    pytest.importorskip("fast_simplification")
    import torch

    from hmr_fast.body import SMPL
    from hmr_fast.render import simplified_faces

    smpl = SMPL()
    template = smpl.v_template.numpy()
    faces = simplified_faces(template, smpl.faces, 2000)
    assert 1900 <= len(faces) <= 2000 and faces.min() >= 0 and faces.max() < len(template)
    assert (np.diff(np.sort(faces, 1), axis=1) > 0).all()  # no collapsed face left
    rng = np.random.default_rng(2)
    pose = torch.as_tensor(rng.normal(0, 0.3, (1, 72)), dtype=torch.float32)
    with torch.no_grad():  # posed and skinned: the simplified faces still index the right vertices
        v = smpl(global_orient=pose[:, :3], body_pose=pose[:, 3:],
                 betas=torch.as_tensor(rng.normal(0, 1, (1, 10)), dtype=torch.float32)).vertices[0].numpy()
    px = np.c_[v[:, :2] * 90 + (160, 120), v[:, 2] * 90]  # about 150 px tall

    def silhouette(f):
        return (render_mesh(np.zeros((240, 320, 3), np.uint8), px, f, cull_back_faces=False) > 0).any(2)

    full, simple = silhouette(smpl.faces), silhouette(faces)
    assert full.sum() > 3000 and (full & simple).sum() / (full | simple).sum() > 0.95
    assert simplified_faces(template, smpl.faces, 10 ** 6) is not None
    assert len(simplified_faces(template, smpl.faces, 10 ** 6)) == len(smpl.faces)


def test_mesh_mask_is_the_union_where_the_surface_overlaps_itself():
    # two overlapping front triangles and a third over both: every covered pixel is in the mask
    faces = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    v = np.array([[2, 2, 5], [2, 30, 5], [30, 2, 5], [10, 10, 4], [10, 40, 4], [40, 10, 4],
                  [5, 5, 3], [5, 35, 3], [35, 5, 3]], dtype=float)
    union = np.zeros((48, 48), bool)
    for f in faces:
        union |= mesh_mask((48, 48), v, f[None])
    assert (mesh_mask((48, 48), v, faces) == union).all() and union.sum() > 600
