"""Several people in a video: the synthetic crowd clip's ground truth, the people tracker
(norfair) on ground-truth keypoints, and the detection / identity measures."""
import sys
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from video_frames import read_frames

from hmr_fast.body.joint_sets import HMR19_NAMES
from hmr_fast.data.keypoints import COCO17_NAMES
from hmr_fast.infer.people.metrics import box_iou, match_people, tracking_report

W, H, T = 320, 180, 45  # 45 frames: walkers cross the frame at about twice a real walking pace


@dataclass
class Person:
    """A detection shaped like hmr_fast.infer.people.PersonDetection (plus the truth)."""
    box: np.ndarray
    score: float
    keypoints: np.ndarray
    truth: int = -1


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    from hmr_fast.infer.clips import render_crowd_clip
    out = tmp_path_factory.mktemp("crowd")
    render_crowd_clip(out, num_people=4, num_frames=T, width=W, height=H, seed=0)
    gt = dict(np.load(out / "crowd_gt.npz"))
    frames = read_frames(out / "crowd.mp4")
    return gt, np.stack(frames)


# ---------------------------------------------------------------------------------------
# The crowd clip
# ---------------------------------------------------------------------------------------
def test_crowd_clip_layout(crowd):
    gt, frames = crowd
    assert frames.shape == (T, H, W, 3)
    r = len(gt["frame"])
    assert gt["person"].shape == (r,) and gt["box"].shape == (r, 4) and gt["visible"].shape == (r,)
    assert gt["keypoints_coco"].shape == (r, 17, 3) and gt["joints3d"].shape == (r, 14, 3)
    assert (float(gt["fps"]), int(gt["width"]), int(gt["height"])) == (30.0, W, H) and float(gt["focal"]) > 0
    assert set(gt["person"].tolist()) == {0, 1, 2, 3}
    # One row per (frame, person); a late entry (person 2) and one who leaves and comes back (3).
    assert len({(f, p) for f, p in zip(gt["frame"], gt["person"])}) == r
    assert gt["frame"][gt["person"] == 2].min() > 3
    seen3 = np.unique(gt["frame"][gt["person"] == 3])
    assert seen3[0] == 0 and seen3[-1] == T - 1 and len(seen3) < T - 3  # gone for a while in between
    # Mannequins 40-60% of the frame height (where the whole body is in the frame).
    whole = (gt["box"][:, 0] > 1) & (gt["box"][:, 2] < W - 1)
    heights = (gt["box"][whole, 3] - gt["box"][whole, 1]) / H
    assert heights.min() > 0.38 and heights.max() < 0.62


def test_crowd_keypoints_agree_with_the_3d_joints_and_boxes(crowd):
    gt, _ = crowd
    # The camera-frame LSP joints project onto the COCO keypoints they share.
    shared = [n for n in HMR19_NAMES[:14] if n in COCO17_NAMES]
    assert len(shared) == 12
    lsp, coco = [HMR19_NAMES.index(n) for n in shared], [COCO17_NAMES.index(n) for n in shared]
    j = gt["joints3d"][:, lsp]
    assert (j[..., 2] > 1.0).all()
    uv = float(gt["focal"]) * j[..., :2] / j[..., 2:] + np.array([(W - 1) / 2, (H - 1) / 2])
    np.testing.assert_allclose(uv, gt["keypoints_coco"][:, coco, :2], atol=1e-6)
    # Visible keypoints are in the frame and in their person's box; off-frame ones are not visible.
    kp, box = gt["keypoints_coco"], gt["box"]
    vis = kp[..., 2] > 0
    inside_frame = (kp[..., 0] > -0.5) & (kp[..., 0] < W - 0.5) & (kp[..., 1] > -0.5) & (kp[..., 1] < H - 0.5)
    assert vis.any() and not (vis & ~inside_frame).any() and (~inside_frame).any()
    in_box = ((kp[..., 0] >= box[:, None, 0] - 1) & (kp[..., 0] <= box[:, None, 2] + 1)
              & (kp[..., 1] >= box[:, None, 1] - 1) & (kp[..., 1] <= box[:, None, 3] + 1))
    assert in_box[vis].all()


def _shade_distance(pixels, palette):
    """Distance (N,) of BGR pixels (N, 3) to the nearest shaded palette colour s * c, s in [0.3, 1.2]."""
    c = palette[None].astype(float)  # (1, K, 3)
    p = pixels[:, None].astype(float)  # (N, 1, 3)
    s = np.clip((p * c).sum(-1) / np.maximum((c * c).sum(-1), 1), 0.3, 1.2)
    return np.linalg.norm(p - s[..., None] * c, axis=-1).min(1)


def test_crowd_keypoints_sit_on_their_persons_pixels(crowd):
    """Under a visible keypoint the video shows that person's colours, not the background;
    under a keypoint hidden by a nearer person the video shows someone, not the background."""
    gt, frames = crowd
    background = np.median(frames, axis=0)  # people keep moving: each pixel is mostly background
    kp = gt["keypoints_coco"]
    own, fore, hidden_own, hidden_fore = [], [], [], []
    for r in range(len(kp)):
        f, p = int(gt["frame"][r]), int(gt["person"][r])
        xy = np.round(kp[r, :, :2]).astype(int)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
        vis = kp[r, :, 2] > 0
        pix = frames[f, xy[inside, 1], xy[inside, 0]].astype(float)
        bg = background[xy[inside, 1], xy[inside, 0]]
        differs = np.abs(pix - bg).max(1) > 25
        close = _shade_distance(pix, gt["palette"][p]) < 40
        own.extend(close[vis[inside]])
        fore.extend(differs[vis[inside]])
        hidden_own.extend(close[~vis[inside]])
        hidden_fore.extend(differs[~vis[inside]])
    assert len(own) > 500
    assert np.mean(own) > 0.9, np.mean(own)
    assert np.mean(fore) > 0.9, np.mean(fore)
    # Paths cross: someone is hidden behind a nearer person somewhere; the pixels there show a
    # body, and less often this person's colours (people share a skin tone or hair colour).
    assert len(hidden_fore) >= 5 and np.mean(hidden_fore) > 0.8, (len(hidden_fore), np.mean(hidden_fore))
    assert np.mean(hidden_own) < np.mean(own) - 0.2, (np.mean(hidden_own), np.mean(own))


def test_crowd_paths_cross(crowd):
    gt, _ = crowd
    overlapping = set()
    for f in range(T):
        rows = np.flatnonzero(gt["frame"] == f)
        iou = box_iou(gt["box"][rows], gt["box"][rows])
        np.fill_diagonal(iou, 0)
        for a, b in zip(*np.nonzero(iou > 0.2)):
            overlapping.add(tuple(sorted((int(gt["person"][rows[a]]), int(gt["person"][rows[b]])))))
    assert len(overlapping) >= 2, overlapping  # at least two different pairs pass each other
    assert (gt["visible"] < 0.6).any() and (gt["visible"] > 0.99).any()


# ---------------------------------------------------------------------------------------
# The tracker on ground-truth keypoints
# ---------------------------------------------------------------------------------------
def _track(tracker, per_frame, images=None):
    """Feed [(frame, [Person])] (and the images, by frame) -> prediction rows {frame,
    track_id, box, truth}."""
    rows = []
    for f, people in per_frame:
        for track_id, det in tracker.update(people, f, None if images is None else images[f]):
            rows.append((f, track_id, det.box, det.truth))
    return {"frame": np.array([r[0] for r in rows]), "track_id": np.array([r[1] for r in rows]),
            "box": np.array([r[2] for r in rows]).reshape(-1, 4), "truth": np.array([r[3] for r in rows])}


def _truth_to_tracks(pred):
    """{true person: set of track ids} and {track id: set of true persons}."""
    by_truth, by_track = {}, {}
    for t, k in zip(pred["truth"].tolist(), pred["track_id"].tolist()):
        by_truth.setdefault(t, set()).add(k)
        by_track.setdefault(k, set()).add(t)
    return by_truth, by_track


def _detections_from_truth(gt, seed, drop_frames=0.1, drop_people=0.05, noise=2.0):
    """Ground-truth keypoints as a detector's output: pixel noise, confidences, missed
    frames and people, people too hidden (< 4 visible keypoints) left out; in shuffled order.
    The random draws do not depend on which rows are visible."""
    rng = np.random.default_rng(seed)
    r = len(gt["frame"])
    missed_frame = rng.random(T) < drop_frames
    missed_frame[0] = False
    missed, jitter = rng.random(r) < drop_people, rng.normal(0, noise, (r, 17, 2))
    confidence, box_jitter = rng.uniform(0.5, 1.0, (r, 17)), rng.normal(0, 1.0, (r, 4))
    per_frame = []
    for f in np.flatnonzero(~missed_frame):
        people = []
        for i in np.flatnonzero(gt["frame"] == f):
            kp = gt["keypoints_coco"][i].copy()
            if kp[:, 2].sum() < 4 or missed[i]:
                continue
            kp[:, :2] += jitter[i]
            kp[:, 2] *= confidence[i]
            people.append(Person(gt["box"][i] + box_jitter[i], 0.9, kp, int(gt["person"][i])))
        np.random.default_rng([seed, f]).shuffle(people)
        per_frame.append((int(f), people))
    return per_frame


@pytest.mark.parametrize("seed", [0, 1])
def test_report_new_shows_people_from_their_first_frame(crowd, seed):
    """report_new: everyone fed in the first frame is reported in it, and each keeps the id
    they got there once their track is confirmed. A person who comes back after leaving the
    frame (person 3) shows under a new id for one frame, until re-identification gives them
    their old one (as without report_new, where they are not shown in that frame at all)."""
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.tracking import PeopleTracker
    gt, frames = crowd
    per_frame = _detections_from_truth(gt, seed)
    pred = _track(PeopleTracker((H, W), initialization_delay=1, report_new=True), per_frame, frames)
    first_frame, first_people = per_frame[0]
    assert first_frame == 0 and len(first_people) >= 2
    shown_first = pred["frame"] == 0
    assert sorted(pred["truth"][shown_first].tolist()) == sorted(p.truth for p in first_people)
    by_truth, by_track = _truth_to_tracks(pred)
    assert all(len(v) == 1 for v in by_track.values()), by_track  # no track jumps to someone else
    for t in pred["truth"][shown_first].tolist():  # the first frame's ids are kept
        first_id = int(pred["track_id"][shown_first & (pred["truth"] == t)][0])
        for other in by_truth[t] - {first_id}:  # a returning person's one frame before re-identification
            assert (pred["track_id"] == other).sum() == 1, (t, other)
        assert (pred["track_id"] == first_id).sum() >= 0.8 * (pred["truth"] == t).sum()
    # every detection of a person already being tracked is reported (none wait for confirmation)
    fed = sum(len(people) for _, people in per_frame)
    delayed = PeopleTracker((H, W), initialization_delay=1)
    assert len(pred["frame"]) > len(_track(delayed, per_frame, frames)["frame"])
    assert len(pred["frame"]) >= 0.95 * fed, (len(pred["frame"]), fed)


@pytest.mark.parametrize("seed, with_frames", [(0, False), (1, False), (2, False), (0, True), (1, True)])
def test_tracker_keeps_identities_over_the_crowd_clip(crowd, seed, with_frames):
    """Ground-truth keypoints of the crowd clip with noise, dropped frames and dropped people:
    every person keeps one id (person 3 walks out of the frame for ~1/3 of the clip and comes
    back; people pass in front of each other), and no track jumps to another person; by
    keypoints alone, and with the colours too (with_frames)."""
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.tracking import PeopleTracker
    gt, frames = crowd
    per_frame = _detections_from_truth(gt, seed)
    pred = _track(PeopleTracker((H, W)), per_frame, frames if with_frames else None)
    by_truth, by_track = _truth_to_tracks(pred)
    assert all(len(v) == 1 for v in by_truth.values()), by_truth  # nobody changes id
    assert all(len(v) == 1 for v in by_track.values()), by_track  # no track jumps to someone else
    assert sorted(by_track) == list(range(4))  # ids from 0, one per person
    report = tracking_report(gt, pred)
    assert report["id_switches"] == 0 and report["precision"] == 1.0
    # Detections are reported except while a new track is being confirmed (a few frames each).
    fed = sum(len(people) for _, people in per_frame)
    assert len(pred["frame"]) >= 0.8 * fed, (len(pred["frame"]), fed)
    # Person 3 gets the old id back on its second detection after coming back into the frame.
    back = [f for f, people in per_frame if f > T // 2 and any(p.truth == 3 for p in people)]
    shown = set(pred["frame"][pred["truth"] == 3].tolist())
    assert len(back) > 5 and set(back[1:]) <= shown, (back, sorted(shown))


def _walker(x0, speed, height, frames, rng, noise=1.5):
    """COCO keypoints (T, 17, 3) of a stick figure `height` px tall walking at `speed` px/frame."""
    # x, y of the 17 keypoints for a body 1 unit tall, feet at y = 0 (y down), facing the camera.
    shape = np.array([[0, -0.93], [-0.02, -0.95], [0.02, -0.95], [-0.05, -0.94], [0.05, -0.94],
                      [-0.11, -0.80], [0.11, -0.80], [-0.14, -0.62], [0.14, -0.62], [-0.15, -0.46],
                      [0.15, -0.46], [-0.07, -0.50], [0.07, -0.50], [-0.08, -0.27], [0.08, -0.27],
                      [-0.08, -0.03], [0.08, -0.03]])
    t = np.arange(frames)[:, None]
    swing = 0.06 * np.sin(2 * np.pi * t / 30.0)  # legs and arms swing a little
    xy = np.repeat(shape[None], frames, 0) * height
    xy[:, 13:, 0] += (swing * height) * np.array([1, -1, 1, -1])
    xy[:, 7:11, 0] -= (swing * height) * np.array([1, -1, 1, -1])
    xy[..., 0] += x0 + speed * t
    xy[..., 1] += 300  # feet on a floor (the frame is 640x360 here)
    xy += rng.normal(0, noise, xy.shape)
    return np.concatenate([xy, rng.uniform(0.6, 1.0, (frames, 17, 1))], axis=2)


def _as_people(kp_by_person, hidden, rng, drop_frames=0.0):
    per_frame = []
    for f in range(kp_by_person[0].shape[0]):
        if f > 0 and rng.random() < drop_frames:
            continue
        people = []
        for k, kp in enumerate(kp_by_person):
            if (k, f) in hidden:
                continue
            seen = kp[f, kp[f, :, 2] > 0, :2]  # the box of what the detector sees
            lo, hi = seen.min(0), seen.max(0)
            pad = 0.1 * (hi - lo)
            people.append(Person(np.r_[lo - pad, hi + pad], 0.9, kp[f], k))
        rng.shuffle(people)
        per_frame.append((f, people))
    return per_frame


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tracker_two_people_crossing(seed):
    """A near and a far walker pass each other: the far one's keypoints behind the near one's
    box are not seen (it is not detected at all when fewer than 4 are left), so for a while
    there are two overlapping detections, one of them partial. Noise and dropped frames;
    ids never swap."""
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.tracking import PeopleTracker
    rng = np.random.default_rng(seed)
    n = 120
    near = _walker(100, 4.0, 220, n, rng)
    far = _walker(540, -3.5, 170, n, rng)
    lo, hi = near[..., 0].min(1) - 10, near[..., 0].max(1) + 10  # the near one's extent, x
    behind = (far[..., 0] > lo[:, None]) & (far[..., 0] < hi[:, None])
    far[..., 2] *= ~behind
    # A detector still places the hidden keypoints somewhere, typically on the occluder.
    garbage = near[rng.integers(0, n, n)][:, rng.permutation(17), :2]
    far[..., :2] = np.where(behind[..., None], garbage, far[..., :2])
    hidden = {(1, f) for f in range(n) if far[f, :, 2].astype(bool).sum() < 4}
    partly = [f for f in range(n) if behind[f].any() and (1, f) not in hidden]
    assert 2 <= len(hidden) < 20 and len(partly) >= 10, (len(hidden), len(partly))
    pred = _track(PeopleTracker((360, 640)), _as_people([near, far], hidden, rng, drop_frames=0.1))
    by_truth, by_track = _truth_to_tracks(pred)
    assert {k: len(v) for k, v in by_truth.items()} == {0: 1, 1: 1} and by_truth[0] != by_truth[1], by_truth
    assert all(len(v) == 1 for v in by_track.values()), by_track
    # The far walker is followed while partly hidden and after it comes out from behind.
    assert np.isin(pred["frame"][pred["truth"] == 1], partly).sum() >= 0.6 * len(partly)
    assert (pred["truth"][pred["frame"] > max(partly)] == 1).sum() > 20


@pytest.mark.parametrize("stops", [False, True])
def test_tracker_gives_a_person_hidden_20_frames_their_id_back(stops):
    """Hidden for 20 frames (longer than a track lingers unmatched): walking on behind
    something, or standing still there; re-identification gives the old id back; without
    it the person comes back as someone new."""
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.tracking import PeopleTracker
    n, gone = 90, range(30, 50)
    results = {}
    for reid in (True, False):
        rng = np.random.default_rng(3)
        a = _walker(80, 3.0, 200, n, rng)
        b = _walker(560, -2.0, 180, n, rng)
        if stops:  # b stands still while hidden and after, where it was last seen
            b[gone.start:, :, 0] -= (np.arange(n - gone.start) * -2.0)[:, None]
        hidden = {(1, f) for f in gone}
        pred = _track(PeopleTracker((360, 640), hit_counter_max=10, reid=reid),
                      _as_people([a, b], hidden, rng))
        results[reid] = _truth_to_tracks(pred)
        assert not (pred["truth"][np.isin(pred["frame"], list(gone))] == 1).any()
    by_truth, by_track = results[True]
    assert len(by_truth[0]) == 1 and len(by_truth[1]) == 1 and by_truth[0] != by_truth[1], by_truth
    assert sorted(by_track) == [0, 1]
    by_truth, _ = results[False]
    assert len(by_truth[1]) == 2, by_truth  # the check can fail: without ReID b's id changes


# ---------------------------------------------------------------------------------------
# Appearance: people told apart by their clothes' colours
# ---------------------------------------------------------------------------------------
_SKIN = (90, 140, 200)
_CLOTHES = (((40, 40, 200), (150, 70, 30)),  # BGR shirt and trousers: red and blue
            ((60, 170, 60), (40, 190, 210)))  # green and yellow


def _background(height=360, width=640):
    y, x = np.mgrid[0:height, 0:width]
    bg = np.stack([120 + 40 * np.sin(x / 90.0), 130 + 30 * np.cos(y / 70.0), 110 + 0 * x], -1)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _draw(image, kp, shirt, trousers, height, shade=1.0):
    """A figure `height` px tall from its COCO keypoints (17, 2+): shirt (torso and upper
    arms), trousers, skin (forearms, head); colours times `shade`."""
    def pt(k):
        return tuple(np.rint(kp[k, :2]).astype(int).tolist())

    def col(c):
        return tuple(float(min(255.0, v * shade)) for v in c)

    for a, b in ((11, 13), (13, 15), (12, 14), (14, 16)):
        cv2.line(image, pt(a), pt(b), col(trousers), max(2, int(0.07 * height)))
    quad = kp[[5, 6, 12, 11], :2] + np.array([[-0.03, 0], [0.03, 0], [0.03, 0], [-0.03, 0]]) * height
    cv2.fillConvexPoly(image, np.rint(quad).astype(np.int32), col(shirt))
    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10)):
        cv2.line(image, pt(a), pt(b), col(shirt if b in (7, 8) else _SKIN), max(2, int(0.045 * height)))
    cv2.circle(image, pt(0), int(0.06 * height), col(_SKIN), -1)


def _box_of(kp):
    lo, hi = kp[:, :2].min(0), kp[:, :2].max(0)
    return np.r_[lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)]


def _meet_and_turn(seed, n=70, turn=35, hidden=range(32, 40)):
    """A (red and blue, 200 px) walks right, B (green and yellow, 190 px, a step further
    back) walks left; they meet at frame `turn`, where A turns round and walks back left,
    faster than B. B is behind A and not detected in `hidden`. -> images, [(frame, [Person])]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    xa = np.where(t <= turn, 100 + 4.0 * t, 100 + 4.0 * turn - 6.0 * (t - turn))
    xb = 100 + 4.0 * turn + 3.0 * (turn - t)
    a = _walker(0, 0, 200, n, rng, noise=0.0)
    b = _walker(0, 0, 190, n, rng, noise=0.0)
    a[..., 0] += xa[:, None]
    b[..., 0] += xb[:, None]
    b[..., 1] -= 8
    background = _background()
    images, per_frame = [], []
    for f in range(n):
        image = background.copy()
        shade = 0.9 + 0.15 * np.sin(f / 9.0)  # the light changes a little
        _draw(image, b[f], *_CLOTHES[1], 190, shade)  # far to near
        _draw(image, a[f], *_CLOTHES[0], 200, shade)
        images.append(image)
        people = []
        for k, kp in enumerate((a, b)):
            if k == 1 and f in hidden:
                continue
            noisy = kp[f].copy()
            noisy[:, :2] += rng.normal(0, 1.5, (17, 2))
            people.append(Person(_box_of(noisy), 0.9, noisy, k))
        rng.shuffle(people)
        per_frame.append((f, people))
    return images, per_frame


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tracker_tells_people_apart_by_their_colours(seed):
    """Two people meet; the one behind is not detected for 8 frames, and the one in front
    turns round there and walks on the way the hidden one was going: by keypoints and motion
    alone the front person takes the hidden one's track (the check that it does can fail);
    with the frames, the colours keep both ids."""
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.tracking import PeopleTracker
    images, per_frame = _meet_and_turn(seed)
    by_truth, by_track = _truth_to_tracks(_track(PeopleTracker((360, 640)), per_frame))
    assert len(by_truth[0]) > 1 or len(by_track[by_truth[1].pop()]) > 1, (by_truth, by_track)  # a swap
    pred = _track(PeopleTracker((360, 640)), per_frame, images)
    by_truth, by_track = _truth_to_tracks(pred)
    assert {k: len(v) for k, v in by_truth.items()} == {0: 1, 1: 1} and by_truth[0] != by_truth[1], by_truth
    assert all(len(v) == 1 for v in by_track.values()), by_track
    # Both are followed: A all along (after the first frames), B before and after it is hidden.
    assert (pred["truth"] == 0).sum() >= 60 and (pred["truth"][pred["frame"] >= 40] == 1).sum() >= 25


def _stand_in(seed, n=75, gone=range(30, 50), arrives=41):
    """A (red and blue) walks right and is gone (behind something) for 20 frames; in the
    meantime B (green and yellow) steps in just where A's walk would have taken it and walks
    back left. -> images, [(frame, [Person])]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    a = _walker(80, 3.0, 200, n, rng, noise=0.0)
    b = _walker(80 + 3.0 * arrives, 0, 195, n, rng, noise=0.0)
    b[..., 0] -= (3.0 * np.clip(t - arrives, 0, None))[:, None]
    background = _background()
    images, per_frame = [], []
    for f in range(n):
        image = background.copy()
        people = []
        for k, kp, height in ((0, a, 200), (1, b, 195)):
            if (k == 0 and f in gone) or (k == 1 and f < arrives):
                continue
            _draw(image, kp[f], *_CLOTHES[k], height)
            noisy = kp[f].copy()
            noisy[:, :2] += rng.normal(0, 1.5, (17, 2))
            people.append(Person(_box_of(noisy), 0.9, noisy, k))
        images.append(image)
        rng.shuffle(people)
        per_frame.append((f, people))
    return images, per_frame


@pytest.mark.parametrize("seed", [0, 1])
def test_reidentification_looks_at_colours(seed):
    """Someone else turns up where a lost person would be: by position alone they take the
    lost person's id (the check that they do can fail), who then comes back as someone new;
    with the frames, the newcomer gets a new id and the lost person their own back."""
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.tracking import PeopleTracker
    images, per_frame = _stand_in(seed)
    by_truth, _ = _truth_to_tracks(_track(PeopleTracker((360, 640)), per_frame))
    assert by_truth[1] <= by_truth[0] and len(by_truth[0]) == 2, by_truth
    by_truth, by_track = _truth_to_tracks(_track(PeopleTracker((360, 640)), per_frame, images))
    assert by_truth == {0: {0}, 1: {1}} and by_track == {0: {0}, 1: {1}}, by_truth


def test_appearance_embedding_ignores_position_and_most_of_the_light():
    from hmr_fast.infer.people.tracking import EMBEDDING_BINS, appearance_distance, appearance_embedding
    rng = np.random.default_rng(0)
    kp = _walker(0, 0, 180, 1, rng, noise=0.0)[0]

    def embed(x, y, clothes, shade=1.0, background=None):
        image = np.full((360, 640, 3), 128, np.uint8) if background is None else background.copy()
        moved = kp + np.array([x, y - 20, 0])
        _draw(image, moved, *clothes, 180, shade)
        return appearance_embedding(image, _box_of(moved), moved)

    e = embed(150, 0, _CLOTHES[0])
    assert e.shape == (2, EMBEDDING_BINS)
    np.testing.assert_allclose(e.sum(1), 1.0)
    # Where the person is does not matter (on a plain background, not at all).
    np.testing.assert_allclose(embed(437, -31, _CLOTHES[0]), e, atol=1e-12)
    assert appearance_distance(e, e) == pytest.approx(0.0, abs=1e-6)
    textured = [embed(x, 0, _CLOTHES[0], background=_background()) for x in (120, 300, 480)]
    assert max(appearance_distance(e, other) for other in textured) < 0.15
    # The light: the person 40% darker or 20% brighter, or the whole frame 35% darker.
    assert appearance_distance(e, embed(150, 0, _CLOTHES[0], shade=0.6)) < 0.15
    assert appearance_distance(e, embed(150, 0, _CLOTHES[0], shade=1.2)) < 0.15
    image = np.full((360, 640, 3), 128, np.uint8)
    moved = kp + np.array([150, -20, 0])
    _draw(image, moved, *_CLOTHES[0], 180)
    darker = appearance_embedding((image * 0.65).astype(np.uint8), _box_of(moved), moved)
    assert appearance_distance(e, darker) < 0.15
    # ... while other clothes are far.
    assert appearance_distance(e, embed(150, 0, _CLOTHES[1])) > 0.8
    assert appearance_distance(e, embed(150, 0, (_CLOTHES[0][0], _CLOTHES[1][1]))) > 0.3  # trousers only
    # Without confident keypoints on the body there is nothing to measure.
    blind = kp.copy()
    blind[5:, 2] = 0
    assert appearance_embedding(image, _box_of(moved), blind) is None


def test_tracker_input_checks():
    pytest.importorskip("norfair")
    from hmr_fast.infer.people.tracking import PeopleTracker
    tracker = PeopleTracker((360, 640))
    kp = np.zeros((17, 3))
    assert tracker.update([Person(np.array([0, 0, 10, 10]), 0.9, kp)], 0) == []  # no confident keypoints
    with pytest.raises(ValueError, match="increasing"):
        tracker.update([], 0)
    with pytest.raises(ValueError, match=r"\(17, 3\)"):
        tracker.update([Person(np.zeros(4), 0.9, np.zeros((19, 3)))], 1)
    with pytest.raises(ValueError, match="BGR uint8"):
        tracker.update([], 2, np.zeros((360, 640), np.uint8))
    with pytest.raises(ValueError, match="BGR uint8"):
        tracker.update([], 3, np.zeros((360, 640, 3), np.float32))
    with pytest.raises(ValueError, match="initialization_delay"):
        PeopleTracker((360, 640), hit_counter_max=5, initialization_delay=5)


def test_tracker_without_norfair_says_how_to_install(monkeypatch):
    from hmr_fast.infer.people.tracking import PeopleTracker
    monkeypatch.setitem(sys.modules, "norfair", None)  # `import norfair` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "hmr_fast\[people\]"'):
        PeopleTracker((360, 640))


# ---------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------
def test_match_people_hungarian_and_threshold():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110]], float)
    pred = np.array([[21, 0, 31, 10], [1, 0, 11, 10], [0, 0, 10, 10], [100, 106, 110, 116]], float)
    assert box_iou(gt[:1], gt[:1])[0, 0] == pytest.approx(1.0)
    assert box_iou(gt[:1], pred[1:2])[0, 0] == pytest.approx(90 / 110)
    # gt 0 takes the exact box (2), not the shifted one (1); gt 2 overlaps its box by 40/160 only.
    assert sorted(match_people(gt, pred)) == [(0, 2), (1, 0)]
    assert sorted(match_people(gt, pred, iou=0.2)) == [(0, 2), (1, 0), (2, 3)]
    assert match_people(np.zeros((0, 4)), pred) == [] and match_people(gt, np.zeros((0, 4))) == []
    # Hungarian, not greedy: greedy would pair gt 0 with pred 0 (0.82) and leave gt 1 out.
    gt2 = np.array([[0, 0, 10, 10], [3, 0, 13, 10]], float)
    pred2 = np.array([[1, 0, 11, 10], [-2, 0, 8, 10]], float)
    assert sorted(match_people(gt2, pred2)) == [(0, 1), (1, 0)]


def _box(x):
    return [x, 0, x + 10, 20]


def test_tracking_report_counts_a_known_swap():
    # Two people, 4 frames; the tracks swap at frame 2 and stay swapped: 2 people change id
    # once each = 2 switches; a single swap of one person's id at frame 3 -> 1 switch.
    gt = {"frame": np.array([0, 0, 1, 1, 2, 2, 3, 3]), "person": np.array([0, 1] * 4),
          "box": np.array([_box(0), _box(50)] * 4, float)}
    swapped = [(f, (7 if f < 2 else 8) if k == 0 else (8 if f < 2 else 7), _box(50 * k))
               for f in range(4) for k in range(2)]
    report = tracking_report(gt, swapped)
    assert report["id_switches"] == 2 and report["recall"] == 1.0 and report["precision"] == 1.0
    one = [(f, 5 if (k == 1 or f < 3) else 9, _box(50 * k)) for f in range(4) for k in range(2)]
    report = tracking_report(gt, one)
    assert report["id_switches"] == 1
    assert report["per_person"][0]["track_ids"] == [5, 5, 5, 9]
    assert report["mota"] == pytest.approx(1 - 1 / 8)
    # A person who is lost and comes back under the same id is not a switch; under a new id it is.
    gaps = [(f, 3, _box(0)) for f in (0, 3)]
    assert tracking_report(gt, gaps)["id_switches"] == 0
    assert tracking_report(gt, [(0, 3, _box(0)), (3, 4, _box(0))])["id_switches"] == 1


def test_tracking_report_recall_precision_by_hand():
    # frame 0: A and B in the truth; predictions find A, and a ghost far off.
    # frame 1: A, B and C (C 10% visible: don't care); predictions find A, B (shifted by 1 px), and C.
    # frame 2: nobody in the truth; one prediction (a false positive).
    gt = {"frame": np.array([0, 0, 1, 1, 1]), "person": np.array([0, 1, 0, 1, 2]),
          "box": np.array([_box(0), _box(50), _box(0), _box(50), _box(100)], float),
          "visible": np.array([1.0, 0.9, 1.0, 0.8, 0.1])}
    pred = {"frame": np.array([0, 0, 1, 1, 1, 2]), "track_id": np.array([0, 1, 0, 2, 3, 4]),
            "box": np.array([_box(1), _box(300), _box(0), _box(51), _box(100), _box(0)], float)}
    report = tracking_report(gt, pred, min_visible=0.25)
    assert report["gt_rows"] == 4 and report["predictions"] == 6
    assert report["matched"] == 3 and report["recall"] == pytest.approx(3 / 4)
    assert report["false_positives"] == 2 and report["precision"] == pytest.approx(3 / 5)
    assert report["false_negatives"] == 1 and report["id_switches"] == 0
    assert report["matches"].tolist() == [[0, 0], [2, 2], [3, 3]]
    assert report["per_person"][0] == {"gt_rows": [0, 2], "pred_rows": [0, 2], "track_ids": [0, 0]}
    assert report["per_person"][1] == {"gt_rows": [3], "pred_rows": [3], "track_ids": [2]}
    assert report["per_person"][2]["gt_rows"] == []
    # Counting every row (min_visible 0): C is found too.
    report = tracking_report(gt, pred)
    assert report["gt_rows"] == 5 and report["matched"] == 4 and report["false_positives"] == 2
    # Rows as (frame, track_id, box) tuples give the same answer.
    rows = list(zip(pred["frame"], pred["track_id"], pred["box"]))
    assert tracking_report(gt, rows, min_visible=0.25)["recall"] == pytest.approx(3 / 4)
