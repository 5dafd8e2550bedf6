"""Exports: ONNX (vs torch in onnxruntime), the TensorRT plugin graph and PTX (no TensorRT
here: checked by emulation on the CPU), the plain graph built by TensorRT-RTX's CPU builder,
TensorRT's missing-package error, AOTInductor.

AOTInductor compiles C++ for one to several minutes on these 2-core machines, so its tests
share one package (the `aoti_package` fixture, built once per session); they are the slowest
here, and worth it: they are the only check that the .pt2 package really runs.
"""
import argparse
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hmr_fast.infer import Predictor
from hmr_fast.model import OUTPUT_NAMES
from random_checkpoint import make_checkpoint

S = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", img_size=S, seed=1)


@pytest.fixture(scope="module")
def onnx_path(checkpoint, tmp_path_factory):
    from hmr_fast.export.onnx import export_onnx

    return export_onnx(checkpoint, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def plugin_onnx_path(checkpoint, tmp_path_factory):
    from hmr_fast.export.onnx import export_onnx

    return export_onnx(checkpoint, tmp_path_factory.mktemp("onnx") / "model.plugins.onnx", smpl_graph="plugins")


# ------------------------------------------------------------------------------- ONNX
def test_onnx_matches_torch_within_1e4(onnx_path, checkpoint):
    from hmr_fast.export.onnx import verify_onnx

    worst = verify_onnx(onnx_path, checkpoint, batch_sizes=(1, 3), atol=1e-4)
    assert set(worst) == set(OUTPUT_NAMES)


def test_onnx_graph_has_dynamic_batch_and_metadata(onnx_path):
    import onnx

    from hmr_fast.export.onnx import read_metadata

    model = onnx.load(str(onnx_path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim
    assert model.graph.input[0].name == "images" and dim[0].dim_param == "batch" and dim[2].dim_value == S
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = read_metadata(onnx_path)
    assert meta["img_size"] == S and meta["joint_set"] == "hmr19" and meta["smpl_model"] is None


def test_onnxruntime_backend_in_the_predictor(onnx_path, checkpoint):
    rng = np.random.default_rng(0)
    frame = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    boxes = [[10, 5, 90, 110], [70, 20, 150, 100]]
    a = Predictor(checkpoint, "torch", "cpu").predict(frame, boxes)
    b = Predictor(onnx_path, "auto", "cpu").predict(frame, boxes)
    assert b.vertices.shape == a.vertices.shape
    for key in ("rot_mats", "betas", "cam", "joints3d", "vertices"):
        assert np.abs(getattr(a, key) - getattr(b, key)).max() < 1e-4, key
    assert np.abs(a.keypoints2d - b.keypoints2d).max() < 1e-3  # pixels


def test_export_cli_checks_the_output_name(checkpoint, tmp_path):
    from hmr_fast.export.cli import run

    args = argparse.Namespace(checkpoint=checkpoint, format="onnx", out=str(tmp_path / "m.engine"), precision=None,
                              opset=17, max_batch=8, opt_batch=2, timing_cache=None, no_plugins=False, device=None,
                              verify=False, verbose=False)
    with pytest.raises(SystemExit, match="must end in .onnx"):
        run(args)
    args.out, args.checkpoint = str(tmp_path / "m.onnx"), str(tmp_path / "missing.pt")
    with pytest.raises(SystemExit, match="missing.pt not found"):
        run(args)


# ------------------------------------------------------------------------------- TensorRT
def test_plugin_graph_nodes(plugin_onnx_path):
    import onnx

    from hmr_fast.export.trt_plugins import PLUGIN_DOMAIN, node_attrs, plugin_nodes

    model = onnx.load(str(plugin_onnx_path))
    nodes = plugin_nodes(model)
    assert [n.op_type for n in nodes] == ["pose_chain", "blend_skin", "regress_project"]
    for node in nodes:
        attrs = node_attrs(node)
        assert node.domain == PLUGIN_DOMAIN and attrs["plugin_namespace"] == b"hmr_fast" and attrs["aot"] == 1
    # the SMPL of the plugin graph is only these nodes: no plain-ONNX skinning left
    assert "vertices" in nodes[1].output and set(nodes[2].output) == {"joints3d", "keypoints2d"}
    inits = {t.name: t for t in model.graph.initializer}
    parents, dirs_planes = nodes[0].input[4], nodes[1].input[3]  # wired by position (TensorRT reads them so)
    assert list(inits[dirs_planes].dims)[0] == 3 and inits[parents].data_type == onnx.TensorProto.INT32
    assert list(inits[parents].dims) == [24]


def test_plugin_graph_emulated_matches_plain_onnx(plugin_onnx_path, onnx_path):
    """The builder's graph, run with each plugin node's torch reference, equals the plain
    graph in onnxruntime: the plugins' inputs, initializers and attributes are wired right."""
    import onnxruntime as ort

    from hmr_fast.export.trt_plugins import emulate_plugin_graph

    images = np.random.default_rng(1).normal(size=(3, 3, S, S)).astype(np.float32)
    plain = dict(zip(OUTPUT_NAMES, ort.InferenceSession(str(onnx_path)).run(list(OUTPUT_NAMES), {"images": images})))
    emulated = emulate_plugin_graph(plugin_onnx_path, images)
    for name in OUTPUT_NAMES:
        assert np.abs(emulated[name] - plain[name]).max() < 1e-4, name


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter (CPU CI)")
def test_plugin_kernels_in_tensorrt_order_match_plain_onnx(plugin_onnx_path, onnx_path):
    """The adapter kernels TensorRT launches (inputs, batch, outputs; the plugin's grid),
    run by Triton's interpreter on the graph's own initializers."""
    import onnxruntime as ort

    from hmr_fast.export.trt_plugins import emulate_plugin_graph

    images = np.random.default_rng(2).normal(size=(2, 3, S, S)).astype(np.float32)
    plain = dict(zip(OUTPUT_NAMES, ort.InferenceSession(str(onnx_path)).run(list(OUTPUT_NAMES), {"images": images})))
    emulated = emulate_plugin_graph(plugin_onnx_path, images, use_kernels=True)
    for name in ("joints3d", "keypoints2d", "vertices"):
        assert np.abs(emulated[name] - plain[name]).max() < 1e-4, name


def test_plugin_ptx_for_sm90(tmp_path):
    """PTX of the three adapters for an H100 (sm_90), compiled without a GPU in a process
    without the interpreter; each entry takes pointers, then the int32 batch, then pointers."""
    script = textwrap.dedent(f"""
        from hmr_fast.export.trt_plugins import write_plugin_ptx
        for op, path in write_plugin_ptx({str(tmp_path)!r}, 90).items():
            print(op, path)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {"pose_chain": (6, 4), "blend_skin": (8, 1), "regress_project": (7, 2)}
    for op, (n_in, n_out) in expected.items():
        ptx = (tmp_path / f"{op}_sm90.ptx").read_text()
        assert re.search(r"\.target sm_90a?", ptx)
        params = re.search(r"\.entry trt_" + op + r"\((.*?)\)", ptx, re.S).group(1)
        kinds = re.findall(r"\.param \.(u64|u32|b64|b32)", params)
        declared = n_in + 1 + n_out
        assert kinds[:declared] == ["u64"] * n_in + ["u32"] + ["u64"] * n_out, (op, kinds)
        assert len(kinds) - declared <= 2  # newer tritons append their (unused) scratch pointers


def test_missing_tensorrt_is_a_clear_error(checkpoint, tmp_path, capsys):
    pytest.importorskip("hmr_fast.export.tensorrt")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    from hmr_fast.export.cli import run
    from hmr_fast.infer.tensorrt_engine import EngineRunner, require_tensorrt

    with pytest.raises(ImportError, match="pip install tensorrt"):
        require_tensorrt()
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        EngineRunner(tmp_path / "x.engine")
    args = argparse.Namespace(checkpoint=checkpoint, format="tensorrt", out=str(tmp_path / "m.engine"),
                              precision=None, opset=17, max_batch=8, opt_batch=2, timing_cache=None, no_plugins=False,
                              device=None, verify=False, verbose=False)
    assert run(args) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plain_graph_builds_with_a_real_tensorrt_builder(checkpoint, tmp_path, precision):
    """TensorRT-RTX's ONNX parser and builder, ahead of time for SM86 on this CPU: every op
    of the plain graph is accepted, the batch stays dynamic within the profile, and in the
    fp16 graph the encoder runs in half while every output (the SMPL part) stays float32."""
    trt = pytest.importorskip("tensorrt_rtx", reason="the [test] extra installs tensorrt-rtx-cu12 on Linux x86-64")
    from hmr_fast.export.onnx import export_onnx
    from hmr_fast.export.tensorrt import build_from_onnx

    graph = export_onnx(checkpoint, tmp_path / f"model_{precision}.onnx", precision=precision)
    engine = tmp_path / "model.engine"
    facts = build_from_onnx(graph, engine, precision, max_batch=16, opt_batch=4, img_size=S, trt=trt,
                            compute_capability=86)
    assert engine.stat().st_size > 1_000_000  # the weights are in it
    assert facts["inputs"] == {"images": [[-1, 3, S, S], "FLOAT"]}
    assert list(facts["outputs"]) == list(OUTPUT_NAMES)
    for name, (shape, dtype) in facts["outputs"].items():
        assert shape[0] == -1 and dtype == "FLOAT", name
    half_layers = facts["layer_dtypes"].get("HALF", 0)
    assert half_layers > 20 if precision == "fp16" else half_layers == 0


def test_tensorrt_rtx_target_is_checked(onnx_path, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx", reason="the [test] extra installs tensorrt-rtx-cu12 on Linux x86-64")
    from hmr_fast.export.tensorrt import build_from_onnx

    with pytest.raises(ValueError, match="compute_capability"):
        build_from_onnx(onnx_path, tmp_path / "m.engine", "fp32", 4, 1, S, trt=trt)
    with pytest.raises(ValueError, match="compute_capability 90: .*SM86"):
        build_from_onnx(onnx_path, tmp_path / "m.engine", "fp32", 4, 1, S, trt=trt, compute_capability=90)
    assert not (tmp_path / "m.engine").exists()


# ------------------------------------------------------------------------------- AOTInductor
@pytest.fixture(scope="module")
def aoti_package(checkpoint, tmp_path_factory):
    """The one AOTInductor package of the session (building one compiles C++ for minutes on a
    busy 2-core machine): the real path, the tiny checkpoint through `export_aoti` with the
    SMPL body model's plain-torch math, batch dynamic in 1..8 (exported at batch 2)."""
    from hmr_fast.export.aoti import export_aoti

    return export_aoti(checkpoint, tmp_path_factory.mktemp("aoti") / "model.pt2", "cpu", max_batch=8)


def test_aoti_package_runs_without_hmr_fast(aoti_package, checkpoint, tmp_path):
    """A package loads and runs with torch alone: hmr_fast cannot be imported in the child, so a
    graph that still called hmr_fast's registered SMPL ops would fail to load or run there. Its
    outputs, at a batch size other than the export example's, are the torch model's."""
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(5, 3, S, S)).astype(np.float32))
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hmr_fast"] = None  # any import of hmr_fast now fails
        import numpy as np, torch
        runner = torch._inductor.aoti_load_package({str(aoti_package)!r})
        out = runner(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))
        np.savez({str(tmp_path / 'y.npz')!r}, *[o.detach().numpy() for o in out])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "y.npz") as saved:
        child = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert len(child) == len(OUTPUT_NAMES)
    expected = Predictor(checkpoint, "torch", "cpu").backend.run(x)
    in_process = Predictor(aoti_package, "aoti", "cpu").backend.run(x)
    for name, got in zip(OUTPUT_NAMES, child):
        want = expected[name].numpy()
        assert got.shape == want.shape and got.shape[0] == 5, name
        # the real network + SMPL differs from torch by ~1e-6 (reduction order), so 1e-4 as
        # below; the child's run of the package is the parent's own, to 1e-6
        assert np.abs(got - want).max() < 1e-4, name
        assert np.allclose(got, in_process[name].numpy(), atol=1e-6), name


def test_aoti_checkpoint_matches_torch(aoti_package, checkpoint):
    rng = np.random.default_rng(3)
    frame = (rng.random((100, 100, 3)) * 255).astype(np.uint8)
    a = Predictor(checkpoint, "torch", "cpu").predict(frame, [[0, 0, 90, 90], [10, 10, 100, 100]])
    b = Predictor(aoti_package, "aoti", "cpu").predict(frame, [[0, 0, 90, 90], [10, 10, 100, 100]])
    assert b.vertices.shape == a.vertices.shape
    for key in ("rot_mats", "betas", "cam", "joints3d", "vertices"):
        assert np.abs(getattr(a, key) - getattr(b, key)).max() < 1e-4, key


def test_aoti_rejects_bad_arguments(checkpoint, tmp_path):
    from hmr_fast.export.aoti import export_aoti
    from hmr_fast.infer.backends import load_package

    with pytest.raises(ValueError, match="must end in .pt2"):
        export_aoti(checkpoint, tmp_path / "model.onnx", "cpu")
    with pytest.raises(ValueError, match="CUDA packages"):
        export_aoti(checkpoint, tmp_path / "model.pt2", "cpu", precision="fp16")
    with pytest.raises(FileNotFoundError):
        load_package(tmp_path / "none.pt2")
