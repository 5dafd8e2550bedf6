#!/usr/bin/env python
"""Score every-person results against real photos with COCO-17 keypoint annotations.

    python benchmarks/real_people.py --annotations /work/realdata/photos/annotations.json \
        --results OUT/people.npz [--json out.json] [--min-score 0]
    python benchmarks/real_people.py --annotations ... --video-npz OUT/people_video.npz

Inputs
  annotations  COCO keypoints json (benchmarks/real/gather.py writes it).  Extra keys
               understood: images[i].exhaustive (bool, default True),
               images[i].ignore_regions ([[x,y],...] polygons), and the top-level
               "ignored_annotations" (people with < 5 visible keypoints).
  --results    npz from `hmr-fast images`: one row per (image, person), keys
               image (str file name), person (int), box (N,5 x1,y1,x2,y2,score),
               keypoints2d (N,17,3 pixels+score), keypoints2d_fit (N,17,2 pixels).
  --video-npz  npz from `hmr-fast video --people all` run on the photos as an image
               folder: keys frame, track_id, box (N,4 x1,y1,x2,y2), score,
               keypoints2d, keypoints2d_fit.  Frame k is the k-th image in sorted
               file-name order of the annotation's images.

Definitions
  * An annotated person counts when it has >= 5 visible keypoints (v > 0), recomputed
    from its keypoints.  Annotated people with fewer are "ignored".
  * Matching, per image, one-to-one: Hungarian assignment over box IoU (annotated
    bbox [x,y,w,h] vs detected x1,y1,x2,y2), maximising first the number of pairs with
    IoU >= 0.5, then their summed IoU.  Pairs below IoU 0.5 never match.
  * recall    = matched counted people / all counted people (every image).
  * precision = matched detections / (matched + false detections), over images with
    exhaustive = true only.  An unmatched detection is not counted as false when it
    overlaps an ignored annotated person with IoU >= 0.5 (one-to-one, after the main
    matching) or its box centre lies inside an image's ignore region.
    precision_all_images repeats this over every image (a lower bound: non-exhaustive
    images have unannotated people).
  * PCK@a over the visible annotated keypoints (v > 0) of matched people: a keypoint is
    correct when its pixel distance to the annotation is <= a * max(w, h) of that
    person's ANNOTATED bbox.  Reported for a = 0.1 and 0.05, for (a) the detector's
    keypoints2d (regardless of their scores) and (b) the fitted keypoints2d_fit.
"""
import argparse
import json

import numpy as np

IOU_THR = 0.5
MIN_VISIBLE = 5
ALPHAS = (0.1, 0.05)


def box_iou(a, b):
    """a: (N,4) xyxy, b: (M,4) xyxy -> (N,M)."""
    a = np.asarray(a, float).reshape(-1, 4)
    b = np.asarray(b, float).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    aa = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    bb = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = aa[:, None] + bb[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _assign(weight):
    """Maximum-weight one-to-one assignment of a non-negative matrix; returns pairs
    with positive weight."""
    if weight.size == 0:
        return []
    try:
        from scipy.optimize import linear_sum_assignment
        r, c = linear_sum_assignment(-weight)
        pairs = list(zip(r.tolist(), c.tolist()))
    except ImportError:  # greedy fallback
        pairs, used_r, used_c = [], set(), set()
        for flat in np.argsort(-weight, axis=None, kind="stable"):
            i, j = np.unravel_index(flat, weight.shape)
            if i not in used_r and j not in used_c:
                pairs.append((int(i), int(j)))
                used_r.add(i)
                used_c.add(j)
    return [(i, j) for i, j in pairs if weight[i, j] > 0]


def match(gt_xyxy, det_xyxy, thr=IOU_THR):
    iou = box_iou(gt_xyxy, det_xyxy)
    weight = np.where(iou >= thr, 1000.0 + iou, 0.0)
    return _assign(weight), iou


def point_in_polygon(x, y, poly):
    inside = False
    n = len(poly)
    for k in range(n):
        x0, y0 = poly[k]
        x1, y1 = poly[(k + 1) % n]
        if (y0 > y) != (y1 > y):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
            if x < xc:
                inside = not inside
    return inside


def xywh_to_xyxy(b):
    x, y, w, h = [float(v) for v in b]
    return [x, y, x + w, y + h]


def load_annotations(path):
    with open(path) as f:
        doc = json.load(f)
    images = sorted(doc["images"], key=lambda im: im["file_name"])
    people, ignored = {}, {}
    for a in doc["annotations"] + doc.get("ignored_annotations", []):
        k = np.asarray(a["keypoints"], float).reshape(17, 3)
        nvis = int((k[:, 2] > 0).sum())
        dst = people if nvis >= MIN_VISIBLE and not a.get("iscrowd", 0) else ignored
        dst.setdefault(a["image_id"], []).append(dict(bbox=a["bbox"], kps=k))
    return images, people, ignored


def load_results(path, video, images, min_score):
    z = np.load(path, allow_pickle=False)
    if video:
        frame = np.asarray(z["frame"]).astype(int).reshape(-1)
        box = np.asarray(z["box"], float).reshape(-1, 4)
        score = np.asarray(z["score"], float).reshape(-1) if "score" in z.files else np.ones(len(box))
        names = [im["file_name"] for im in images]
        unknown = int(((frame < 0) | (frame >= len(names))).sum())
        file_of = [names[f] if 0 <= f < len(names) else None for f in frame]
    else:
        file_of = [str(s) for s in np.asarray(z["image"]).reshape(-1)]
        b = np.asarray(z["box"], float).reshape(len(file_of), -1)
        box, score = b[:, :4], (b[:, 4] if b.shape[1] > 4 else np.ones(len(b)))
        known = {im["file_name"] for im in images}
        unknown = sum(1 for f in file_of if f not in known)
    n = len(file_of)
    kp = np.asarray(z["keypoints2d"], float).reshape(n, 17, -1)[:, :, :2] if n else np.zeros((0, 17, 2))
    fit = np.asarray(z["keypoints2d_fit"], float).reshape(n, 17, -1)[:, :, :2] if n else np.zeros((0, 17, 2))
    dets = {}
    for i, f in enumerate(file_of):
        if f is None or score[i] < min_score:
            continue
        dets.setdefault(f, []).append(dict(box=box[i], score=float(score[i]), kp=kp[i], fit=fit[i]))
    return dets, unknown, n


def evaluate(images, people, ignored, dets):
    def new_acc():
        return dict(gt=0, matched=0, tp=0, fp=0, tp_all=0, fp_all=0,
                    kp={a: [0, 0] for a in ALPHAS}, fit={a: [0, 0] for a in ALPHAS})

    tot, by_src = new_acc(), {}
    for im in images:
        src = by_src.setdefault(im.get("source", "all"), new_acc())
        gts = people.get(im["id"], [])
        ign = ignored.get(im["id"], [])
        ds = dets.get(im["file_name"], [])
        gt_xyxy = np.array([xywh_to_xyxy(g["bbox"]) for g in gts]).reshape(-1, 4)
        d_xyxy = np.array([d["box"] for d in ds]).reshape(-1, 4)
        pairs, _ = match(gt_xyxy, d_xyxy)
        matched_d = {j for _, j in pairs}
        rest = [j for j in range(len(ds)) if j not in matched_d]
        # unmatched detections on ignored people or inside ignore regions are neutral
        neutral = set()
        if ign and rest:
            ig_xyxy = np.array([xywh_to_xyxy(g["bbox"]) for g in ign]).reshape(-1, 4)
            p2, _ = match(ig_xyxy, d_xyxy[rest])
            neutral |= {rest[j] for _, j in p2}
        for j in rest:
            if j in neutral:
                continue
            cx = 0.5 * (d_xyxy[j, 0] + d_xyxy[j, 2])
            cy = 0.5 * (d_xyxy[j, 1] + d_xyxy[j, 3])
            if any(point_in_polygon(cx, cy, poly) for poly in im.get("ignore_regions", []) if len(poly) >= 3):
                neutral.add(j)
        fp = len(rest) - len(neutral)
        for acc in (tot, src):
            acc["gt"] += len(gts)
            acc["matched"] += len(pairs)
            acc["tp_all"] += len(pairs)
            acc["fp_all"] += fp
            if im.get("exhaustive", True):
                acc["tp"] += len(pairs)
                acc["fp"] += fp
        for i, j in pairs:
            g = gts[i]
            vis = g["kps"][:, 2] > 0
            scale = max(float(g["bbox"][2]), float(g["bbox"][3]))
            for key, pred in (("kp", ds[j]["kp"]), ("fit", ds[j]["fit"])):
                dist = np.linalg.norm(pred[vis] - g["kps"][vis, :2], axis=1)
                dist = np.where(np.isfinite(dist), dist, np.inf)
                for a in ALPHAS:
                    ok = int((dist <= a * scale).sum())
                    for acc in (tot, src):
                        acc[key][a][0] += ok
                        acc[key][a][1] += int(vis.sum())

    def summary(acc):
        def div(a, b):
            return float(a) / b if b else float("nan")
        out = dict(people=acc["gt"], matched=acc["matched"], recall=div(acc["matched"], acc["gt"]),
                   true_detections=acc["tp"], false_detections=acc["fp"],
                   precision=div(acc["tp"], acc["tp"] + acc["fp"]),
                   precision_all_images=div(acc["tp_all"], acc["tp_all"] + acc["fp_all"]))
        for key, name in (("kp", "keypoints2d"), ("fit", "keypoints2d_fit")):
            for a in ALPHAS:
                c, n = acc[key][a]
                out[f"pck@{a:g}_{name}"] = div(c, n)
            out[f"keypoints_scored_{name}"] = acc[key][ALPHAS[0]][1]
        return out

    return dict(overall=summary(tot), by_source={k: summary(v) for k, v in sorted(by_src.items())})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--results", help="people.npz of `hmr-fast images`")
    g.add_argument("--video-npz", help="npz of `hmr-fast video --people all` on the photos as frames")
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--min-score", type=float, default=0.0, help="drop detections below this score")
    args = ap.parse_args(argv)

    images, people, ignored = load_annotations(args.annotations)
    video = args.video_npz is not None
    dets, unknown, nrows = load_results(args.video_npz if video else args.results, video, images, args.min_score)
    res = evaluate(images, people, ignored, dets)
    res["images"] = len(images)
    res["result_rows"] = nrows
    res["rows_on_unknown_images"] = unknown
    res["mode"] = "video" if video else "images"
    res["iou_threshold"] = IOU_THR
    res["pck_normalisation"] = "alpha * max(w, h) of the annotated bbox"
    o = res["overall"]
    print(f"{len(images)} images, {o['people']} annotated people (>= {MIN_VISIBLE} visible keypoints), "
          f"{nrows} result rows ({unknown} on unknown images)")
    print(f"recall {o['recall']:.3f} ({o['matched']}/{o['people']})  precision {o['precision']:.3f} "
          f"(exhaustive images; all images {o['precision_all_images']:.3f})")
    for name in ("keypoints2d", "keypoints2d_fit"):
        print(f"{name:16s} PCK@0.1 {o['pck@0.1_' + name]:.3f}  PCK@0.05 {o['pck@0.05_' + name]:.3f}"
              f"  over {o['keypoints_scored_' + name]} keypoints")
    for src, s in res["by_source"].items():
        print(f"  {src:12s} recall {s['recall']:.3f} ({s['matched']}/{s['people']})  "
              f"PCK@0.1 det {s['pck@0.1_keypoints2d']:.3f} fit {s['pck@0.1_keypoints2d_fit']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
