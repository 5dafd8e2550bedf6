"""Outputs of the video command that survive interruption: the overlay video and the npz.

`VideoSink` encodes on a background thread into OUT's temporary name (OUT.partial.mp4:
the extension tells FFmpeg the container) and `close()` finalises the container and
renames it to OUT. close() runs from a `finally`, so Ctrl-C or SIGTERM still leaves a
playable OUT with the frames done; only a hard kill can leave the .partial file behind.
`ParamsRecorder` collects per-frame parameters and writes the npz atomically (temp file,
then rename): an old file is replaced only by a complete new one.
"""
from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from hmr_fast.atomic import atomic_path

FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


def partial_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def letterbox(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """`frame` scaled to fit (width, height) without distortion, centred on black."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    scale = min(width / w, height / h)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((height, width, 3), np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    canvas[y:y + nh, x:x + nw] = resized
    return canvas


class VideoSink:
    """Frames in, OUT written on close(); see the module docstring. Sizes are rounded up to
    even numbers (MPEG-4 needs them); other frame sizes are letterboxed into the first one's."""

    def __init__(self, out_path, fps: float, width: int, height: int, queue_size: int = 8):
        self.out = Path(out_path)
        suffix = self.out.suffix.lower()
        if suffix not in FOURCCS:
            raise ValueError(f"--out {self.out}: the video must end in one of {', '.join(FOURCCS)}")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.partial = partial_path(self.out)
        self.width, self.height = width + width % 2, height + height % 2
        self.writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*FOURCCS[suffix]), float(fps),
                                      (self.width, self.height))
        if not self.writer.isOpened():
            raise RuntimeError(f"--out {self.out}: OpenCV cannot write {FOURCCS[suffix]} video there")
        self.frames = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="hmr-fast-encoder", daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            try:
                self.writer.write(frame)
                self.frames += 1
            except BaseException as exc:  # noqa: BLE001 - re-raised in write()/close()
                self._error = exc

    def write(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing {self.out} failed: {self._error}") from self._error
        self._queue.put(np.ascontiguousarray(letterbox(frame, self.width, self.height)))

    def close(self) -> int:
        """Finish the file and move it to OUT (frames written so far); returns the frame count."""
        if self._closed:
            return self.frames
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self.writer.release()
        if self.frames:
            os.replace(self.partial, self.out)
        elif self.partial.exists():
            self.partial.unlink()
        if self._error is not None:
            raise RuntimeError(f"writing {self.out} failed: {self._error}") from self._error
        return self.frames


class ParamsRecorder:
    """Per-frame arrays, saved as one npz (keys: see `save`). fields: {key: (row shape,
    dtype)} of every key the rows have, so that a file with no rows still has each key."""

    def __init__(self, path, fields: Optional[dict] = None, option: str = "--save-params"):
        self.path = Path(path)
        if self.path.suffix != ".npz":
            raise ValueError(f"{option} {self.path}: must end in .npz")
        self.fields = fields or {}
        self.rows: dict = {}

    def add(self, **arrays) -> None:
        for key, value in arrays.items():
            self.rows.setdefault(key, []).append(np.asarray(value))

    def __len__(self) -> int:
        return len(next(iter(self.rows.values()), []))

    def save(self, index_key: str = "frame_index", **meta) -> Path:
        arrays = {k: np.stack(v) for k, v in self.rows.items() if v}
        for key, (shape, dtype) in self.fields.items():  # present even when no row was added
            arrays.setdefault(key, np.zeros((0, *shape), dtype))
        arrays.setdefault(index_key, np.zeros(0, dtype=np.int64))  # present even when no frame was done
        for key, value in meta.items():
            arrays[key] = np.asarray(value)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return self.path
