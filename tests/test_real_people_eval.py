"""benchmarks/real_people.py on a tiny synthetic set with known matches; the expected
numbers are computed here by plain arithmetic, not by the evaluator's code."""
import importlib.util
import json
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "real_people", os.path.join(HERE, "..", "benchmarks", "real_people.py"))
rp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rp)


def _person(rng, x, y, w, h, nvis=17):
    kps = np.zeros((17, 3))
    kps[:, 0] = x + rng.uniform(0.1, 0.9, 17) * w
    kps[:, 1] = y + rng.uniform(0.1, 0.9, 17) * h
    kps[:nvis, 2] = 2
    kps[nvis:, :2] = 0
    return kps


def _offsets(rng, n, scale):
    """Per-keypoint displacement lengths clearly inside or outside the thresholds."""
    choices = np.array([0.02, 0.07, 0.2]) * scale  # < 0.05, in (0.05, 0.1], > 0.1
    lengths = choices[rng.integers(0, 3, n)]
    ang = rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.cos(ang), np.sin(ang)], 1) * lengths[:, None], lengths


@pytest.fixture
def synthetic(tmp_path):
    rng = np.random.default_rng(1234)
    # image a (exhaustive): people A1, A2 (counted), A3 (3 visible: ignored)
    # image b (exhaustive, with an ignore region): B1 counted
    # image c (not exhaustive): C1 counted, C2 counted but missed
    gt = {
        "a.jpg": [(10, 10, 100, 200, 17), (300, 20, 80, 160, 12), (500, 50, 60, 120, 3)],
        "b.jpg": [(50, 40, 120, 240, 17)],
        "c.jpg": [(20, 30, 90, 180, 6), (400, 300, 50, 100, 17)],
    }
    images, anns, ignored = [], [], []
    people = {}
    aid = 1
    for iid, name in enumerate(sorted(gt), start=1):
        im = dict(id=iid, file_name=name, width=800, height=600, source="src_" + name[0],
                  exhaustive=name != "c.jpg")
        if name == "b.jpg":
            im["ignore_regions"] = [[[600, 400], [700, 400], [700, 500], [600, 500]]]
        images.append(im)
        for (x, y, w, h, nvis) in gt[name]:
            k = _person(rng, x, y, w, h, nvis)
            a = dict(id=aid, image_id=iid, bbox=[x, y, w, h], keypoints=k.reshape(-1).tolist(),
                     num_keypoints=nvis, category_id=1, iscrowd=0)
            aid += 1
            (anns if nvis >= 5 else ignored).append(a)
            people.setdefault(name, []).append((x, y, w, h, k))
    # results: rows out of order on purpose
    rows = []
    expect_det = {0.1: [0, 0], 0.05: [0, 0]}
    expect_fit = {0.1: [0, 0], 0.05: [0, 0]}

    def add_match(name, idx, box_shift):
        x, y, w, h, k = people[name][idx]
        vis = k[:, 2] > 0
        scale = max(w, h)
        off_d, len_d = _offsets(rng, 17, scale)
        off_f, len_f = _offsets(rng, 17, scale)
        for a in (0.1, 0.05):
            expect_det[a][0] += int(sum(1 for j in range(17) if vis[j] and len_d[j] <= a * scale))
            expect_det[a][1] += int(vis.sum())
            expect_fit[a][0] += int(sum(1 for j in range(17) if vis[j] and len_f[j] <= a * scale))
            expect_fit[a][1] += int(vis.sum())
        kp = np.concatenate([k[:, :2] + off_d, rng.uniform(0, 1, (17, 1))], 1)
        rows.append((name, [x + box_shift, y, x + w + box_shift, y + h, 0.9], kp, k[:, :2] + off_f))

    add_match("a.jpg", 0, 5.0)      # IoU 95/105 > 0.5
    add_match("a.jpg", 1, 0.0)
    add_match("b.jpg", 0, -10.0)
    add_match("c.jpg", 0, 3.0)
    z = np.zeros((17, 3))
    rows.append(("a.jpg", [500, 50, 560, 170, 0.5], z, z[:, :2]))      # on the ignored person: neutral
    rows.append(("a.jpg", [700, 500, 790, 590, 0.4], z, z[:, :2]))     # false
    rows.append(("a.jpg", [10, 10, 30, 40, 0.3], z, z[:, :2]))         # IoU < 0.5 with A1: false
    rows.append(("b.jpg", [620, 420, 680, 480, 0.6], z, z[:, :2]))     # centre in ignore region: neutral
    rows.append(("b.jpg", [300, 300, 350, 400, 0.6], z, z[:, :2]))     # false
    rows.append(("c.jpg", [600, 10, 650, 110, 0.6], z, z[:, :2]))      # false, non-exhaustive image
    rows.append(("zzz.jpg", [0, 0, 10, 10, 0.9], z, z[:, :2]))         # unknown image
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]

    ann_path = tmp_path / "annotations.json"
    ann_path.write_text(json.dumps(dict(images=images, annotations=anns, ignored_annotations=ignored,
                                        categories=[dict(id=1, name="person")])))
    res_path = tmp_path / "people.npz"
    np.savez(res_path, image=np.array([r[0] for r in rows]), person=np.arange(len(rows)),
             box=np.array([r[1] for r in rows], float), keypoints2d=np.array([r[2] for r in rows]),
             keypoints2d_fit=np.array([r[3] for r in rows]))
    # the same results as `hmr-fast video` would write: frame = index in sorted names
    names = sorted(gt)
    frame = np.array([names.index(r[0]) if r[0] in names else 99 for r in rows])
    vid_path = tmp_path / "video.npz"
    np.savez(vid_path, frame=frame, track_id=np.arange(len(rows)),
             box=np.array([r[1][:4] for r in rows], float), score=np.array([r[1][4] for r in rows]),
             keypoints2d=np.array([r[2] for r in rows]), keypoints2d_fit=np.array([r[3] for r in rows]))
    return ann_path, res_path, vid_path, expect_det, expect_fit


def _check(res, expect_det, expect_fit):
    o = res["overall"]
    assert o["people"] == 5                      # A1, A2, B1, C1, C2
    assert o["matched"] == 4
    assert o["recall"] == pytest.approx(4 / 5)
    # exhaustive images a, b: 3 matched; false: a(2) + b(1) = 3
    assert o["true_detections"] == 3 and o["false_detections"] == 3
    assert o["precision"] == pytest.approx(3 / 6)
    # all images: 4 matched, 4 false
    assert o["precision_all_images"] == pytest.approx(4 / 8)
    for a in (0.1, 0.05):
        assert o[f"pck@{a:g}_keypoints2d"] == pytest.approx(expect_det[a][0] / expect_det[a][1])
        assert o[f"pck@{a:g}_keypoints2d_fit"] == pytest.approx(expect_fit[a][0] / expect_fit[a][1])
    assert o["keypoints_scored_keypoints2d"] == 17 + 12 + 17 + 6
    assert res["by_source"]["src_c"]["recall"] == pytest.approx(1 / 2)


def test_images_mode(synthetic, tmp_path):
    ann, res_path, _, ed, ef = synthetic
    out = tmp_path / "out.json"
    res = rp.main(["--annotations", str(ann), "--results", str(res_path), "--json", str(out)])
    _check(res, ed, ef)
    assert res["rows_on_unknown_images"] == 1
    assert json.loads(out.read_text())["overall"]["matched"] == 4


def test_video_mode(synthetic):
    ann, _, vid, ed, ef = synthetic
    res = rp.main(["--annotations", str(ann), "--video-npz", str(vid)])
    _check(res, ed, ef)
    assert res["rows_on_unknown_images"] == 1


def test_min_score_drops_detections(synthetic):
    ann, res_path, _, _, _ = synthetic
    res = rp.main(["--annotations", str(ann), "--results", str(res_path), "--min-score", "0.95"])
    assert res["overall"]["matched"] == 0 and res["overall"]["recall"] == 0.0


def test_matching_is_one_to_one():
    gt = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], float)
    det = np.array([[0, 0, 10, 10]], float)
    pairs, iou = rp.match(gt, det)
    assert len(pairs) == 1
    # two detections, two people: both matched even where greedy-by-IoU would pair badly
    gt = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], float)
    det = np.array([[2, 0, 12, 10], [6, 0, 16, 10]], float)
    pairs, iou = rp.match(gt, det)
    assert sorted(pairs) == [(0, 0), (1, 1)]
