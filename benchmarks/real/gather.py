#!/usr/bin/env python
"""Rebuild /work/realdata (real photos with keypoint annotations + a crowd video)
from local git snapshots of public repositories.

The media are NOT part of this repository (see benchmarks/real/MANIFEST.md for
sources, licences and the exclusions checked).  This script only reads blobs
from bare git directories (as returned by the session's ``fetch`` tool, e.g.
``/work/.mirror/open-mmlab+mmpose/repo``) with ``git --git-dir=... show
COMMIT:path`` and writes

    OUT/photos/<source>_<name>.{jpg,png}
    OUT/photos/annotations.json      COCO keypoints format (deterministic bytes)
    OUT/crowd/mot_street_night_1080p.mp4   original demo clip (1920x1080)
    OUT/crowd/mot_street_night_720p.mp4    the same frames resized to 1280x720

Photo sources: open-mmlab/mmpose test fixtures (MPII, AIC, MHP, JHMDB,
PoseTrack18), the Bonn Multi-Person PoseTrack demo video of
umariqb/PoseTrack-CVPR2017 (3 fixed frames) and a fixed stride sample of the
Leeds Sports Pose Extended (LSPET) images committed to MiraiLouis/lsp_cpm.

Usage:
    python benchmarks/real/gather.py \
        --mmpose /work/.mirror/open-mmlab+mmpose/repo \
        --mmtracking /work/.mirror/open-mmlab+mmtracking/repo \
        --bonn-posetrack /work/.mirror/umariqb+PoseTrack-CVPR2017/repo \
        --lspet /work/.mirror/MiraiLouis+lsp_cpm/repo \
        [--out /work/realdata] [--with-lowlight]
or  python benchmarks/real/gather.py --paths paths.txt
    where paths.txt has lines "owner/name /path/to/git/dir".

Commits are pinned; a snapshot lacking the pinned commit is an error (pass
--allow-head to read HEAD instead, and note it).

Conversion to COCO-17 (nose, l/r eye, l/r ear, l/r shoulder, l/r elbow,
l/r wrist, l/r hip, l/r knee, l/r ankle): only joints that map exactly are
copied (shoulders, elbows, wrists, hips, knees, ankles; nose where the source
has one); every other COCO slot is v=0.  Source-only joints (head top, neck,
thorax, pelvis, belly, PoseTrack head_bottom/head_top) are dropped, but are
used to derive a box when the source has none.  A source visibility > 0 becomes
v=2 (visible/labelled) except the COCO-style "1 = labelled but occluded" of
AI Challenger (as converted by mmpose), which stays 1, and the Bonn PoseTrack
"is_visible = 0" (labelled, occluded), which becomes 1.  MATLAB-made
annotations (MPII, Bonn PoseTrack, LSPET) are 1-based: 1 px is subtracted.
"Visible keypoint" in the counts below means v > 0 in the COCO-17 result.

People with fewer than 5 visible COCO-17 keypoints are not in "annotations";
they are listed under the extra top-level key "ignored_annotations" (so an
evaluator can avoid counting a detection of them as a false positive).
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np

PINS = {
    "open-mmlab/mmpose": "759b39c13fea6ba094afc1fa932f51dc1b11cbf9",
    "open-mmlab/mmtracking": "e79491ec8f0b8c86fda947fbaaa824c66ab2a991",
    "umariqb/PoseTrack-CVPR2017": "30b0a6d2fae3912240ca0a8cbd71ed3ccabf9229",
    # the first commit of lsp_cpm holds all 10,000 LSPET images and the original
    # joints.mat (later commits deleted them)
    "MiraiLouis/lsp_cpm": "378de0b572247d7a44c7abf5032184e786b0cb17",
}
ORIGINAL_SOURCES = ("aic", "jhmdb", "mhp", "mpii", "posetrack18", "exlpose")
MIN_VISIBLE = 5
BOX_MARGIN = 0.12  # per side, fraction of the keypoint extent (derived boxes)

COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear",
              "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
              "left_wrist", "right_wrist", "left_hip", "right_hip",
              "left_knee", "right_knee", "left_ankle", "right_ankle"]
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12],
                 [7, 13], [6, 7], [6, 8], [7, 9], [8, 10], [9, 11], [2, 3],
                 [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]

# COCO index -> source index, per source skeleton
MPII16 = {5: 13, 6: 12, 7: 14, 8: 11, 9: 15, 10: 10, 11: 3, 12: 2,
          13: 4, 14: 1, 15: 5, 16: 0}            # MPII / LV-MHP 16 joints
AIC14 = {5: 3, 6: 0, 7: 4, 8: 1, 9: 5, 10: 2, 11: 9, 12: 6,
         13: 10, 14: 7, 15: 11, 16: 8}           # AI Challenger 14 joints
JHMDB15 = {5: 4, 6: 3, 7: 8, 8: 7, 9: 12, 10: 11, 11: 6, 12: 5,
           13: 10, 14: 9, 15: 14, 16: 13}        # JHMDB 15 joints (mmpose order)
EXLPOSE14 = {5: 0, 6: 1, 7: 2, 8: 3, 9: 4, 10: 5, 11: 6, 12: 7,
             13: 8, 14: 9, 15: 10, 16: 11}       # ExLPose 14 joints
LSP14 = {5: 9, 6: 8, 7: 10, 8: 7, 9: 11, 10: 6, 11: 3, 12: 2,
         13: 4, 14: 1, 15: 5, 16: 0}             # LSP / LSPET 14 joints
POSETRACK17 = {0: 0, 3: 3, 4: 4, **{i: i for i in range(5, 17)}}
# (PoseTrack18 slots 1/2 are head_bottom/head_top, not eyes: dropped)

MMPOSE_PHOTOS = [
    # (source tag, annotation file, image dir prefix, format, exhaustive)
    ("mpii", "tests/data/mpii/test_mpii.json", "tests/data/mpii/", "mpii", False),
    ("aic", "tests/data/aic/test_aic.json", "tests/data/aic/", "coco_aic", True),
    ("mhp", "tests/data/mhp/test_mhp.json", "tests/data/mhp/", "coco_mpii16", True),
    ("jhmdb", "tests/data/jhmdb/test_jhmdb_sub1.json", "tests/data/jhmdb/", "coco_jhmdb", False),
    ("posetrack18", "tests/data/posetrack18/annotations/test_posetrack18_val.json",
     "tests/data/posetrack18/", "coco_posetrack", True),
]
LOWLIGHT = ("exlpose", "tests/data/exlpose/test_exlpose.json", "tests/data/exlpose/",
            "coco_exlpose", True)

# Bonn Multi-Person PoseTrack (Iqbal et al., CVPR'17): the one video the repo ships
# (test video 23 of the annolist, 41 frames, 4 people); frames fixed in advance:
# first, centre (presumably the MPII key frame) and last.
BONN_ANNOLIST = "data/bonn-multiperson-posetrack/annolist/test/annolist.mat"
BONN_VIDEO = "060470979"
BONN_FRAMES = (1, 21, 41)
# LSPET: every 400th image from im00201 (25 images), fixed by rule, none dropped.
LSPET_JOINTS = "joints.mat"
LSPET_IDS = tuple(range(201, 10001, 400))

CROWD_SRC = ("open-mmlab/mmtracking", "demo/demo.mp4")


class Snapshot:
    def __init__(self, repo, gitdir, allow_head=False):
        self.repo, self.gitdir = repo, gitdir
        pin = PINS[repo]
        ok = subprocess.run(["git", "--git-dir", gitdir, "cat-file", "-e", pin + "^{commit}"],
                            capture_output=True).returncode == 0
        if not ok:
            if not allow_head:
                sys.exit(f"{gitdir} lacks pinned commit {pin} of {repo} (use --allow-head)")
            pin = subprocess.run(["git", "--git-dir", gitdir, "rev-parse", "HEAD"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            print(f"WARNING: {repo}: pinned commit missing, reading HEAD {pin}", file=sys.stderr)
        self.commit = pin

    def read(self, path):
        r = subprocess.run(["git", "--git-dir", self.gitdir, "show", f"{self.commit}:{path}"],
                           capture_output=True)
        if r.returncode != 0:
            raise FileNotFoundError(f"{self.repo}@{self.commit}:{path}: {r.stderr.decode()[:200]}")
        return r.stdout


def _r(x):
    return float(round(float(x), 2))


def to_coco17(src_xy, src_v, mapping, keep_v1=False):
    kps = np.zeros((17, 3), dtype=np.float64)
    for c, s in mapping.items():
        v = src_v[s]
        if v > 0 and v < 3:  # AIC raw uses 3 = absent; never present after mmpose conversion
            kps[c, 0], kps[c, 1] = src_xy[s]
            kps[c, 2] = 1 if (keep_v1 and v == 1) else 2
    return kps


def derive_box(xy, v, w, h):
    pts = xy[v > 0]
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    mx, my = BOX_MARGIN * (x1 - x0), BOX_MARGIN * (y1 - y0)
    x0, y0 = max(0.0, x0 - mx), max(0.0, y0 - my)
    x1, y1 = min(float(w), x1 + mx), min(float(h), y1 + my)
    return [x0, y0, x1 - x0, y1 - y0]


def safe_name(s):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def image_size(data):
    import cv2
    im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if im is None:
        raise ValueError("undecodable image")
    return im.shape[1], im.shape[0]


def collect_mmpose(snap, specs):
    """Returns list of (file_name, bytes, image_meta, [person dicts])."""
    out = []
    for tag, ann_path, prefix, fmt, exhaustive in specs:
        d = json.loads(snap.read(ann_path))
        if fmt == "mpii":  # list of single-person records (HRNet json, 1-based coords)
            by_img = {}
            for rec in d:
                by_img.setdefault(rec["image"], []).append(rec)
            for img in sorted(by_img):
                data = snap.read(prefix + img)
                w, h = image_size(data)
                people = []
                for rec in by_img[img]:
                    xy = np.asarray(rec["joints"], float) - 1.0
                    v = np.asarray(rec["joints_vis"], int)
                    # a joint at (-1,-1) after the shift is unlabelled
                    v = np.where((xy[:, 0] < 0) & (xy[:, 1] < 0), 0, v)
                    kps = to_coco17(xy, v, MPII16)
                    people.append(dict(kps=kps, bbox=derive_box(xy, v, w, h), bbox_derived=True,
                                       src_id=f"{img}"))
                meta = dict(source=tag, repo=snap.repo, commit=snap.commit,
                            repo_path=prefix + img, exhaustive=exhaustive,
                            width=w, height=h, note="MPII single-person annotation: other people "
                            "in the image may be unannotated")
                out.append((f"{tag}_{safe_name(img)}", data, meta, people))
            continue
        mapping = {"coco_aic": AIC14, "coco_mpii16": MPII16, "coco_jhmdb": JHMDB15,
                   "coco_posetrack": POSETRACK17, "coco_exlpose": EXLPOSE14}[fmt]
        anns = {}
        for a in d["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        for im in sorted(d["images"], key=lambda i: i["file_name"]):
            data = snap.read(prefix + im["file_name"])
            w, h = image_size(data)
            assert (w, h) == (im["width"], im["height"]), (im["file_name"], w, h)
            people = []
            for a in sorted(anns.get(im["id"], []), key=lambda a: a["id"]):
                k = np.asarray(a["keypoints"], float).reshape(-1, 3)
                kps = to_coco17(k[:, :2], k[:, 2].astype(int), mapping, keep_v1=(fmt == "coco_aic"))
                bx = a.get("bbox")
                derived = not bx or len(bx) != 4 or bx[2] <= 0 or bx[3] <= 0
                if derived:
                    bx = derive_box(k[:, :2], k[:, 2], w, h)
                people.append(dict(kps=kps, bbox=[float(b) for b in bx], bbox_derived=derived,
                                   src_id=str(a["id"])))
            meta = dict(source=tag, repo=snap.repo, commit=snap.commit,
                        repo_path=prefix + im["file_name"], exhaustive=exhaustive,
                        width=w, height=h)
            if fmt == "coco_posetrack":
                regs = [[[_r(x), _r(y)] for x, y in zip(xs, ys)]
                        for xs, ys in zip(im.get("ignore_regions_x", []), im.get("ignore_regions_y", []))]
                meta["ignore_regions"] = regs
                meta["note"] = ("PoseTrack18: people outside ignore_regions are annotated; "
                                "ignore_regions are polygons [[x,y],...]")
            if fmt == "coco_exlpose":
                meta["lowlight"] = True
            if fmt == "coco_jhmdb":
                meta["note"] = "JHMDB: one actor annotated per clip"
            out.append((f"{tag}_{safe_name(im['file_name'])}", data, meta, people))
    return out


def _outside_to_unlabelled(kps, w, h):
    """Labelled joints outside the image (after the 1-px shift) become v=0; returns
    how many were changed."""
    vis = kps[:, 2] > 0
    out = vis & ((kps[:, 0] < 0) | (kps[:, 1] < 0) | (kps[:, 0] > w - 1) | (kps[:, 1] > h - 1))
    kps[out] = 0.0
    return int(out.sum())


def _loadmat(data):
    import io
    import scipy.io
    return scipy.io.loadmat(io.BytesIO(data), struct_as_record=False, squeeze_me=True)


def collect_bonn(snap):
    """Bonn Multi-Person PoseTrack: MPII-style annolist (per video: annopoints
    [person, frame] with point(id 0..15 in MPII order, x, y, is_visible))."""
    vids = _loadmat(snap.read(BONN_ANNOLIST))["annolist"]
    vid = [v for v in np.atleast_1d(vids) if str(v.name) == BONN_VIDEO]
    assert len(vid) == 1, BONN_VIDEO
    ap = vid[0].annopoints
    out = []
    for fr in BONN_FRAMES:
        path = f"data/bonn-multiperson-posetrack/videos/{BONN_VIDEO}/{fr:05d}.jpg"
        data = snap.read(path)
        w, h = image_size(data)
        people = []
        for p in range(ap.shape[0]):
            rec = ap[p, fr - 1]
            if isinstance(rec, np.ndarray):  # person not annotated in this frame
                continue
            xy = np.zeros((16, 2))
            v = np.zeros(16, int)
            for q in np.atleast_1d(rec.point):
                k = int(q.id)
                xy[k] = float(q.x) - 1.0, float(q.y) - 1.0
                v[k] = 2 if int(q.is_visible) else 1
            kps = to_coco17(xy, v, MPII16, keep_v1=True)
            _outside_to_unlabelled(kps, w, h)
            people.append(dict(kps=kps, bbox=derive_box(xy, v, w, h), bbox_derived=True,
                               src_id=f"{BONN_VIDEO}/person{p}/frame{fr}"))
        meta = dict(source="bonn_posetrack", repo=snap.repo, commit=snap.commit, repo_path=path,
                    exhaustive=True, width=w, height=h,
                    note=f"Bonn Multi-Person PoseTrack test video {BONN_VIDEO} frame {fr} of 41: "
                         "the same 4 people in all 3 frames; occluded joints have v=1")
        out.append((f"bonn_posetrack_{BONN_VIDEO}_{fr:05d}.jpg", data, meta, people))
    return out


def collect_lspet(snap):
    """LSPET: joints.mat 'joints' (14, 3, 10000) = x, y, flag (1 labelled, 0 not
    labelled: those lie outside the image), LSP joint order; one person per image."""
    joints = _loadmat(snap.read(LSPET_JOINTS))["joints"]
    assert joints.shape == (14, 3, 10000), joints.shape
    out = []
    for n in LSPET_IDS:
        path = f"images/im{n:05d}.jpg"
        data = snap.read(path)
        w, h = image_size(data)
        j = joints[:, :, n - 1]
        xy = j[:, :2] - 1.0
        v = (j[:, 2] > 0).astype(int)
        kps = to_coco17(xy, v, LSP14)
        _outside_to_unlabelled(kps, w, h)
        people = [dict(kps=kps, bbox=derive_box(xy, v, w, h), bbox_derived=True,
                       src_id=f"joints[:, :, {n - 1}]")]
        meta = dict(source="lspet", repo=snap.repo, commit=snap.commit, repo_path=path,
                    exhaustive=False, width=w, height=h,
                    note="LSPET: one person annotated per image (Amazon Mechanical Turk "
                         "labels, noisy); other people in the image are unannotated")
        out.append((f"lspet_im{n:05d}.jpg", data, meta, people))
    return out


def build(args):
    snaps = {}
    paths = {}
    if args.paths:
        for line in open(args.paths):
            line = line.strip()
            if line and not line.startswith("#"):
                repo, p = line.split(None, 1)
                paths[repo] = p
    if args.mmpose:
        paths["open-mmlab/mmpose"] = args.mmpose
    if args.mmtracking:
        paths["open-mmlab/mmtracking"] = args.mmtracking
    if args.bonn_posetrack:
        paths["umariqb/PoseTrack-CVPR2017"] = args.bonn_posetrack
    if args.lspet:
        paths["MiraiLouis/lsp_cpm"] = args.lspet
    for repo in PINS:
        if repo not in paths:
            sys.exit(f"need a snapshot path for {repo}")
        snaps[repo] = Snapshot(repo, paths[repo], args.allow_head)

    photos = os.path.join(args.out, "photos")
    crowd = os.path.join(args.out, "crowd")
    os.makedirs(photos, exist_ok=True)
    os.makedirs(crowd, exist_ok=True)

    specs = list(MMPOSE_PHOTOS) + ([LOWLIGHT] if args.with_lowlight else [])
    items = collect_mmpose(snaps["open-mmlab/mmpose"], specs)
    items += collect_bonn(snaps["umariqb/PoseTrack-CVPR2017"])
    items += collect_lspet(snaps["MiraiLouis/lsp_cpm"])
    # ids: the original mmpose images keep ids 1..16 (1..18 with --with-lowlight) in
    # file-name order, as before this set grew; the added sources follow in file-name
    # order.  frame_index is the position in file-name order over all images.
    items.sort(key=lambda t: (t[2]["source"] not in ORIGINAL_SOURCES, t[0]))
    frame_of = {n: i for i, n in enumerate(sorted(t[0] for t in items))}
    names = [t[0] for t in items]
    assert len(set(names)) == len(names)
    for n in names:  # exclusion guard: no COCO-style names
        assert not re.match(r"^(COCO_|.*\b0{5}\d{7}\.jpg$)", n.split("_", 1)[1]), n

    images, anns, ignored = [], [], []
    counts = {}
    ann_id = 1
    for img_id, (fname, data, meta, people) in enumerate(items, start=1):
        with open(os.path.join(photos, fname), "wb") as f:
            f.write(data)
        entry = dict(id=img_id, file_name=fname, width=meta["width"], height=meta["height"],
                     frame_index=frame_of[fname], source=meta["source"],
                     source_repo=meta["repo"], source_commit=meta["commit"],
                     source_path=meta["repo_path"], exhaustive=meta["exhaustive"],
                     sha256=hashlib.sha256(data).hexdigest())
        for k in ("lowlight", "ignore_regions", "note"):
            if k in meta:
                entry[k] = meta[k]
        images.append(entry)
        c = counts.setdefault(meta["source"], dict(images=0, people=0, people_ge5=0))
        c["images"] += 1
        for p in people:
            kps = p["kps"]
            nvis = int((kps[:, 2] > 0).sum())
            a = dict(id=ann_id, image_id=img_id, category_id=1, iscrowd=0,
                     bbox=[_r(b) for b in p["bbox"]],
                     area=_r(p["bbox"][2] * p["bbox"][3]),
                     keypoints=[_r(x) if j % 3 != 2 else int(x)
                                for j, x in enumerate(kps.reshape(-1))],
                     num_keypoints=nvis, bbox_derived=bool(p["bbox_derived"]),
                     source_ann_id=p["src_id"])
            ann_id += 1
            c["people"] += 1
            if nvis >= MIN_VISIBLE:
                anns.append(a)
                c["people_ge5"] += 1
            else:
                ignored.append(a)
    total = dict(images=len(images), people=len(anns) + len(ignored), people_ge5=len(anns))
    doc = dict(
        info=dict(description="hmr_fast real-photo evaluation set (local use only; see "
                              "benchmarks/real/MANIFEST.md)",
                  min_visible_keypoints=MIN_VISIBLE, derived_box_margin_per_side=BOX_MARGIN,
                  counts=dict(total=total, by_source=counts)),
        categories=[dict(id=1, name="person", supercategory="person",
                         keypoints=COCO_NAMES, skeleton=COCO_SKELETON)],
        images=images, annotations=anns, ignored_annotations=ignored)
    with open(os.path.join(photos, "annotations.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")

    # crowd video
    repo, path = CROWD_SRC
    data = snaps[repo].read(path)
    orig = os.path.join(crowd, "mot_street_night_1080p.mp4")
    with open(orig, "wb") as f:
        f.write(data)
    vids = {os.path.basename(orig): hashlib.sha256(data).hexdigest()}
    if not args.no_resize:
        import cv2
        cap = cv2.VideoCapture(orig)
        fps = cap.get(cv2.CAP_PROP_FPS) or 3.0
        dst = os.path.join(crowd, "mot_street_night_720p.mp4")
        wr = cv2.VideoWriter(dst, cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
        n = 0
        while True:
            ok, fr = cap.read()
            if not ok:
                break
            wr.write(cv2.resize(fr, (1280, 720), interpolation=cv2.INTER_AREA))
            n += 1
        wr.release()
        vids[os.path.basename(dst)] = f"re-encoded (mp4v), {n} frames"
    print(json.dumps(dict(counts=doc["info"]["counts"], videos=vids), indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mmpose", help="git dir of open-mmlab/mmpose")
    ap.add_argument("--mmtracking", help="git dir of open-mmlab/mmtracking")
    ap.add_argument("--bonn-posetrack", help="git dir of umariqb/PoseTrack-CVPR2017")
    ap.add_argument("--lspet", help="git dir of MiraiLouis/lsp_cpm (LSPET images)")
    ap.add_argument("--paths", help="file with lines 'owner/name GITDIR'")
    ap.add_argument("--out", default="/work/realdata")
    ap.add_argument("--with-lowlight", action="store_true",
                    help="also add the 2 near-black ExLPose images (6 people)")
    ap.add_argument("--allow-head", action="store_true")
    ap.add_argument("--no-resize", action="store_true", help="skip the 1280x720 copy of the video")
    build(ap.parse_args())


if __name__ == "__main__":
    main()
