"""`hmr-fast images`: every person in photographs. Its rows against the video pipeline's
first frame of the same image, the npz's keys when nobody is found, the command on a folder
with an unreadable file, and the real detector on a rendered crowd with default flags."""
import cv2
import numpy as np
import pytest
from test_people_video import TruthDetector, _run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    from hmr_fast.infer.clips import render_crowd_clip

    out = tmp_path_factory.mktemp("crowd_photos")
    gt = render_crowd_clip(out, num_people=3, num_frames=3, width=480, height=270, seed=1)
    capture = cv2.VideoCapture(str(out / "crowd.mp4"))
    ok, first = capture.read()
    capture.release()
    assert ok
    cv2.imwrite(str(out / "first.png"), first)  # lossless: the photo holds the video's first frame
    return out, gt, first


@pytest.fixture(scope="module")
def predictor():
    from hmr_fast.infer import Predictor
    from hmr_fast.infer.pipeline import SHIPPED_CHECKPOINT
    return Predictor(SHIPPED_CHECKPOINT, "torch", "cpu")


class NobodyDetector:
    def __call__(self, image):
        return []


@pytest.mark.parametrize("refine", [0, 10])
def test_photo_rows_equal_the_videos_first_frame(crowd, predictor, tmp_path, refine):
    """One pipeline: a photograph gives the rows the same image gives as a video's first frame
    (same detections, HMR, start and fit; a photo's fit of <= 25 iterations is one block)."""
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.images import PeoplePhotos

    out, gt, first = crowd
    _, video = _run(out, tmp_path, TruthDetector(gt, seed=3), refine, predictor, max_frames=1)
    photos = PeoplePhotos(refine=refine, detector=TruthDetector(gt, seed=3), predictor=predictor)
    rows, overlay = photos(cv2.imread(str(out / "first.png")))
    assert len(rows) == len(video["frame"]) >= 2 and (video["frame"] == 0).all()
    assert overlay.shape == first.shape and (overlay != first).any()  # meshes drawn
    # match people by their detected box (the video orders them by track id)
    order = [int(np.argmin(np.abs(video["box"] - r["box"][:4]).sum(1))) for r in rows]
    assert sorted(order) == list(range(len(rows)))
    for key in ("betas", "body_pose", "global_orient", "camera", "keypoints2d_fit", "crop_box", "loss"):
        got = np.stack([r[key] for r in rows])
        np.testing.assert_allclose(got, video[key][order], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(np.stack([r["box"][4] for r in rows]), video["score"][order])
    if refine == 0:  # HMR alone: nobody took the learned start
        assert all(r["start"] == 0 for r in rows)


def test_nobody_found_still_writes_every_key(crowd, predictor, tmp_path):
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.images import PHOTO_FIELDS, PeoplePhotos, ImagesConfig, run_images
    from hmr_fast.infer.people.video import VIDEO_FIELDS

    out, _, _ = crowd
    _, video = _run(out, tmp_path, NobodyDetector(), 10, predictor, max_frames=2)
    for key, (shape, dtype) in VIDEO_FIELDS.items():
        assert video[key].shape == (0, *shape) and video[key].dtype == np.dtype(dtype), key
    photos = PeoplePhotos(refine=10, detector=NobodyDetector(), predictor=predictor)
    summary = run_images(ImagesConfig(inputs=[str(out / "first.png")], out=str(tmp_path / "photos"),
                                      progress=False), photos)
    assert summary["images"] == 1 and summary["people"] == 0
    with np.load(tmp_path / "photos" / "people.npz") as npz:  # no pickles: allow_pickle stays False
        for key, (shape, dtype) in PHOTO_FIELDS.items():
            assert npz[key].shape == (0, *shape) and npz[key].dtype.kind == np.dtype(dtype).kind, key
    assert (tmp_path / "photos" / "first.jpg").is_file()


def test_people_count_in_words():
    from hmr_fast.infer.people.stages import people_count
    assert [people_count(n) for n in (0, 1, 2)] == ["0 people", "1 person", "2 people"]


def test_images_command_default_flags(crowd, tmp_path, capsys):
    """`hmr-fast images` with no flags over a folder (one unreadable file among the images) and
    a glob: the real detector finds the rendered people, every image gets its overlay, the
    unreadable one a warning, the npz one row per person."""
    pytest.importorskip("norfair")
    pytest.importorskip("ai_edge_litert.interpreter")
    from hmr_fast import cli
    from hmr_fast.errors import HmrFastError
    from hmr_fast.model.movenet_weights import movenet_weights
    try:
        movenet_weights()
    except HmrFastError as exc:
        pytest.skip(f"MoveNet weights not available: {exc}")
    out, gt, first = crowd
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), first)
    cv2.imwrite(str(folder / "b.png"), np.ascontiguousarray(first[:, ::-1]))  # the mirror image
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    extra = tmp_path / "more"
    extra.mkdir()
    cv2.imwrite(str(extra / "a.jpg"), first)  # the same stem again: written as a_2.jpg
    code = cli.main(["images", str(folder), str(extra / "*.jpg"), "--out", str(tmp_path / "res"), "--refine", "30"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "broken.jpg: unreadable" in captured.out + captured.err
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["a.jpg", "a_2.jpg", "b.jpg", "people.npz"]
    with np.load(tmp_path / "res" / "people.npz") as npz:
        rows = {k: npz[k] for k in npz.files}
    visible = int(((gt["frame"] == 0) & (gt["visible"] > 0.5)).sum())
    per_image = {name: int((rows["image"] == name).sum()) for name in ("a.jpg", "b.png")}
    assert per_image["a.jpg"] == 2 * visible and per_image["b.png"] == visible, (per_image, visible)  # two a.jpg
    assert len(rows["image"]) == 3 * visible and rows["box"].shape == (3 * visible, 5)
    # the fitted keypoints lie on the true ones in the unmirrored image
    a = np.flatnonzero(rows["image"] == "a.jpg")  # both copies of the unmirrored image
    truth = gt["keypoints_coco"][gt["frame"] == 0]
    for i in a:
        fit = rows["keypoints2d_fit"][i]
        j = int(np.argmin([np.nanmean(np.linalg.norm(fit - t[:, :2], axis=-1)) for t in truth]))
        seen = truth[j][:, 2] > 0
        height = np.ptp(truth[j][seen, 1])
        assert np.nanmedian(np.linalg.norm(fit - truth[j][:, :2], axis=-1)[seen]) < 0.08 * height


def test_people_as_pseudo_labels_for_training(crowd, predictor, tmp_path):
    """--save-dataset: the people as a SPIN-style dataset (the detected keypoints as labels, the
    crop box as center / scale) and their fits as SPIN's static fits; the training dataset reads
    them back: each sample's crop and keypoints, and the fits row for row."""
    pytest.importorskip("norfair")
    from hmr_fast.data.keypoints import COCO17_NAMES, HMR19_NAMES
    from hmr_fast.data.spin_npz import SpinDataset
    from hmr_fast.infer.people.images import ImagesConfig, PeoplePhotos, run_images

    out, gt, _ = crowd
    photos = PeoplePhotos(refine=5, detector=TruthDetector(gt, seed=4), predictor=predictor)
    summary = run_images(ImagesConfig(inputs=[str(out / "first.png")], out=str(tmp_path / "res"), progress=False,
                                      save_dataset=True), photos)
    with np.load(tmp_path / "res" / "people.npz") as npz:
        rows = {k: npz[k] for k in npz.files}
    fits = np.load(tmp_path / "res" / "pseudo_fits.npy")
    n = len(rows["person"])
    assert summary["pseudo_labels"] == n >= 2 and fits.shape == (n, 82)  # the truth's 0.9 scores are all labels
    np.testing.assert_allclose(fits, np.c_[rows["global_orient"], rows["body_pose"], rows["betas"]])
    dataset = SpinDataset(tmp_path / "res" / "pseudo_labels.npz", "/", img_size=64)
    assert len(dataset) == n
    for i in range(n):
        record = dataset.record(i)
        assert record.image_path == str((out / "first.png").resolve())
        np.testing.assert_allclose(record.center, rows["crop_box"][i, :2])
        assert record.box_size == pytest.approx(rows["crop_box"][i, 2])
        for h, name in enumerate(HMR19_NAMES):  # each COCO keypoint lands on its HMR19 slot, visible
            if name in COCO17_NAMES:
                c = COCO17_NAMES.index(name)
                visible = rows["keypoints2d"][i, c, 2] >= 0.3
                assert record.keypoints[h, 2] == float(visible)
                if visible:
                    np.testing.assert_allclose(record.keypoints[h, :2], rows["keypoints2d"][i, c, :2])
            else:
                assert record.keypoints[h, 2] == 0.0  # neck and head top: no COCO keypoint
    assert dataset[0] is not None  # the crop is cut from the image
