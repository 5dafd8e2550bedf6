"""`hmr-fast images INPUT... --out DIR`: every person in every photograph.

    hmr-fast images photos/ more/*.jpg --out results [--checkpoint C] [--refine N]

Each image on its own (no tracking, no smoothing): people and their COCO keypoints from
MoveNet (tiled automatically for small people; each person then looked at again alone for
their keypoints, `--second-look off` skips that), every person's crop through HMR in one
batch, each person's fit started from the better of HMR's prediction and the learned start
from their keypoints and run to convergence (blocks of 25 iterations until a person's
objective improves by less than 1%, at most --refine iterations; 0: HMR alone), every mesh
drawn far to near. Writes DIR/<image stem>.jpg (the overlay) and DIR/people.npz, one row per
(image, person): image (the file name), person (0, 1, ... per image, best detection first),
box (x1, y1, x2, y2, score px), keypoints2d (17, 3: detected, px + confidence, COCO
order), keypoints2d_fit (17, 2: the fitted model's COCO keypoints, px), betas (10),
body_pose (69), global_orient (3), camera (3: weak s, tx, ty in crop_box), crop_box (3: cx,
cy, size px), loss (the fit's objective), start (0: HMR's, 1: the learned start). Every key
is there with zero rows when nobody is found. Unreadable images: one warning line each;
the rest go on. In Python, `PeoplePhotos(...)(image)` does the same for one BGR array.

--save-dataset also writes the people as pseudo-labels for training (SPIN's and EFT's way):
DIR/pseudo_labels.npz, a SPIN-style dataset (imgname: the image's absolute path, center and
scale from the crop box, part: the detected keypoints at least LABEL_SCORE confident, in
SPIN's 24-joint order), and DIR/pseudo_fits.npy (N, 82: the fitted pose and betas), the SPIN
loop's starting fits (`data.train: [{kind: spin, path: DIR/pseudo_labels.npz, images: /,
fits: DIR/pseudo_fits.npy}]`); people with fewer than MIN_LABELLED such keypoints are left out.
"""
from __future__ import annotations

import glob
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from hmr_fast.atomic import atomic_path
from hmr_fast.devices import cpu_threads, resolve_device, torch_threads

from ..frames import IMAGE_SUFFIXES
from ..pipeline import SHIPPED_CHECKPOINT
from ..predictor import Predictor
from ..writer import ParamsRecorder
from .detector import parse_tiles
from .stages import (ROW_FIELDS, START_CHOICES, PeopleFit, crop_boxes, detected_keypoints, draw_people,
                     frame_fit_settings, hmr_parameters, people_count, person_rows, scene, track_color)

REFINE_CAP = 200  # the most fit iterations per person (a photograph's fit runs to convergence)
BLOCK = 25  # iterations between convergence checks; the first block runs as a video frame's fit
TOLERANCE = 0.01  # a person whose objective improves by less than this (relative) over a block is done
LABEL_SCORE = 0.3  # detected keypoints at least this confident become pseudo-labels
MIN_LABELLED = 8  # people with fewer labelled keypoints are left out of the pseudo-labels
PHOTO_FIELDS = {"image": ((), np.str_), "person": ((), np.int64),
                **{k: v for k, v in ROW_FIELDS.items() if k not in ("box", "score")},
                "box": ((5,), np.float64), "start": ((), np.int64)}


class PeoplePhotos:
    """Every person in one photograph: `PeoplePhotos(...)(image_bgr) -> (rows, overlay)`,
    rows a list of dicts (PHOTO_FIELDS less image), the overlay a drawn copy of the image.

    checkpoint: an HMR checkpoint (default: the shipped one). refine: the most fit iterations
    per person (0: HMR alone). start: "auto" (per person the better of HMR's prediction and
    the learned start from keypoints), "hmr" or "learned". detector / predictor: ready-made
    ones (tests, or to share them); otherwise MoveNet with `tiles`, `min_score`,
    `detector_size` and `second_look` (each person looked at again alone: their keypoints from
    that look), and HMR on `device` with `backend` and `precision`."""

    def __init__(self, checkpoint=None, refine: int = REFINE_CAP, start: str = "auto", detector=None,
                 predictor=None, device=None, backend: str = "auto", precision: str = "auto",
                 min_score: float = 0.2, tiles="auto", detector_size: int = 256, mesh_faces: int = 0,
                 threads: Optional[int] = None, second_look: bool = True):
        if refine < 0:
            raise ValueError(f"--refine must be >= 0, got {refine}")
        if detector is None:
            from .detector import MoveNetMultiPose
            detector = MoveNetMultiPose(None, threads=threads, min_score=min_score, tiles=tiles,
                                        input_size=detector_size, photos=True, second_look=second_look)
        if predictor is None:
            predictor = Predictor(str(checkpoint or SHIPPED_CHECKPOINT), backend, device, precision, max_batch=32,
                                  with_vertices=False, threads=threads)
        self.detector, self.predictor, self.refine = detector, predictor, int(refine)
        self.poser, self.overlay = scene(predictor, mesh_faces)
        # the first block's settings are a video frame's (TrackFits): the same image gives
        # the same rows as the first frame of a video
        self.fit = PeopleFit(self.poser.smpl, frame_fit_settings(min(BLOCK, self.refine)), start)

    def __call__(self, image_bgr: np.ndarray, draw: bool = True) -> tuple:
        image = np.asarray(image_bgr)
        people = self.detector(image)
        overlay = image.copy() if draw else None
        if not people:
            return [], overlay
        boxes = crop_boxes(people)
        rot, betas, cam = hmr_parameters(self.predictor, [(image, boxes)])
        keypoints = detected_keypoints(people)
        fitted = self.fit.converge(keypoints, boxes, rot, betas, cam, cap=self.refine, block=BLOCK, tol=TOLERANCE)
        if draw:
            draw_people(overlay, self.poser, self.overlay, fitted.rot_mats, fitted.betas, fitted.cam, boxes,
                        [track_color(i) for i in range(len(people))])
        rows = person_rows(people, boxes, fitted.rot_mats, fitted.betas, fitted.cam, fitted.keypoints2d, fitted.loss)
        for i, (row, person) in enumerate(zip(rows, people)):
            del row["score"]
            row.update(person=i, box=np.append(np.asarray(person.box, np.float64), person.score),
                       start=int(fitted.start[i]))
        return rows, overlay


def image_paths(inputs) -> tuple:
    """(image files in order, warnings): files as given, folders' images sorted by name,
    globs expanded and sorted; a path that names nothing is a warning."""
    found, warnings = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
            found += matches
            if not matches:
                warnings.append(f"{item}: no file matches")
        else:
            warnings.append(f"{item}: no such file or folder")
    return found, warnings


@dataclass
class ImagesConfig:
    inputs: list
    out: str
    checkpoint: Optional[str] = None
    refine: int = REFINE_CAP
    start: str = "auto"
    detector: Optional[str] = None
    backend: str = "auto"
    device: Optional[str] = None
    precision: str = "auto"
    min_score: float = 0.2
    tiles: object = "auto"
    detector_size: int = 256
    second_look: bool = True
    mesh_faces: int = 0
    save_dataset: bool = False
    progress: bool = True
    warn: object = field(default=print, repr=False)


def run_images(cfg: ImagesConfig, photos: Optional[PeoplePhotos] = None) -> dict:
    """The command: every image of `cfg.inputs` -> DIR/<stem>.jpg and DIR/people.npz; returns
    a summary (images, unreadable, people, seconds, warnings)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    paths, warnings = image_paths(cfg.inputs)
    if not paths:
        raise FileNotFoundError(f"no images in {', '.join(map(str, cfg.inputs))} "
                                f"(files, folders or globs of {', '.join(sorted(IMAGE_SUFFIXES))})")
    for w in warnings:
        cfg.warn(f"warning: {w}")
    on_cpu = (photos.predictor.device if photos is not None else resolve_device(cfg.device)).type == "cpu"
    threads = cpu_threads() if on_cpu else None
    out.mkdir(parents=True, exist_ok=True)
    recorder = ParamsRecorder(out / "people.npz", PHOTO_FIELDS, option="--out")
    summary = {"images": 0, "unreadable": 0, "people": 0, "out": str(out), "warnings": warnings}
    t0 = time.perf_counter()
    with torch_threads(threads):
        if photos is None:
            photos = PeoplePhotos(cfg.checkpoint, cfg.refine, cfg.start, cfg.detector and _detector(cfg, threads),
                                  None, cfg.device, cfg.backend, cfg.precision, cfg.min_score, cfg.tiles,
                                  cfg.detector_size, cfg.mesh_faces, threads, cfg.second_look)
        stems: set = set()
        labelled: list = []  # (the image's path, its row), for --save-dataset
        try:
            for path in _progress(paths, cfg.progress):
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    summary["unreadable"] += 1
                    warning = f"{path}: unreadable, skipped (not an image OpenCV can decode)"
                    warnings.append(warning)
                    cfg.warn(f"warning: {warning}")
                    continue
                rows, overlay = photos(image)
                _write_jpeg(out / f"{_unique_stem(path.stem, stems)}.jpg", overlay)
                for row in rows:
                    recorder.add(image=path.name, **row)
                labelled += [(path, row) for row in rows]
                summary["images"] += 1
                summary["people"] += len(rows)
        finally:
            recorder.save(index_key="person")
            if cfg.save_dataset:
                summary["pseudo_labels"] = save_pseudo_labels(out, labelled)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["npz"] = str(out / "people.npz")
    return summary


def pseudo_labels(labelled) -> tuple:
    """(SPIN-style arrays, fits (N, 82)) from [(image path, row)]: see the module docstring."""
    from hmr_fast.data.keypoints import coco17_to_hmr19, hmr19_to_spin24

    names, centers, scales, parts, fits = [], [], [], [], []
    for path, row in labelled:
        coco = np.asarray(row["keypoints2d"], np.float64)
        seen = coco[:, 2] >= LABEL_SCORE
        if seen.sum() < MIN_LABELLED:
            continue
        names.append(str(Path(path).resolve()))
        centers.append(row["crop_box"][:2])
        scales.append(row["crop_box"][2] / 200.0)
        parts.append(hmr19_to_spin24(coco17_to_hmr19(np.c_[coco[:, :2], seen])))
        fits.append(np.concatenate([row["global_orient"], row["body_pose"], row["betas"]]))
    arrays = {"imgname": np.asarray(names, dtype=np.str_), "center": np.asarray(centers).reshape(-1, 2),
              "scale": np.asarray(scales).reshape(-1), "part": np.asarray(parts).reshape(-1, 24, 3)}
    return arrays, np.asarray(fits, np.float64).reshape(-1, 82)


def save_pseudo_labels(out: Path, labelled) -> int:
    """DIR/pseudo_labels.npz and DIR/pseudo_fits.npy, written atomically; returns the people kept."""
    arrays, fits = pseudo_labels(labelled)
    with atomic_path(out / "pseudo_labels.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    with atomic_path(out / "pseudo_fits.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, fits)
    return len(fits)


def _detector(cfg: ImagesConfig, threads):
    from .detector import MoveNetMultiPose
    return MoveNetMultiPose(cfg.detector, threads=threads, min_score=cfg.min_score, tiles=cfg.tiles,
                            input_size=cfg.detector_size, photos=True, second_look=cfg.second_look)


def _unique_stem(stem: str, used: set) -> str:
    """`stem`, or stem_2, stem_3, ... where two inputs share a name."""
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the overlay")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def _progress(paths, enabled: bool):
    if not enabled:
        return paths
    from tqdm import tqdm
    return tqdm(paths, unit="image", desc="images", dynamic_ncols=True)


# ----------------------------------------------------------------------------- the command
def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or globs")
    parser.add_argument("--out", required=True, help="the folder for <image stem>.jpg overlays and people.npz")
    parser.add_argument("--checkpoint", default=None, help="an HMR checkpoint (default: the shipped one)")
    parser.add_argument("--refine", type=int, default=REFINE_CAP,
                        help=f"the most fit iterations per person; each fit stops at convergence "
                             f"(default {REFINE_CAP}; 0: HMR alone)")
    parser.add_argument("--fit-start", default="auto", choices=START_CHOICES,
                        help="the fit's start: per person the better of HMR's and the learned one from the "
                             "keypoints (auto), or one of them")
    parser.add_argument("--detector", default=None, help="the path of MoveNet's weights (default: installed)")
    parser.add_argument("--min-score", type=float, default=0.2, help="leave out people the detector scores below this")
    parser.add_argument("--tiles", default="auto",
                        help="ROWS,COLS detector tiles besides the whole image, or auto (from the image size)")
    parser.add_argument("--detector-size", type=int, default=256, metavar="PX")
    parser.add_argument("--second-look", default="on", choices=("on", "off"),
                        help="look at each person found again alone, at the detector's full input, for their "
                             "keypoints (default on)")
    parser.add_argument("--mesh-faces", type=int, default=0, help="faces of the drawn mesh (0: the model's own)")
    parser.add_argument("--save-dataset", action="store_true",
                        help="also write DIR/pseudo_labels.npz (SPIN-style: the detected keypoints as labels) and "
                             "DIR/pseudo_fits.npy (the fits, the SPIN loop's starting fits) for hmr-fast train")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "compiled", "onnxruntime",
                                                              "tensorrt", "aoti"))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))


def run(args) -> int:
    try:
        summary = run_images(ImagesConfig(
            inputs=args.inputs, out=args.out, checkpoint=args.checkpoint, refine=args.refine, start=args.fit_start,
            detector=args.detector, backend=args.backend, device=args.device, precision=args.precision,
            min_score=args.min_score, tiles=parse_tiles(args.tiles), detector_size=args.detector_size,
            second_look=args.second_look == "on", mesh_faces=args.mesh_faces, save_dataset=args.save_dataset))
    except ValueError as exc:  # an option out of range
        print(f"hmr-fast images: {exc}", file=sys.stderr)
        return 2
    print(f"done: {summary['images']} images, {people_count(summary['people'])} in {summary['seconds']:.1f} s"
          + (f"; {summary['unreadable']} unreadable skipped" if summary["unreadable"] else "")
          + f"; wrote {summary['out']}/<image>.jpg and {summary['npz']}"
          + (f" and {summary['pseudo_labels']} pseudo-labelled people" if "pseudo_labels" in summary else ""))
    return 0
