"""Predictor: crops and boxes in, parameters and pixels out; batching; errors that name the field."""
from pathlib import Path

import numpy as np
import pytest
import torch

from hmr_fast.camera import as_box, crop, full_frame_box, keypoint_box, project_weak_perspective, to_pixels
from hmr_fast.infer import Predictor
from hmr_fast.rotations import rodrigues
from random_checkpoint import make_checkpoint

S = 64  # the test checkpoint's crop size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", img_size=S)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(checkpoint, backend="torch", device="cpu")


def _frame(h=150, w=200, seed=0):
    rng = np.random.default_rng(seed)
    frame = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    frame[40:120, 60:110] = (30, 160, 220)  # a block, so crops differ from noise
    return frame


def test_import_path():
    import hmr_fast.infer as infer

    assert infer.Predictor is Predictor


def test_outputs_and_shapes(predictor):
    out = predictor.predict(_frame(), boxes=[[20, 10, 120, 140], [90, 30, 190, 130]])
    B, J = 2, 19
    assert out.rot_mats.shape == (B, 24, 3, 3) and out.pose.shape == (B, 72) and out.betas.shape == (B, 10)
    assert out.joints3d.shape == (B, J, 3) and out.keypoints2d.shape == (B, J, 2)
    assert out.vertices.shape == (B, 6890, 3) and out.vertices_px.shape == (B, 6890, 3)
    assert out.frame_index.tolist() == [0, 0] and len(out) == 2
    assert np.allclose(out.boxes[0], [70, 75, 130])  # square around the box, its long side


def test_pixel_mapping_matches_a_plain_crop(predictor):
    """A box of exactly S pixels is a pixel-aligned copy of the frame: the same model output,
    keypoints shifted by the crop's corner. Checks the box convention end to end."""
    frame = _frame()
    x0, y0 = 37, 21
    box = [x0 - 0.5, y0 - 0.5, x0 + S - 0.5, y0 + S - 0.5]
    via_box = predictor.predict(frame, boxes=[box])
    via_crop = predictor.predict_crops(np.ascontiguousarray(frame[y0:y0 + S, x0:x0 + S]))
    assert np.allclose(via_box.keypoints_norm, via_crop.keypoints_norm, atol=1e-5)
    assert np.allclose(via_box.keypoints2d, via_crop.keypoints2d + [x0, y0], atol=1e-3)
    assert np.allclose(via_box.vertices_px[..., :2], via_crop.vertices_px[..., :2] + [x0, y0], atol=1e-3)


def test_keypoints_are_the_projected_joints(predictor):
    out = predictor.predict(_frame(), boxes=[[10, 10, 150, 140]])
    norm = project_weak_perspective(torch.as_tensor(out.joints3d), torch.as_tensor(out.cam)).numpy()
    cx, cy, size = out.boxes[0]
    assert np.allclose(out.keypoints2d[0], np.array([cx, cy]) + norm[0] * size / 2, atol=1e-3)
    # pose is the axis-angle of rot_mats
    assert np.allclose(rodrigues(torch.as_tensor(out.pose).view(-1, 24, 3)).numpy(), out.rot_mats, atol=1e-5)


def test_batches_give_the_same_answers(checkpoint):
    frames = [_frame(seed=s) for s in range(3)]
    boxes = [[[0, 0, 100, 100], [50, 40, 180, 140]], [[10, 10, 90, 120]], [[30, 20, 160, 150], [0, 0, 60, 60]]]
    whole = Predictor(checkpoint, "torch", "cpu", max_batch=64).predict(frames, boxes)
    chunked = Predictor(checkpoint, "torch", "cpu", max_batch=2).predict(frames, boxes)
    assert whole.frame_index.tolist() == [0, 0, 1, 2, 2]
    for key in ("rot_mats", "betas", "cam", "keypoints2d", "vertices"):
        assert np.allclose(getattr(whole, key), getattr(chunked, key), atol=1e-4), key
    one = Predictor(checkpoint, "torch", "cpu").predict(frames[2], boxes[2][1])
    assert np.allclose(one.keypoints2d[0], whole.keypoints2d[4], atol=1e-3)


def test_compiled_backend_pads_to_its_bucket_and_matches_eager(checkpoint):
    """backend="compiled" on the CPU (Inductor's C++ backend): a batch of 3 runs in the
    size-4 graph and comes back as 3 rows equal to the eager backend's; a batch past
    max_batch is refused. (On CUDA the same path adds CUDA graphs: benchmarks/.)"""
    from hmr_fast.infer.backends import make_backend

    with pytest.warns(UserWarning, match="Inductor's C\\+\\+ backend"):
        compiled = make_backend(checkpoint, "compiled", "cpu", max_batch=4)
    eager = make_backend(checkpoint, "torch", "cpu")
    assert compiled.buckets == (1, 2, 4)
    images = torch.randn(3, 3, S, S, generator=torch.Generator().manual_seed(3))
    got, want = compiled.run(images), eager.run(images)
    for key, value in want.items():
        if value is None:
            assert got[key] is None, key
            continue
        assert got[key].shape == value.shape, key
        assert torch.allclose(got[key], value, atol=1e-4, rtol=1e-4), (key, (got[key] - value).abs().max())
    with pytest.raises(ValueError, match="max_batch 4"):
        compiled.run(torch.zeros(5, 3, S, S))


def test_odd_sized_and_grey_looking_inputs(predictor):
    tall = _frame(301, 97)
    out = predictor.predict(tall)  # no box: the whole image, padded square
    assert np.allclose(out.boxes[0], full_frame_box(301, 97))
    assert np.isfinite(out.keypoints2d).all()
    sub = crop(tall, out.boxes[0], S)
    assert sub.shape == (S, S, 3) and sub[:, :8].max() == 0  # the padding is black


def test_bad_inputs_name_the_field(predictor, checkpoint):
    with pytest.raises(ValueError, match="images"):
        predictor.predict(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="images"):
        predictor.predict(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"boxes\[0\].*x2 > x1"):
        predictor.predict(_frame(), boxes=[[50, 10, 40, 60]])
    with pytest.raises(ValueError, match="boxes: got boxes for 1 frames, but 2 frames"):
        predictor.predict([_frame(), _frame()], boxes=[[[0, 0, 10, 10]]])
    with pytest.raises(ValueError, match="box must be 4"):
        predictor.predict(_frame(), boxes=[[0, 0, 10]])
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor(checkpoint, backend="tpu")
    with pytest.raises(ValueError, match="needs its exported file"):
        Predictor(checkpoint, backend="onnxruntime", device="cpu")
    with pytest.raises(ValueError, match="precision 'fp16' needs a CUDA device"):
        Predictor(checkpoint, backend="torch", device="cpu", precision="fp16")
    with pytest.raises(FileNotFoundError):
        Predictor(Path(checkpoint).with_name("missing.pt"), device="cpu")


def test_without_vertices(checkpoint):
    out = Predictor(checkpoint, "torch", "cpu", with_vertices=False).predict(_frame(), boxes=[[0, 0, 64, 64]])
    assert out.vertices is None and out.vertices_px is None and out.keypoints2d.shape == (1, 19, 2)


def test_crop_helpers():
    assert np.allclose(as_box([10, 20, 30, 60]), [20, 40, 40])
    pts = np.array([[10.0, 10.0], [30.0, 50.0], [np.nan, 0.0]])
    assert np.allclose(keypoint_box(pts, expand=1.5), [20, 30, 60])
    assert keypoint_box(pts[:1]) is None
    assert np.allclose(to_pixels(np.array([[[-1.0, 1.0]]]), np.array([[100.0, 50.0, 40.0]])), [[[80, 70]]])


def test_demo_checkpoint_ships_small_and_loads():
    from hmr_fast.infer.demo import DEMO_CHECKPOINT

    if not DEMO_CHECKPOINT.is_file():
        pytest.skip("the demo checkpoint is not in this checkout yet")
    assert DEMO_CHECKPOINT.stat().st_size < 25e6
    p = Predictor(DEMO_CHECKPOINT, "torch", "cpu")
    assert p.backend.config["model"]["backbone"] == "resnet18"
    out = p.predict(_frame(), boxes=[[0, 0, 100, 100]])
    assert np.isfinite(out.vertices).all()


def test_demo_checkpoint_follows_the_demo_clip(tmp_path):
    """The shipped model on half the demo clip, scored against the clip's own ground truth:
    a quality floor well under what it reaches (assets/README.md: MPJPE 93 mm, PCK@0.1 0.98),
    failing if the asset, its packing or the video pipeline around it breaks."""
    from hmr_fast.infer.demo import DEMO_CHECKPOINT, run_demo

    acc = run_demo(tmp_path / "demo", DEMO_CHECKPOINT, num_frames=45, log=lambda *a: None)["accuracy"]
    assert acc["frames"] == 45
    assert acc["pck@0.1"] > 0.9 and acc["mpjpe_mm"] < 130 and acc["pa_mpjpe_mm"] < 110, acc
