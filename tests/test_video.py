"""The video pipeline: inputs of every kind, skipped frames, interruption, outputs; tracking,
rasterisation and the demo."""
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest
import torch

from hmr_fast.infer import Predictor
from hmr_fast.infer.frames import FrameReader, open_source
from random_checkpoint import make_checkpoint
from hmr_fast.infer.tracking import KeypointTracker, MotionDetector, box_iou, pick_detection
from hmr_fast.infer.pipeline import StopSignals
from hmr_fast.infer.video import VideoConfig, run_video
from hmr_fast.infer.writer import VideoSink, letterbox, partial_path

S = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", img_size=S, seed=2)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(checkpoint, "torch", "cpu", max_batch=4)


def _frames(n, w, h, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = np.full((h, w, 3), 50, np.uint8)
        cv2.rectangle(f, (w // 3 + i, h // 5), (w // 2 + i, 4 * h // 5), tuple(int(c) for c in rng.integers(0, 255, 3)),
                      -1)
        out.append(f)
    return out


def _write_video(path, frames, fps):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def _video_info(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    info = (n, cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return info


def test_video_file_odd_size_and_frame_rate(tmp_path, predictor, checkpoint):
    src = _write_video(tmp_path / "in.mp4", _frames(10, 99, 75), fps=24)
    cfg = VideoConfig(input=str(src), checkpoint=checkpoint, out=str(tmp_path / "o" / "out.mp4"),
                      save_params=str(tmp_path / "o" / "p.npz"), batch=3, progress=False)
    summary = run_video(cfg, predictor, log=lambda *a: None)
    assert summary["frames"] == 10 and not summary["interrupted"] and summary["skipped_frames"] == 0
    n_in, _, w_in, h_in = _video_info(src)  # (OpenCV's own writer crops odd sizes to even)
    n, fps, w, h = _video_info(tmp_path / "o" / "out.mp4")
    assert (n, w, h) == (10, w_in, h_in) and abs(fps - 24) < 0.01  # the input's size and frame rate
    p = np.load(tmp_path / "o" / "p.npz")
    assert p["frame_index"].tolist() == list(range(10)) and p["pose"].shape == (10, 72)
    assert p["keypoints2d"].shape == (10, 19, 2) and p["boxes_xyxy"].shape == (10, 4)
    assert p["joint_set"] == "hmr19" and not p["interrupted"] and float(p["fps"]) == pytest.approx(24)
    assert sorted(os.listdir(tmp_path / "o")) == ["out.mp4", "p.npz"]  # no temporary files left


def test_image_folder_skips_unreadable_frames(tmp_path, predictor, checkpoint):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(_frames(6, 81, 65)):  # odd sizes
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    (folder / "002.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    cfg = VideoConfig(input=str(folder), checkpoint=checkpoint, out=str(tmp_path / "out.mp4"),
                      save_params=str(tmp_path / "p.npz"), progress=False)
    summary = run_video(cfg, predictor, log=lambda *a: None)
    assert summary["frames"] == 5 and summary["skipped_frames"] == 1
    p = np.load(tmp_path / "p.npz")
    assert p["frame_index"].tolist() == [0, 1, 3, 4, 5] and int(p["skipped_frames"]) == 1
    n, fps, w, h = _video_info(tmp_path / "out.mp4")
    assert (n, w, h) == (5, 82, 66) and abs(fps - 30) < 0.01  # padded to even sizes (MPEG-4), 30 fps


def test_inputs_that_cannot_be_opened_name_themselves(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        open_source(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(RuntimeError, match="bad.mp4"):
        open_source(str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        open_source(str(empty))


def test_cli_reports_bad_input(tmp_path, checkpoint, capsys):
    from hmr_fast.cli import main

    code = main(["video", str(tmp_path / "missing.mp4"), "--checkpoint", checkpoint, "--out", str(tmp_path / "o.mp4")])
    assert code == 2 and "missing.mp4" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_interrupted_run_keeps_the_frames_done(tmp_path, checkpoint):
    src = _write_video(tmp_path / "in.mp4", _frames(12, 96, 64), fps=30)
    predictor = Predictor(checkpoint, "torch", "cpu", max_batch=2)
    real = predictor.run_batches
    calls = {"n": 0}

    def flaky(crops):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(crops)

    predictor.run_batches = flaky
    cfg = VideoConfig(input=str(src), checkpoint=checkpoint, out=str(tmp_path / "out.mp4"),
                      save_params=str(tmp_path / "p.npz"), batch=2, progress=False)
    summary = run_video(cfg, predictor, log=lambda *a: None)
    assert summary["interrupted"] and summary["frames"] == 6
    assert _video_info(tmp_path / "out.mp4")[0] == 6  # playable, with the frames done
    p = np.load(tmp_path / "p.npz")
    assert bool(p["interrupted"]) and len(p["frame_index"]) == 6
    assert not partial_path(tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_waits_until_the_frame_is_written_and_recorded(signum):
    """A signal between writing a frame to the video and recording its row would leave the
    video one frame longer than the npz: inside frame() it waits for the frame's end."""
    stop = StopSignals()
    done = []
    with stop.installed():
        with pytest.raises(KeyboardInterrupt):
            with stop.frame():
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # Python runs the handler here, between bytecodes
                done.append("written")
                done.append("recorded")
        assert done == ["written", "recorded"]
        with pytest.raises(KeyboardInterrupt):  # between frames it stops at once
            os.kill(os.getpid(), signum)
            time.sleep(0.05)
            done.append("after")
    assert done == ["written", "recorded"]
    assert signal.getsignal(signal.SIGTERM) is not stop.handler  # put back


def test_sigterm_leaves_playable_outputs(tmp_path, checkpoint):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(_frames(400, 64, 64)):
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), f)
    out, params = tmp_path / "out.mp4", tmp_path / "p.npz"
    proc = subprocess.Popen([sys.executable, "-m", "hmr_fast.cli", "video", str(folder), "--checkpoint", checkpoint,
                             "--out", str(out), "--save-params", str(params), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()
    reader = threading.Thread(target=lambda: [err.extend(c) for c in iter(lambda: os.read(proc.stderr.fileno(), 4096),
                                                                           b"")], daemon=True)
    reader.start()
    deadline = time.time() + 120

    def frames_done():  # the progress bar's count
        counts = re.findall(rb"(\d+)/400", bytes(err))
        return int(counts[-1]) if counts else 0

    while time.time() < deadline and frames_done() < 5 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=60)
    reader.join(timeout=5)
    assert proc.returncode == 130, bytes(err)[-2000:]
    assert "interrupted after" in stdout
    frames_done = len(np.load(params)["frame_index"])
    assert 0 < frames_done < 400 and bool(np.load(params)["interrupted"])
    assert _video_info(out)[0] == frames_done


# ------------------------------------------------------------------------------- pieces
def test_tracker_follows_keypoints_and_falls_back_when_lost():
    tracker = KeypointTracker((200, 300), start="centre", expand=1.5)  # (default 1.6)
    assert np.allclose(tracker.box(), [149.5, 99.5, 160])
    crop_box = np.array([150.0, 100.0, 100.0])
    kp = np.array([[-0.5, -0.8], [0.3, 0.8], [0.0, 0.0]] + [[0.1, 0.1]] * 7)
    assert tracker.update(kp, crop_box, 0.0)
    # keypoints span 80 px (x 125..165, y 60..140): the box moves there at once, but shrinks
    # by at most 15% a frame (one bad prediction cannot collapse the crop) ...
    assert np.allclose(tracker.box(), [145, 100, 0.85 * 160])
    for i in range(1, 40):  # ... and settles on 1.5x the keypoints' extent
        assert tracker.update(kp, crop_box, i / 30)
    assert np.allclose(tracker.box(), [145, 100, 120], atol=1.0)
    outside = np.full((10, 2), 3.0)  # nothing inside the crop: lost
    assert not tracker.update(outside, crop_box, 41 / 30)
    assert np.allclose(tracker.box(), [149.5, 99.5, 160]) and tracker.lost_frames == 1
    tiny = np.full((10, 2), 0.01)  # a body a few pixels tall: lost
    assert not tracker.update(tiny, crop_box, 42 / 30)
    tracker.follow([60, 50, 40], 43 / 30)  # a detection far away: a jump, not a smoothed slide
    assert np.allclose(tracker.box(), [60, 50, 40]) and tracker.tracking


def test_detection_choice_prefers_overlap_then_size():
    dets = np.array([[0, 0, 10, 20, 0.9], [100, 100, 180, 260, 0.8]])
    assert np.allclose(pick_detection(dets), [140, 180, 160])
    assert np.allclose(pick_detection(dets, previous=[5, 10, 20]), [5, 10, 20])
    assert pick_detection(np.zeros((0, 5))) is None
    assert box_iou([0, 0, 10], [0, 0, 10]) == pytest.approx(1.0)


def test_motion_detector_finds_a_moving_person_shape():
    det = MotionDetector()
    frame = np.full((120, 160, 3), 90, np.uint8)
    for _ in range(20):
        det(frame)
    moved = frame.copy()
    cv2.rectangle(moved, (60, 20), (90, 100), (20, 200, 20), -1)
    boxes = det(moved)
    assert len(boxes) >= 1
    x1, y1, x2, y2 = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), :4]
    assert abs((x1 + x2) / 2 - 75) < 10 and abs((y1 + y2) / 2 - 60) < 12


def test_torch_rasterizer_agrees_with_opencv():
    from hmr_fast.body import SMPL
    from hmr_fast.infer.overlay import TorchRasterizer
    from hmr_fast.infer.predictor import vertices_to_pixels
    from hmr_fast.render import render_mesh

    smpl = SMPL()
    pose = torch.zeros(1, 72)
    pose[0, 0] = np.pi
    with torch.no_grad():
        v = smpl(global_orient=pose[:, :3], body_pose=pose[:, 3:]).vertices[0].numpy()
    vp = vertices_to_pixels(v[None], np.array([[0.9, 0.0, 0.1]]), np.array([[160.0, 120.0, 220.0]]))[0]
    a = np.full((240, 320, 3), 30, np.uint8)
    b = a.copy()
    render_mesh(a, vp, smpl.faces)
    TorchRasterizer(smpl.faces, "cpu")(torch.from_numpy(b), torch.from_numpy(vp).float())
    ma, mb = (a != 30).any(2), (b != 30).any(2)
    # the silhouettes agree to within a pixel (OpenCV also fills pixels the edges only touch)
    grow = lambda m: cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # noqa: E731
    assert ma.sum() > 3000
    assert (mb & ~grow(ma)).sum() < 0.005 * mb.sum() and (ma & ~grow(mb)).sum() < 0.005 * ma.sum()
    both = ma & mb
    assert np.abs(a[both].astype(int) - b[both]).mean() < 12


def test_torch_rasterizer_draws_a_crowd_in_one_call_as_one_by_one():
    """Meshes listed far to near in one call: exactly what drawing them one at a time, far
    first, gives (a nearer body covers a farther one wherever they overlap, whatever their
    own depths), and each one's silhouette is OpenCV's."""
    from hmr_fast.body import SMPL
    from hmr_fast.infer.overlay import TorchRasterizer
    from hmr_fast.render import mesh_mask

    smpl = SMPL()
    rng = np.random.default_rng(7)
    pose = torch.as_tensor(rng.normal(0, 0.2, (5, 72)), dtype=torch.float32)
    pose[:, 0] = np.pi
    with torch.no_grad():
        v = smpl(global_orient=pose[:, :3], body_pose=pose[:, 3:]).vertices.numpy()
    scale = rng.uniform(60, 140, 5)
    shift = np.c_[rng.uniform(40, 280, 5), rng.uniform(80, 160, 5), -rng.uniform(0, 50, 5)]  # overlapping
    vp = torch.as_tensor(v * scale[:, None, None] + shift[:, None], dtype=torch.float32)
    colors = [tuple(int(c) for c in rng.integers(40, 255, 3)) for _ in range(5)]
    raster = TorchRasterizer(smpl.faces, "cpu")
    together = raster.draw(torch.full((240, 320, 3), 30, dtype=torch.uint8), vp, colors)
    one_by_one = torch.full((240, 320, 3), 30, dtype=torch.uint8)
    for mesh, color in zip(vp, colors):
        raster(one_by_one, mesh, color)
    assert torch.equal(together, one_by_one)
    drawn = (together != 30).any(-1).numpy()
    union = np.any([mesh_mask((240, 320), m.numpy(), smpl.faces) for m in vp], 0)
    grow = lambda m: cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # noqa: E731
    # to within a pixel (OpenCV also fills pixels the edges only touch)
    assert union.sum() > 5000
    assert (drawn & ~grow(union)).sum() < 0.005 * drawn.sum() and (union & ~grow(drawn)).sum() < 0.005 * union.sum()
    alone = raster(torch.zeros((240, 320, 3), dtype=torch.uint8), vp[-1], colors[-1])  # the nearest one
    mine = (alone != 0).any(-1)
    assert mine.sum() > 1000 and torch.equal(together[mine], alone[mine])  # nothing covers it


def test_sink_letterboxes_other_sizes_and_cleans_up(tmp_path):
    sink = VideoSink(tmp_path / "v.mp4", 10, 64, 48)
    sink.write(np.full((48, 64, 3), 200, np.uint8))
    sink.write(np.full((100, 50, 3), 200, np.uint8))  # another size: letterboxed
    assert sink.close() == 2 and not partial_path(tmp_path / "v.mp4").exists()
    assert _video_info(tmp_path / "v.mp4")[0] == 2
    boxed = letterbox(np.full((100, 50, 3), 255, np.uint8), 64, 48)
    assert boxed.shape == (48, 64, 3) and boxed[:, :5].max() == 0 and boxed[:, 32].min() == 255
    with pytest.raises(ValueError, match="must end in"):
        VideoSink(tmp_path / "v.gif", 10, 64, 48)


def test_reader_stops_early_and_counts(tmp_path):
    src = _write_video(tmp_path / "in.mp4", _frames(8, 64, 48), fps=15)
    with FrameReader(str(src), max_frames=3) as reader:
        got = [i for i, _ in reader]
        assert got == [0, 1, 2] and reader.info.fps == pytest.approx(15) and reader.info.frame_count == 8


def test_demo_end_to_end(tmp_path, checkpoint):
    from hmr_fast.infer.demo import run_demo

    result = run_demo(tmp_path / "demo", checkpoint, num_frames=8, width=128, height=96, log=lambda *a: None)
    acc, video = result["accuracy"], result["video"]
    assert acc["frames"] == 8 and np.isfinite(acc["mpjpe_mm"]) and acc["mpjpe_mm"] >= acc["pa_mpjpe_mm"] > 0
    assert video["frames"] == 8 and video["fps"] > 0
    for name in ("clip.mp4", "clip_gt.npz", "overlay.mp4", "params.npz", "demo.json"):
        assert (tmp_path / "demo" / name).is_file(), name
    with pytest.raises(FileNotFoundError, match="demo checkpoint"):
        run_demo(tmp_path / "x", Path(tmp_path / "none.pt"), num_frames=2, log=lambda *a: None)


# ------------------------------------------------------------------ inputs that stop short
def _boxes(data: bytes, start: int = 0, end: Optional[int] = None):
    """(offset, size, type) of the MP4 boxes in data[start:end] (one level)."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        size = end - start if size == 0 else size
        yield start, size, kind
        start += size


def _faststart(data: bytes) -> bytes:
    """An OpenCV mp4 (ftyp free mdat moov) with its index first (ftyp moov free mdat), as
    players' 'faststart' files are: a cut copy still opens and declares all its frames."""
    top = {kind: (off, size) for off, size, kind in _boxes(data)}
    moov = bytearray(data[slice(top[b"moov"][0], sum(top[b"moov"]))])
    shift = len(moov)

    def patch(start, end):  # chunk offsets (stco) move by the moov's size
        for off, size, kind in _boxes(moov, start, end):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                patch(off + 8, off + size)
            elif kind == b"stco":
                (n,) = struct.unpack(">I", moov[off + 12:off + 16])
                for k in range(n):
                    at = off + 16 + 4 * k
                    moov[at:at + 4] = struct.pack(">I", struct.unpack(">I", moov[at:at + 4])[0] + shift)
            elif kind == b"co64":
                raise AssertionError("co64 offsets: not needed for these small files")

    patch(8, len(moov))
    ftyp_end = sum(top[b"ftyp"])
    return data[:ftyp_end] + bytes(moov) + data[ftyp_end:top[b"moov"][0]]


def _truncated_video(tmp_path, n=40, keep=0.5):
    full = _write_video(tmp_path / "full.mp4", _frames(n, 96, 64, seed=3), fps=25)
    data = _faststart(full.read_bytes())
    (tmp_path / "fast.mp4").write_bytes(data)
    assert _video_info(tmp_path / "fast.mp4")[0] == n  # the rewrite itself is sound
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * keep)])
    return cut


def test_truncated_video_says_it_ended_early(tmp_path, predictor, checkpoint, capsys):
    from hmr_fast.infer.video import _report

    cut = _truncated_video(tmp_path, n=40)
    with FrameReader(str(cut)) as reader:
        got = [i for i, _ in reader]
    assert reader.info.frame_count == 40 and 0 < len(got) < 40 and got == list(range(len(got)))
    assert reader.ended_early == (len(got), 40) and reader.skipped == 0  # the missing end is not "skipped"

    cfg = VideoConfig(input=str(cut), checkpoint=checkpoint, out=str(tmp_path / "out.mp4"), progress=False)
    summary = run_video(cfg, predictor, log=lambda *a: None)
    n = summary["frames"]
    assert n == len(got) and summary["ended_early"] == {"read": n, "declared": 40}
    assert summary["skipped_frames"] == 0
    message = f"input ended early: read {n} of the 40 frames the file declares"
    assert any(message in w for w in summary["warnings"])
    capsys.readouterr()
    _report(summary)
    printed = capsys.readouterr().out
    assert f"done: {n} frames" in printed and message in printed

    # a whole file, or one stopped by --max-frames, did not end early
    with FrameReader(str(tmp_path / "fast.mp4")) as reader:
        assert len(list(reader)) == 40 and reader.ended_early is None
    with FrameReader(str(cut), max_frames=3) as reader:
        assert len(list(reader)) == 3 and reader.ended_early is None


def test_image_folder_names_its_unreadable_files(tmp_path, predictor, checkpoint, capsys):
    from hmr_fast.infer.video import _report

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(_frames(5, 64, 48)):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), f)
    (folder / "003.jpg").write_bytes(b"\xff\xd8\xff\xe0 a corrupt jpeg")
    cfg = VideoConfig(input=str(folder), checkpoint=checkpoint, out=str(tmp_path / "out.mp4"), progress=False)
    summary = run_video(cfg, predictor, log=lambda *a: None)
    assert summary["frames"] == 4 and summary["skipped_frames"] == 1
    assert summary["unreadable_files"] == ["003.jpg"] and summary["unreadable_count"] == 1
    assert "ended_early" not in summary
    capsys.readouterr()
    _report(summary)
    printed = capsys.readouterr().out
    assert "003.jpg" in printed and "1 unreadable" in printed

    for i in (0, 1, 2, 4):  # many: the first few named, and the count
        (folder / f"{i:03d}.jpg").write_bytes(b"junk")
    for i in range(5, 12):
        (folder / f"{i:03d}.jpg").write_bytes(b"junk")
    cv2.imwrite(str(folder / "100.jpg"), _frames(1, 64, 48)[0])
    with FrameReader(str(folder)) as reader:
        assert len(list(reader)) == 1
    assert [p.name for p in reader.unreadable] == [f"{i:03d}.jpg" for i in range(12)]
    summary = run_video(VideoConfig(input=str(folder), checkpoint=checkpoint, out=str(tmp_path / "o2.mp4"),
                                    progress=False), predictor, log=lambda *a: None)
    assert summary["unreadable_count"] == 12 and summary["unreadable_files"] == ["000.jpg", "001.jpg", "002.jpg",
                                                                                  "003.jpg", "004.jpg"]
    assert any(w.startswith("12 unreadable") and w.endswith("004.jpg and 7 more") for w in summary["warnings"])
