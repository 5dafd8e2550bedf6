"""Frame sources decoded on a background thread: video files, image folders, webcams.

`open_source(input)` opens the input (raising FileNotFoundError / ValueError / RuntimeError
that names it when it cannot), and `FrameReader` iterates (index, frame) pairs, where
frames are (H, W, 3) uint8 BGR. A decoder thread fills a bounded queue, so decoding
overlaps inference and memory stays bounded; frames that fail to decode are skipped and
counted (`reader.skipped`; an image folder's files named in `reader.unreadable`), never
fatal. A video whose stream stops before the frame count its container declares (a
truncated file) sets `reader.ended_early` to (frames read, frames declared).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_FOLDER_FPS = 30.0
# A video stream that fails this many grabs in a row, before its announced length, is over.
_MAX_CONSECUTIVE_FAILURES = 25
UNREADABLE_NAMED = 5  # reports name the first few unreadable files of a folder, then give the count


@dataclass
class SourceInfo:
    name: str  # what the user passed, for messages
    kind: str  # "video", "folder" or "webcam"
    fps: float
    width: int  # of the first frame (folders: frames may differ; the video writer letterboxes)
    height: int
    frame_count: Optional[int]  # None when unknown (webcams, some streams)


class _Source:
    """Decoding without threads: next_frame() -> (ok, frame) or None at the end."""

    info: SourceInfo

    def next_frame(self):
        raise NotImplementedError

    def close(self) -> None:
        pass


class _VideoSource(_Source):
    def __init__(self, capture, name: str, kind: str, fps_override: Optional[float]):
        self.cap = capture
        ok, first = self.cap.read()
        if not ok or first is None:
            self.cap.release()
            raise RuntimeError(f"{name}: opened, but no frame could be decoded from it")
        fps = fps_override or self.cap.get(cv2.CAP_PROP_FPS)
        if not fps or not np.isfinite(fps) or fps <= 0 or fps > 1000:
            fps = DEFAULT_FOLDER_FPS
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.info = SourceInfo(name, kind, float(fps), first.shape[1], first.shape[0],
                               count if count > 0 and kind == "video" else None)
        self._pending = first
        self._index = 0
        self._failures = 0

    def next_frame(self):
        if self._pending is not None:
            frame, self._pending = self._pending, None
            self._index += 1
            return True, frame
        while True:
            ok = self.cap.grab()
            if ok:
                ok, frame = self.cap.retrieve()
                self._index += 1
                if ok and frame is not None:
                    self._failures = 0
                    return True, frame
                return False, None  # grabbed but not decodable: skip it
            self._failures += 1
            count = self.info.frame_count
            if count is None or self._index >= count or self._failures >= _MAX_CONSECUTIVE_FAILURES:
                return None
            self._index += 1  # a frame inside the stream that failed to grab: skipped
            return False, None

    def close(self) -> None:
        self.cap.release()


class _FolderSource(_Source):
    def __init__(self, folder: Path, fps: Optional[float]):
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        first = next((f for f in map(_read_image, self.files) if f is not None), None)
        if first is None:
            raise RuntimeError(f"{folder}: none of its {len(self.files)} images could be decoded")
        self.info = SourceInfo(str(folder), "folder", float(fps or DEFAULT_FOLDER_FPS), first.shape[1],
                               first.shape[0], len(self.files))
        self._next = 0
        self.unreadable: list = []  # the files that did not decode, in order

    def next_frame(self):
        if self._next >= len(self.files):
            return None
        path = self.files[self._next]
        frame = _read_image(path)
        self._next += 1
        if frame is None:
            self.unreadable.append(path)
        return (frame is not None), frame


def _read_image(path: Path) -> Optional[np.ndarray]:
    """BGR uint8, or None when the file does not decode (any channels / bit depth in)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (OSError, cv2.error):
        return None
    return image


def open_source(source, fps: Optional[float] = None) -> _Source:
    """A video file, a folder of images, or a webcam index ("0", 0)."""
    name = str(source)
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        cap = cv2.VideoCapture(int(source))
        if not cap.isOpened():
            raise RuntimeError(f"webcam {name}: cannot be opened (no such camera, or no permission)")
        return _VideoSource(cap, f"webcam {name}", "webcam", fps)
    path = Path(source)
    if path.is_dir():
        return _FolderSource(path, fps)
    if not path.exists():
        raise FileNotFoundError(f"input {name}: no such file or folder")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise RuntimeError(f"input {name}: cannot be opened as a video (not a video file, or a codec OpenCV's "
                           "FFmpeg lacks)")
    return _VideoSource(cap, name, "video", fps)


_END = object()


class FrameReader:
    """Iterate (index, frame) from a source, decoded on a background thread.

    index counts every frame of the source (skipped ones included), so it matches the
    input's own numbering; `skipped` counts frames that failed to decode (between decoded
    ones: a video that stops early has frames missing at its end, not skipped), and
    `unreadable` lists an image folder's files that did not decode. `ended_early` is
    (frames read, frames declared) when a video file's stream ended before the frame count
    its container declares, else None.
    max_frames: stop after this many decoded frames. close() (or leaving a `with` block)
    stops the thread.
    """

    def __init__(self, source, max_frames: Optional[int] = None, queue_size: int = 8, fps: Optional[float] = None):
        self.source = source if isinstance(source, _Source) else open_source(source, fps)
        self.info = self.source.info
        self.max_frames = max_frames
        self.skipped = 0
        self.ended_early: Optional[tuple] = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="hmr-fast-decoder", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    @property
    def unreadable(self) -> list:
        """An image folder's files that did not decode (so far), in order; [] for videos."""
        return list(getattr(self.source, "unreadable", []))

    def _stream_ended(self, index: int, read: int) -> None:
        """The source has no more frames after `index` positions, the last decoded being
        position read - 1: a video that declares more frames than that ended early."""
        declared = self.info.frame_count
        if self.info.kind == "video" and declared and read < declared:
            self.skipped -= index - read  # failed grabs after the last frame: the stream's end, not frames
            self.ended_early = (read, declared)

    def _run(self) -> None:
        index = decoded = read = 0
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and decoded >= self.max_frames:
                    break
                got = self.source.next_frame()
                if got is None:
                    self._stream_ended(index, read)
                    break
                ok, frame = got
                if ok:
                    frame = _as_bgr(frame)
                if not ok or frame is None:
                    self.skipped += 1
                else:
                    if not self._put((index, frame)):
                        break
                    decoded += 1
                    read = index + 1
                index += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._error = exc
        finally:
            self._put(_END)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise RuntimeError(f"{self.info.name}: decoding failed: {self._error}") from self._error
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_bgr(frame) -> Optional[np.ndarray]:
    """Any decoded frame as (H, W, 3) uint8 BGR (grey, BGRA, 16-bit frames converted)."""
    if frame is None or frame.size == 0:
        return None
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        return None
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    return None
