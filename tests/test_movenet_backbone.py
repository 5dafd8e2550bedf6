"""MoveNet's backbone in torch (hmr_fast.model.movenet) and the encoder built on it.

Where LiteRT and MoveNet's weights are installed, the torch feature map is held against the
.tflite's own intermediate tensor (the map its heads read), computed by LiteRT on the same
uint8 image. Measured here, max |torch - tflite| / max |tflite|: 4.0e-6 at 128 x 128,
2.3e-6 at 192 x 160, 3.5e-6 at 256 x 256 (random images), 2.7e-6 on a rendered 224 x 320
frame: float32 rounding (the float16 weights are dequantized exactly on both sides).
TOLERANCE leaves a margin of 2.5x for other CPUs' kernels; a wrong padding, channel order or
input mapping gives errors of order 1e-1 (TensorFlow's symmetric-looking SAME padding
written as torch's padding=1 in the stride-2 convolutions: 0.72).
The other tests need neither.
"""
import sys

import numpy as np
import pytest
import torch

from hmr_fast.camera import normalise_image
from hmr_fast.errors import HmrFastError, UsageError
from hmr_fast.model import HMR, Encoder, build_model, load_checkpoint, save_checkpoint
from hmr_fast.model import movenet_weights as weights
from hmr_fast.model.encoder import BACKBONES
from hmr_fast.model.movenet import MoveNetBackbone, read_graph

TOLERANCE = 1e-5  # of max |tflite feature|


@pytest.fixture(scope="module")
def movenet_bytes():
    pytest.importorskip("ai_edge_litert.interpreter",
                        reason="ai-edge-litert not installed (pip install 'hmr_fast[people]')")
    try:
        return weights.movenet_weights()
    except HmrFastError as exc:
        pytest.skip(f"MoveNet weights not available: {exc}")


@pytest.fixture(scope="module")
def pretrained(movenet_bytes):
    return MoveNetBackbone.pretrained().eval()


def _no_weights(monkeypatch):
    """Any read of MoveNet's file fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("MoveNet's weights were read")
    monkeypatch.setattr(weights, "movenet_weights", refuse)


@pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors:UserWarning")  # wanted: the debugging view
@pytest.mark.parametrize("height, width", [(128, 128), (192, 160)])
def test_feature_map_matches_the_tflite(movenet_bytes, pretrained, height, width):
    from ai_edge_litert.interpreter import Interpreter

    graph = read_graph(movenet_bytes)
    image = np.random.randint(0, 256, (height, width, 3), dtype=np.uint8)  # RGB, seeded by conftest
    interp = Interpreter(model_content=movenet_bytes, experimental_preserve_all_tensors=True, num_threads=1)
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], [1, height, width, 3])
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], image[None])
    interp.invoke()
    expected = interp.get_tensor(graph.feature_tensor)[0].transpose(2, 0, 1)
    with torch.no_grad():
        got = pretrained(torch.from_numpy(normalise_image(image))[None])[0].numpy()
    assert got.shape == expected.shape == (24, height // 4, width // 4)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < TOLERANCE, f"max |torch - tflite| / max |tflite| = {error:.2e}"


def test_the_cut_is_where_the_heads_start(movenet_bytes):
    graph = read_graph(movenet_bytes)
    # the backbone's 62 convolutions; the heads (centre, box offset and size, keypoint heatmap
    # and offsets, ...) all read the last one's output
    assert len(graph.convs) == len(MoveNetBackbone().tflite_order()) == 62
    assert graph.convs[-1].output == graph.feature_tensor and graph.head_ops >= 5


def test_shapes_and_bad_input():
    net = MoveNetBackbone().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 96)).shape == (2, 24, 16, 24)
    for bad, match in [(torch.randn(1, 3, 100, 64), "multiples of 32"), (torch.randn(1, 1, 64, 64), r"\(B, 3, H, W\)"),
                       (torch.randn(3, 64, 64), r"\(B, 3, H, W\)"),
                       (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float")]:
        with pytest.raises(UsageError, match=match) as exc:
            net(bad)
        assert "\n" not in str(exc.value)


def test_missing_litert_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.schema_py_generated", None)
    with pytest.raises(UsageError, match=r'pip install "hmr_fast\[people\]"'):
        read_graph(b"\x00" * 64)


def test_encoder_features(monkeypatch):
    _no_weights(monkeypatch)  # a random start reads nothing
    enc = Encoder("movenet").eval()
    assert enc.feature_dim == BACKBONES["movenet"]
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 128, 128)).shape == (2, enc.feature_dim)
        assert enc(torch.randn(1, 3, 192, 160)).shape == (1, enc.feature_dim)  # any multiple of 32
    with pytest.raises(ValueError, match="backbone 'movenet'"):
        Encoder("resnet18", pretrained="movenet")


def test_pretrained_encoder_holds_movenets_weights(pretrained):
    enc = Encoder("movenet", pretrained="movenet")
    for (name, got), expected in zip(enc.net.state_dict().items(), pretrained.state_dict().values()):
        torch.testing.assert_close(got, expected, msg=name)


def test_a_checkpoint_loads_without_the_movenet_file(tmp_path, monkeypatch):
    """A checkpoint holds the whole state dict: loading it never reads MoveNet's file, even
    when its config says the run started from MoveNet's weights."""
    torch.manual_seed(0)
    model = HMR(backbone="movenet", img_size=128).eval()
    config = {"model": dict(backbone="movenet", pretrained="movenet", pose_repr="axis_angle", ief_iters=3,
                            img_size=128, joint_set="hmr19", dropout=0.5, smpl_model=None)}
    save_checkpoint(tmp_path / "m.pt", model, config)
    _no_weights(monkeypatch)
    loaded, _ = load_checkpoint(tmp_path / "m.pt", smpl_backend="reference")
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).keypoints2d, model(images).keypoints2d)
    with pytest.raises(AssertionError, match="were read"):  # a fresh build does read them
        build_model(config["model"])


def test_hmr_refuses_crops_movenet_cannot_take():
    with pytest.raises(UsageError, match="multiple of 32, got 100"):
        HMR(backbone="movenet", img_size=100)


def test_onnx_export_matches_torch(tmp_path):
    """The pooled grid is a reshaped mean: ONNX's exporter could not size adaptive_avg_pool2d."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from hmr_fast.export.onnx import export_onnx

    model = HMR(backbone="movenet", img_size=64).eval()
    config = {"model": dict(backbone="movenet", pretrained=None, pose_repr="axis_angle", ief_iters=3, img_size=64,
                            joint_set="hmr19", dropout=0.5, smpl_model=None)}
    save_checkpoint(tmp_path / "m.pt", model, config)
    session = ort.InferenceSession(str(export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")),
                                   providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 64, 64)
    keypoints = session.run(["keypoints2d"], {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = model(images).keypoints2d
    np.testing.assert_allclose(keypoints, expected.numpy(), atol=1e-4)


def test_config_accepts_the_movenet_backbone():
    from hmr_fast.training.config import CHOICES, load_config

    cfg = load_config(overrides=["model.backbone=movenet", "model.pretrained=movenet", "model.img_size=128"])
    assert cfg.model.backbone == "movenet"
    assert set(CHOICES["model.backbone"]) == set(BACKBONES)
