"""Unreadable checkpoints and exported files: one CheckpointError line naming the file.

Each case - random bytes, a truncated archive, a pickle asking for os.system, another
program's file, a config or weights that do not fit, an .onnx / .pt2 / engine sidecar that
is not what its suffix says - must raise hmr_fast.errors.CheckpointError whose message names
the file, says what was found, and never tells the user to load with weights_only=False.
A missing file stays FileNotFoundError. The command line prints either as one line, exit 2.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
import torch
from random_checkpoint import make_checkpoint

from hmr_fast.errors import CheckpointError, HmrFastError
from hmr_fast.model.artefact import EXPORT_FORMAT, parse_metadata, read_sidecar
from hmr_fast.model.checkpoint import FORMAT, load_checkpoint, load_weights, pack_checkpoint, read_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "real.pt")


@pytest.fixture(scope="module")
def raw(checkpoint):
    return torch.load(checkpoint, weights_only=True)


def refused(call, path, *patterns):
    """call() raises CheckpointError, one line, naming `path` and each pattern, no unsafe advice."""
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, (HmrFastError, ValueError))
    assert str(path) in message, message
    assert "\n" not in message, message
    assert "weights_only" not in message and "safe_globals" not in message, message
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"
    return message


class Evil:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# read_checkpoint / load_checkpoint: what is in the file
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, found", [
    (random.Random(4000).randbytes(4000), "unknown bytes"),
    (b"", "empty (0 bytes)"),
    (b"model: resnet18\nsteps: 10\n", "a text file"),
    (pickle.dumps({"format": FORMAT, "config": {}, "model": {}}, protocol=2), "a bare pickle"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}", "a numpy .npy array"),
])
def test_files_that_are_not_zip_archives(tmp_path, content, found):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    for load in (read_checkpoint, load_checkpoint):
        refused(lambda: load(path), path, found, "not a zip archive", "nothing in it was loaded")


def test_truncated_checkpoint(tmp_path, checkpoint):
    data = open(checkpoint, "rb").read()
    for cut in (100, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        refused(lambda: load_checkpoint(path), path, "truncated or damaged zip archive")


def _member_span(data: bytes, name_suffix: str):
    """(zip info, offset of its first byte) of the stored member whose name ends with name_suffix."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(next(n for n in archive.namelist() if n.endswith(name_suffix)))
    assert info.compress_type == zipfile.ZIP_STORED
    extra = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    return info, info.header_offset + 30 + len(info.filename) + extra


def _overwrite(data: bytes, name_suffix: str, offset: int, new: bytes, fix_crc: bool) -> bytes:
    """The archive with `new` written over the member's bytes from `offset` on. fix_crc=False is
    damage on disk (the member's CRC-32 no longer matches); fix_crc=True rewrites the CRC-32 in the
    local header and the central directory, as a program that wrote a bad member would."""
    out = bytearray(data)
    info, start = _member_span(data, name_suffix)
    out[start + offset:start + offset + len(new)] = new
    if fix_crc:
        crc = zlib.crc32(out[start:start + info.file_size]).to_bytes(4, "little")
        out[info.header_offset + 14:info.header_offset + 18] = crc
        central = out.index(b"PK\x01\x02")  # the central directory's entry of this member
        while out[central + 46:central + 46 + len(info.filename)] != info.filename.encode():
            central = out.index(b"PK\x01\x02", central + 4)
        out[central + 16:central + 20] = crc
    return bytes(out)


@pytest.fixture(scope="module")
def small_archive(raw):
    """A checkpoint with the real config and three of its weights (small: each case writes a copy)."""
    return _torch_bytes({**raw, "model": dict(list(raw["model"].items())[:3])})


# The bytes written over the first 64 of data.pkl, and what the unpickler makes of each when the
# member's checksum matches them. Damage on disk (checksum left as it was) is caught before any
# unpickling, by the member's CRC-32, whatever the bytes.
DAMAGE = {
    "zeros": (bytes(64), "(Unsupported operand 0)"),
    "0xff": (b"\xff" * 64, "(Unsupported operand 255)"),
    "random.Random(2)": (random.Random(2).randbytes(64), "(IndexError: pop from empty list)"),
    "random.Random(61)": (random.Random(61).randbytes(64), "(IndexError: list index out of range)"),
    "random.Random(0)": (random.Random(0).randbytes(64), "(Unsupported operand 205)"),
}
SEEDS = range(40)  # more random bytes, from fixed seeds: each must name data.pkl


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_member_of_the_archive(tmp_path, small_archive, case):
    new, found = DAMAGE[case]
    path = tmp_path / "damaged.pt"
    path.write_bytes(_overwrite(small_archive, "/data.pkl", 0, new, fix_crc=False))
    refused(lambda: read_checkpoint(path), path, "its member archive/data.pkl is damaged",
            "Bad CRC-32 for file 'archive/data.pkl'", "nothing from the file ran")
    path.write_bytes(_overwrite(small_archive, "/data.pkl", 0, new, fix_crc=True))
    refused(lambda: read_checkpoint(path), path, "its pickle (data.pkl) cannot be read", found,
            "nothing from the file ran")


def test_damaged_member_from_many_seeds(tmp_path, small_archive):
    path = tmp_path / "damaged.pt"
    for seed in SEEDS:
        for fix_crc in (False, True):
            path.write_bytes(_overwrite(small_archive, "/data.pkl", 0, random.Random(seed).randbytes(64), fix_crc))
            message = refused(lambda: read_checkpoint(path), path, "data.pkl", "nothing from the file ran")
            assert ("Bad CRC-32" in message) != fix_crc, (seed, fix_crc, message)


def test_damaged_tensor_record_is_named(tmp_path, small_archive):
    """A storage record whose local header is damaged: torch's reader fails on it, and the
    message names that record (the pickle itself is intact)."""
    info, start = _member_span(small_archive, "/data/0")
    data = bytearray(small_archive)
    data[info.header_offset:info.header_offset + 4] = b"XXXX"  # its local header's signature
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    refused(lambda: read_checkpoint(path), path, "its member data/0 cannot be read")


def test_zip_archive_of_another_program(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("word/document.xml", "<w/>")
    refused(lambda: read_checkpoint(path), path, "no data.pkl", "word/document.xml")
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    refused(lambda: read_checkpoint(tmp_path / "arrays.npz"), tmp_path / "arrays.npz", "no data.pkl", "a.npy")


@pytest.mark.parametrize("form", ["torch.save", "bare pickle"])
def test_pickle_asking_for_os_system_is_refused_and_nothing_runs(tmp_path, form):
    sentinel = tmp_path / "SENTINEL"
    payload = {"format": FORMAT, "config": {"model": {}}, "model": {}, "x": Evil(sentinel)}
    path = tmp_path / "evil.pt"
    path.write_bytes(_torch_bytes(payload) if form == "torch.save" else pickle.dumps(payload, protocol=4))
    if form == "torch.save":
        message = refused(lambda: load_checkpoint(path), path, "asks for the global", "system", "refused",
                          "nothing from the file ran")
    else:
        message = refused(lambda: load_checkpoint(path), path, "a bare pickle that asks for", "system")
    assert not sentinel.exists(), message


def test_torch_files_that_are_not_our_checkpoints(tmp_path, raw):
    cases = {
        "list": ([1, 2], "it holds a list"),
        "state_dict": ({"state_dict": {}}, "not an hmr_fast checkpoint: format None"),
        "no model": ({"format": FORMAT, "config": raw["config"]}, "missing key 'model'"),
        "no config": ({"format": FORMAT, "model": raw["model"]}, "missing key 'config'"),
        "config list": ({**raw, "config": [1]}, "config is a list"),
        "no model section": ({**raw, "config": {"train": {}}}, "config has no model section"),
        "model section int": ({**raw, "config": {"model": 3}}, "config['model'] is an int"),
        "no backbone": ({**raw, "config": {"model": {k: v for k, v in raw["config"]["model"].items()
                                                     if k != "backbone"}}},
                        "config['model']['backbone'] is missing"),
        "img_size str": ({**raw, "config": {"model": {**raw["config"]["model"], "img_size": "64"}}},
                         "config['model']['img_size'] is '64'; expected an int"),
        "weights list": ({**raw, "model": [1]}, "'model' is a list; expected a dict of weight tensors"),
        "weight str": ({**raw, "model": {**raw["model"], "extra": "x"}}, "entry 'extra' holding a str"),
    }
    for name, (payload, found) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        torch.save(payload, path)
        refused(lambda: load_checkpoint(path), path, found)


def test_config_that_does_not_build_a_model(tmp_path, raw):
    path = tmp_path / "bad_backbone.pt"
    torch.save({**raw, "config": {"model": {**raw["config"]["model"], "backbone": "resnet19"}}}, path)
    refused(lambda: load_checkpoint(path), path, "config['model'] does not build a model", "resnet19")


def test_weights_from_another_architecture(tmp_path, raw):
    path = tmp_path / "resnet34_config.pt"
    torch.save({**raw, "config": {"model": {**raw["config"]["model"], "backbone": "resnet34"}}}, path)
    refused(lambda: load_checkpoint(path), path, "weights do not fit the model", "missing ['encoder.", "and ",
            "from another architecture")
    key = next(k for k, v in raw["model"].items() if v.ndim == 2)
    torch.save({**raw, "model": {**raw["model"], key: raw["model"][key][:, :1]}}, path)
    refused(lambda: load_checkpoint(path), path, f"other shapes ['{key}']", "(file vs model)")
    torch.save({**raw, "model": {**raw["model"], key: raw["model"][key].long()}}, path)
    refused(lambda: load_checkpoint(path), path, f"other dtypes ['{key}']")


def test_load_weights_refuses_non_tensors(raw, checkpoint):
    model, _ = load_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="somewhere.pt.*entry 'x' holding a list"):
        load_weights(model, {**raw["model"], "x": [1]}, "somewhere.pt", skip_prefix="smpl.")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt not found"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    refused(lambda: read_checkpoint(tmp_path), tmp_path, "is a folder")


def test_pack_checkpoint_refuses_bad_files(tmp_path, checkpoint):
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(2000).randbytes(2000))
    refused(lambda: pack_checkpoint(path, tmp_path / "packed.pt"), path, "not a zip archive")
    assert not (tmp_path / "packed.pt").exists()
    # A checkpoint without "step" packs (step 0) and the packed file loads.
    raw = torch.load(checkpoint, weights_only=True)
    torch.save({k: v for k, v in raw.items() if k != "step"}, tmp_path / "nostep.pt")
    packed = pack_checkpoint(tmp_path / "nostep.pt", tmp_path / "packed.pt")
    assert read_checkpoint(packed)["step"] == 0


def test_model_init_and_resume_name_the_file(tmp_path):
    # training's model.init turns CheckpointError (a ValueError) into a one-line ConfigError
    pytest.importorskip("hmr_fast.training.train")
    from hmr_fast.training.config import ConfigError
    from hmr_fast.training.train import Trainer

    bad = tmp_path / "init.pt"
    bad.write_bytes(random.Random(3000).randbytes(3000))
    trainer = Trainer.__new__(Trainer)
    with pytest.raises(ConfigError) as info:
        Trainer._init_weights(trainer, bad)
    message = str(info.value)
    assert message.startswith("model.init:") and str(bad) in message and "weights_only" not in message


# ---------------------------------------------------------------------------------------
# Exported files: .onnx, .pt2, the TensorRT sidecar
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [random.Random(3000).randbytes(3000), b"", b"not an onnx model\n"])
def test_onnx_that_is_not_onnx(tmp_path, content):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from hmr_fast.export.onnx import read_metadata
    from hmr_fast.infer.backends import OnnxRuntimeBackend

    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    refused(lambda: OnnxRuntimeBackend(path), path, "not an ONNX model onnxruntime can load")
    if content:  # an empty file is a valid, empty ModelProto to onnx.load
        refused(lambda: read_metadata(path), path, "not an ONNX model")
    else:
        refused(lambda: read_metadata(path), path, "has no hmr_fast metadata")


def _onnx_model(path, metadata=None, input_name="images"):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", [input_name], ["rot_mats"])], "g",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("rot_mats", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "hmr_fast", metadata
    onnx.save(model, str(path))
    return path


def test_onnx_of_another_program(tmp_path):
    pytest.importorskip("onnxruntime")
    from hmr_fast.export.onnx import read_metadata
    from hmr_fast.infer.backends import OnnxRuntimeBackend

    path = _onnx_model(tmp_path / "other.onnx")
    refused(lambda: OnnxRuntimeBackend(path), path, "without hmr_fast metadata")
    refused(lambda: read_metadata(path), path, "has no hmr_fast metadata")
    path = _onnx_model(tmp_path / "garbled.onnx", metadata="{not json")
    refused(lambda: OnnxRuntimeBackend(path), path, "not hmr_fast export metadata", "no valid JSON")
    meta = '{"format": "%s", "img_size": 64, "joint_set": "hmr19"}' % EXPORT_FORMAT
    path = _onnx_model(tmp_path / "graph.onnx", metadata=meta, input_name="x")
    refused(lambda: OnnxRuntimeBackend(path), path, "inputs ['x']", "expected the input ['images']")
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeBackend(tmp_path / "none.onnx")
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "none.onnx")


@pytest.mark.parametrize("kind", ["random", "zip", "checkpoint"])
def test_pt2_that_is_not_a_package(tmp_path, checkpoint, kind):
    from hmr_fast.infer.backends import AOTIBackend, load_package

    path = tmp_path / "model.pt2"
    if kind == "random":
        path.write_bytes(random.Random(3000).randbytes(3000))
        found = "not a readable zip archive"
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("foo.txt", "bar")
        found = "without an AOTInductor model"
    else:
        path.write_bytes(open(checkpoint, "rb").read())
        found = "without an AOTInductor model"
    refused(lambda: load_package(path), path, found)
    refused(lambda: AOTIBackend(path), path, found)


@pytest.mark.parametrize("text, found", [
    (b"\xff\xfe garbage", "no valid JSON"),
    (b"[1, 2]", "JSON holding a list"),
    (b'{"format": "other"}', "format 'other'"),
    (b'{"format": "%s", "joint_set": "hmr19"}' % EXPORT_FORMAT.encode(), "'img_size' is missing"),
    (b'{"format": "%s", "img_size": -3, "joint_set": "hmr19"}' % EXPORT_FORMAT.encode(), "'img_size' is -3"),
])
def test_engine_sidecar_that_is_not_ours(tmp_path, text, found):
    engine = tmp_path / "model.engine"
    engine.write_bytes(random.Random(1000).randbytes(1000))
    sidecar = tmp_path / "model.engine.json"
    sidecar.write_bytes(text)
    refused(lambda: read_sidecar(engine), sidecar, found)


def test_engine_and_sidecar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.engine.json not found"):
        read_sidecar(tmp_path / "model.engine")
    with pytest.raises(CheckpointError, match="x.onnx is not hmr_fast export metadata"):
        parse_metadata(None, "x.onnx")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the tensorrt backend needs a CUDA device")
def test_tensorrt_backend_checks_the_engine_file_first(tmp_path):
    from hmr_fast.infer.backends import TensorRTBackend

    with pytest.raises(FileNotFoundError, match="TensorRT engine .*none.engine not found"):
        TensorRTBackend(tmp_path / "none.engine", "cuda")


# ---------------------------------------------------------------------------------------
# The command line: one line naming the file, exit 2
# ---------------------------------------------------------------------------------------

def _hmr_fast(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hmr_fast.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_prints_one_line_for_unreadable_checkpoints(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    random_file = tmp_path / "x.pt"
    random_file.write_bytes(random.Random(4000).randbytes(4000))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_torch_bytes({"format": FORMAT, "x": Evil(sentinel)}))
    runs = [(random_file, ["eval", "--checkpoint", random_file, "--data", tmp_path]),
            (evil, ["pack", evil, tmp_path / "packed.pt"])]
    for named, args in runs:
        result = _hmr_fast(*args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith(f"hmr-fast {args[0]}: ") and str(named) in lines[0], \
            result.stderr
        assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    assert not sentinel.exists()
