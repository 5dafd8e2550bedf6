"""How well people were found and followed: detection recall and precision, identity switches.

`match_people` pairs ground-truth and predicted boxes of one frame (Hungarian on IoU, pairs
under the threshold dropped). `tracking_report` runs it over a clip, CLEAR-MOT style: a
ground-truth person keeps the track it was matched to while their boxes still overlap
enough, and an identity switch is a ground-truth person matched to a different track id
than at its previous match (after a gap too). Ground-truth rows whose `visible` fraction
is under `min_visible` are "don't care": they need not be found, and a prediction on them
is not a false positive. Rows are those of `clips.render_crowd_clip`'s crowd_gt.npz. `people_errors`
scores the matched people's fitted keypoints and 3D joints against the truth.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from hmr_fast import metrics
from hmr_fast.camera import box_iou
from hmr_fast.body import SMPL
from hmr_fast.data.keypoints import NUM_LSP


def _assign(iou: np.ndarray, threshold: float, bonus=None) -> list:
    """Hungarian on IoU (plus a bonus per pair to prefer), pairs under the threshold dropped."""
    if iou.size == 0:
        return []
    gain = iou if bonus is None else iou + bonus
    rows, cols = linear_sum_assignment(-np.where(iou >= threshold, gain, 0.0))
    return [(int(g), int(p)) for g, p in zip(rows, cols) if iou[g, p] >= threshold]


def match_people(gt_boxes, pred_boxes, iou: float = 0.5) -> list:
    """[(g, p)]: ground-truth box g (of (G, 4)) matched with predicted box p (of (P, 4)),
    one to one, maximising the summed IoU; pairs with IoU under `iou` are dropped."""
    return _assign(box_iou(gt_boxes, pred_boxes), iou)


def _prediction_arrays(predictions):
    """(frame (N,), track_id (N,), box (N, 4)) from a mapping of arrays or (frame, id, box) rows."""
    if isinstance(predictions, Mapping):
        frame, track, box = predictions["frame"], predictions["track_id"], predictions["box"]
    else:
        predictions = list(predictions)
        frame = [p[0] for p in predictions]
        track = [p[1] for p in predictions]
        box = [p[2] for p in predictions]
    frame, track = np.asarray(frame, dtype=np.int64).reshape(-1), np.asarray(track, dtype=np.int64).reshape(-1)
    box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
    if not len(frame) == len(track) == len(box):
        raise ValueError(f"predictions: {len(frame)} frames, {len(track)} track ids, {len(box)} boxes")
    return frame, track, box


def tracking_report(gt_rows, predictions, iou: float = 0.5, min_visible: float = 0.0) -> dict:
    """Detection and identity measures of predicted tracks against ground truth.

    gt_rows: `frame` (R,), `person` (R,), `box` (R, 4), optionally `visible` (R,) (as in
    crowd_gt.npz). predictions: a mapping with `frame`, `track_id`, `box` arrays (the npz of
    `video --people all --save-params`; other keys are ignored), or rows (frame, track_id,
    box). A ground-truth row counts when visible > min_visible (all rows when there is no
    `visible`).

    Returns: gt_rows (counted), predictions, matched, recall (matched / counted ground-truth
    rows), precision (matched / predictions not on don't-care rows), false_negatives,
    false_positives, id_switches, mota; matches (M, 2) int array of (ground-truth row,
    prediction row) over the clip; per_person {person: {"gt_rows": [...], "pred_rows": [...],
    "track_ids": [...]}}, matched rows in frame order (e.g. for MPJPE of each person's
    matched predictions).
    """
    g_frame = np.asarray(gt_rows["frame"], dtype=np.int64).reshape(-1)
    g_person = np.asarray(gt_rows["person"], dtype=np.int64).reshape(-1)
    g_box = np.asarray(gt_rows["box"], dtype=np.float64).reshape(-1, 4)
    visible = gt_rows.get("visible")
    counted = (np.ones(len(g_frame), bool) if visible is None
               else np.asarray(visible, dtype=np.float64).reshape(-1) > min_visible)
    p_frame, p_track, p_box = _prediction_arrays(predictions)

    last_track: dict = {}  # person -> the track id of its latest match
    matches, switches, ignored_predictions = [], 0, 0
    for f in np.union1d(g_frame, p_frame):
        gi, pi = np.flatnonzero(g_frame == f), np.flatnonzero(p_frame == f)
        if len(gi) == 0 or len(pi) == 0:
            continue
        overlap = box_iou(g_box[gi], p_box[pi])
        # CLEAR-MOT: keep last frame's correspondences where they still overlap enough.
        previous = np.array([[last_track.get(int(g_person[g])) == int(p_track[p]) for p in pi] for g in gi])
        for a, b in _assign(overlap, iou, bonus=2.0 * previous):
            g, p = int(gi[a]), int(pi[b])
            if not counted[g]:
                ignored_predictions += 1
                continue
            person, track = int(g_person[g]), int(p_track[p])
            if person in last_track and last_track[person] != track:
                switches += 1
            last_track[person] = track
            matches.append((g, p))
    matches = np.array(matches, dtype=np.int64).reshape(-1, 2)
    num_gt, num_pred, num_matched = int(counted.sum()), len(p_frame), len(matches)
    false_positives = num_pred - num_matched - ignored_predictions
    per_person = {}
    for person in np.unique(g_person):
        mine = matches[g_person[matches[:, 0]] == person]
        mine = mine[np.argsort(g_frame[mine[:, 0]], kind="stable")]
        per_person[int(person)] = {"gt_rows": mine[:, 0].tolist(), "pred_rows": mine[:, 1].tolist(),
                                   "track_ids": p_track[mine[:, 1]].tolist()}
    return {
        "gt_rows": num_gt, "predictions": num_pred, "matched": num_matched,
        "recall": num_matched / num_gt if num_gt else float("nan"),
        "precision": num_matched / (num_matched + false_positives) if num_matched + false_positives else float("nan"),
        "false_negatives": num_gt - num_matched, "false_positives": int(false_positives), "id_switches": switches,
        "mota": 1 - (num_gt - num_matched + false_positives + switches) / num_gt if num_gt else float("nan"),
        "matches": matches, "per_person": per_person,
    }


def people_errors(gt: dict, params: dict, report: dict) -> dict:
    """Over the rows `tracking_report` matched: PCK@0.1 (of the true box's larger side) and the
    median pixel error of the fitted COCO keypoints (`keypoints2d_fit` of `video --people all`'s
    npz), and MPJPE (pelvis-aligned) / PA-MPJPE (mm, LSP's 14 joints) of the posed body."""
    g, p = report["matches"][:, 0], report["matches"][:, 1]
    true, fit = gt["keypoints_coco"][g], params["keypoints2d_fit"][p]
    seen = (true[..., 2] > 0) & np.isfinite(fit).all(-1)
    box = gt["box"][g]
    size = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    close = np.linalg.norm(fit - true[..., :2], axis=-1) < 0.1 * size[:, None]
    smpl = SMPL(joint_set="hmr19")
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        joints = smpl(betas=as_t(params["betas"][p]), body_pose=as_t(params["body_pose"][p]),
                      global_orient=as_t(params["global_orient"][p])).joints[:, :NUM_LSP]
    joints, truth = metrics.align_by_pelvis(joints), metrics.align_by_pelvis(as_t(gt["joints3d"][g]))
    return {"pck@0.1": float(close[seen].mean()),
            "keypoint_error_px_median": float(np.median(np.linalg.norm(fit - true[..., :2], axis=-1)[seen])),
            "mpjpe_mm": float(metrics.mpjpe(joints, truth).mean() * 1000),
            "pa_mpjpe_mm": float(metrics.pa_mpjpe(joints, truth).mean() * 1000)}
