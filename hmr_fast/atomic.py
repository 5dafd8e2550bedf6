"""Write files so that a reader, or a crash, never sees half of one."""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temp path beside `path`; when the block ends cleanly it replaces `path`.

    The temp file is flushed to disk first, so an interrupted write leaves the previous
    file (a checkpoint, a model, an export) intact; on any error the temp file is removed.
    `suffix` is the temp file's extension, for writers that insist on one (np.savez: .npz).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are for the user's tools to read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def stale_temps(path, suffix: str = "") -> list:
    """The temp files `atomic_path(path, suffix)` leaves beside `path` when its process is
    killed mid-write (`.NAME.<random>.tmp<suffix>`), oldest name first; nothing else matches."""
    path = Path(path)
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"[A-Za-z0-9_]+" + re.escape(f".tmp{suffix}"))
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def remove_stale_temps(path, suffix: str = "") -> list:
    """Remove `stale_temps(path, suffix)`; returns the paths removed. Only for a file no other
    live process is writing (a run's own files, by the process that owns the run)."""
    removed = []
    for tmp in stale_temps(path, suffix):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        removed.append(tmp)
    return removed
