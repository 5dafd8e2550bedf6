"""Write files so that a reader, or a crash, never sees half of one."""
from __future__ import annotations

import os
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
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
