"""RefineNet: a ResNet encoder and four cascaded refinement blocks (RCU, fusion, chained residual pooling).

Attribute names follow the MindSpore ModelZoo RefineNet so its checkpoints load tensor for tensor
(`conv1`, `layer3.22.bn2.gamma`, `mflow_conv_g1_pool.0.layers.3.weight`, `clf_conv.bias`, ...).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops

from refinenet.model.resize import Resize
from refinenet.model.resnet import (
    RESNET_LAYERS,
    BasicBlock,
    Bottleneck,
    batch_norm,
    conv,
    init_weight,
    make_layer,
)
from refinenet.model.winograd import WinogradConv2d


def conv3x3(cin: int, cout: int, bias: bool = False, winograd: bool = False) -> nn.Conv2d:
    """3x3 'same' convolution; `winograd`: trained in Winograd form where that pays (same parameters)."""
    if winograd:
        return WinogradConv2d(cin, cout, has_bias=bias, weight_init=init_weight())
    return conv(cin, cout, 3, 1, bias)


class RCUBlock(nn.Cell):
    """Residual conv units: `n_blocks` x (ReLU, conv3x3+bias, ReLU, conv3x3) with identity skips."""

    def __init__(self, cin: int, cout: int, n_blocks: int, winograd: bool = False):
        super().__init__()
        self.layers = nn.CellList([
            nn.SequentialCell([nn.ReLU(), conv3x3(cin if i == 0 else cout, cout, True, winograd),
                               nn.ReLU(), conv3x3(cout, cout, winograd=winograd)])
            for i in range(n_blocks)])

    def construct(self, x):
        for unit in self.layers:
            x = unit(x) + x
        return x


class MaxPool5x5(nn.Cell):
    """5x5 stride-1 max pool with PyTorch's padding=2; `separable=True` trains with a cheaper backward.

    A 5x5 max is a 5x1 max of a 1x5 max; each pass is MindSpore's argmax-keeping pool ('pad' mode,
    MaxPool3DWithArgmax), whose backward is a scatter by the kept indices, where the square pool's
    MaxPoolGrad recomputes the window maxima in oneDNN's slow plain-layout kernel (13% of a
    RefineNet-101 train step at 513x513). The forward values equal the square pool's bit for bit
    and so does the backward except where a window holds tied maxima (in practice the zeros of a
    ReLU output, whose gradient the ReLU zeroes anyway). On CPU it is the default: with the
    Winograd decoder convolutions a RefineNet-101 train step at 513x513 takes 0.739x the time
    (docs/performance.md, "Train step, RefineNet-101 at 513x513"). In inference
    (`set_train(False)`) the square 'same' pool is always used: it exports to ONNX ('pad' does not).
    """

    def __init__(self, separable: bool = False):
        super().__init__()
        self.separable = separable
        # 'same' equals PyTorch's padding=2 for 5x5 stride 1, and exports to ONNX ('pad' does not).
        self.square = nn.MaxPool2d(kernel_size=5, stride=1, pad_mode="same")
        self.rows = nn.MaxPool2d(kernel_size=(1, 5), stride=1, pad_mode="pad", padding=(0, 2))
        self.cols = nn.MaxPool2d(kernel_size=(5, 1), stride=1, pad_mode="pad", padding=(2, 0))

    def construct(self, x):
        if self.separable and self.training:
            return self.cols(self.rows(x))
        return self.square(x)


class CRPBlock(nn.Cell):
    """Chained residual pooling: 4 x (5x5 stride-1 max pool, conv3x3), each output added to the input."""

    def __init__(self, cin: int, cout: int, n_stages: int = 4, separable_pool: bool = False,
                 winograd: bool = False):
        super().__init__()
        self.layers = nn.CellList([conv3x3(cin if i == 0 else cout, cout, winograd=winograd)
                                   for i in range(n_stages)])
        self.pool = MaxPool5x5(separable_pool)

    def construct(self, x):
        top = x
        for conv_i in self.layers:
            top = conv_i(self.pool(top))
            x = x + top
        return x


def _wrap(cell: nn.Cell) -> nn.SequentialCell:
    """The ModelZoo wraps each RCU/CRP in a one-element SequentialCell (hence `.0.` in the names)."""
    return nn.SequentialCell([cell])


def feature_sizes(height: int, width: int) -> Tuple[Tuple[int, int], ...]:
    """Spatial sizes of layer1..layer4 (1/4 .. 1/32) for an input of `height` x `width`."""
    def down(n: int) -> Sequence[int]:
        stem = (n - 1) // 2 + 1          # 7x7 stride 2, pad 3
        s4 = (stem + 1) // 2             # 3x3 stride 2 max pool, 'same'
        s8 = (s4 - 1) // 2 + 1           # 3x3 stride 2, pad 1
        s16 = (s8 - 1) // 2 + 1
        s32 = (s16 - 1) // 2 + 1
        return s4, s8, s16, s32
    return tuple(zip(down(height), down(width)))


class RefineNet(nn.Cell):
    """RefineNet-`depth`; output (N, num_classes, H, W) logits for (N, 3, H, W) float32 input.

    With `input_size` the resizes use constant matrices for that size (exportable to ONNX),
    otherwise MindSpore's resize operator (any size). `separable_pool=True` trains the CRP blocks'
    max pools in a separable argmax form (same results, cheaper pool backward: see `MaxPool5x5`);
    `winograd=True` trains the decoder's 3x3 convolutions in Winograd form F(2x2,3x3) where it pays
    (see `WinogradConv2d`). None (the default) selects each when the device target is CPU, where
    `benchmarks/train_step_formulation.py` measured them.
    """

    def __init__(self, num_classes: int = 21, depth: int = 101, bn_mode: str = "frozen",
                 input_size: Optional[Tuple[int, int]] = None, separable_pool: Optional[bool] = None,
                 winograd: Optional[bool] = None):
        super().__init__()
        on_cpu = ms.get_context("device_target") == "CPU"
        separable_pool = on_cpu if separable_pool is None else separable_pool
        wg = on_cpu if winograd is None else winograd
        if depth not in RESNET_LAYERS:
            raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, not {depth}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, not {num_classes}")
        layers, bottleneck = RESNET_LAYERS[depth]
        block = Bottleneck if bottleneck else BasicBlock
        self.depth, self.num_classes, self.bn_mode = depth, num_classes, bn_mode
        self.conv1 = conv(3, 64, 7, 2)
        self.bn1 = batch_norm(64, bn_mode)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        inplanes = 64
        self.layer1, inplanes = make_layer(block, inplanes, 64, layers[0], 1, bn_mode)
        c1 = inplanes
        self.layer2, inplanes = make_layer(block, inplanes, 128, layers[1], 2, bn_mode)
        c2 = inplanes
        self.layer3, inplanes = make_layer(block, inplanes, 256, layers[2], 2, bn_mode)
        c3 = inplanes
        self.layer4, inplanes = make_layer(block, inplanes, 512, layers[3], 2, bn_mode)
        c4 = inplanes

        self.p_ims1d2_outl1_dimred = conv3x3(c4, 512, winograd=wg)
        self.adapt_stage1_b = _wrap(RCUBlock(512, 512, 2, winograd=wg))
        self.mflow_conv_g1_pool = _wrap(CRPBlock(512, 512, separable_pool=separable_pool, winograd=wg))
        self.mflow_conv_g1_b = _wrap(RCUBlock(512, 512, 3, winograd=wg))
        self.mflow_conv_g1_b3_joint_varout_dimred = conv3x3(512, 256, winograd=wg)
        self.p_ims1d2_outl2_dimred = conv3x3(c3, 256, winograd=wg)
        self.adapt_stage2_b = _wrap(RCUBlock(256, 256, 2, winograd=wg))
        self.adapt_stage2_b2_joint_varout_dimred = conv3x3(256, 256, winograd=wg)
        self.mflow_conv_g2_pool = _wrap(CRPBlock(256, 256, separable_pool=separable_pool, winograd=wg))
        self.mflow_conv_g2_b = _wrap(RCUBlock(256, 256, 3, winograd=wg))
        self.mflow_conv_g2_b3_joint_varout_dimred = conv3x3(256, 256, winograd=wg)
        self.p_ims1d2_outl3_dimred = conv3x3(c2, 256, winograd=wg)
        self.adapt_stage3_b = _wrap(RCUBlock(256, 256, 2, winograd=wg))
        self.adapt_stage3_b2_joint_varout_dimred = conv3x3(256, 256, winograd=wg)
        self.mflow_conv_g3_pool = _wrap(CRPBlock(256, 256, separable_pool=separable_pool, winograd=wg))
        self.mflow_conv_g3_b = _wrap(RCUBlock(256, 256, 3, winograd=wg))
        self.mflow_conv_g3_b3_joint_varout_dimred = conv3x3(256, 256, winograd=wg)
        self.p_ims1d2_outl4_dimred = conv3x3(c1, 256, winograd=wg)
        self.adapt_stage4_b = _wrap(RCUBlock(256, 256, 2, winograd=wg))
        self.adapt_stage4_b2_joint_varout_dimred = conv3x3(256, 256, winograd=wg)
        self.mflow_conv_g4_pool = _wrap(CRPBlock(256, 256, separable_pool=separable_pool, winograd=wg))
        self.mflow_conv_g4_b = _wrap(RCUBlock(256, 256, 3, winograd=wg))
        self.clf_conv = conv3x3(256, num_classes, bias=True)

        if input_size is None:
            sizes = [None] * 4
            self.up4 = Resize(True)
            self.up3 = Resize(True)
            self.up2 = Resize(True)
            self.up_out = Resize(False)
        else:
            sizes = feature_sizes(*input_size)
            self.up4 = Resize(True, sizes[3], sizes[2])
            self.up3 = Resize(True, sizes[2], sizes[1])
            self.up2 = Resize(True, sizes[1], sizes[0])
            self.up_out = Resize(False, sizes[0], tuple(input_size))
        self.shape = ops.Shape()

    def construct(self, x):
        in_shape = self.shape(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)

        x4 = self.adapt_stage1_b(self.p_ims1d2_outl1_dimred(l4))
        x4 = self.mflow_conv_g1_b(self.mflow_conv_g1_pool(self.relu(x4)))
        x4 = self.up4(self.mflow_conv_g1_b3_joint_varout_dimred(x4), self.shape(l3)[2:])

        x3 = self.adapt_stage2_b2_joint_varout_dimred(self.adapt_stage2_b(self.p_ims1d2_outl2_dimred(l3)))
        x3 = self.mflow_conv_g2_b(self.mflow_conv_g2_pool(self.relu(x3 + x4)))
        x3 = self.up3(self.mflow_conv_g2_b3_joint_varout_dimred(x3), self.shape(l2)[2:])

        x2 = self.adapt_stage3_b2_joint_varout_dimred(self.adapt_stage3_b(self.p_ims1d2_outl3_dimred(l2)))
        x2 = self.mflow_conv_g3_b(self.mflow_conv_g3_pool(self.relu(x2 + x3)))
        x2 = self.up2(self.mflow_conv_g3_b3_joint_varout_dimred(x2), self.shape(l1)[2:])

        x1 = self.adapt_stage4_b2_joint_varout_dimred(self.adapt_stage4_b(self.p_ims1d2_outl4_dimred(l1)))
        x1 = self.mflow_conv_g4_b(self.mflow_conv_g4_pool(self.relu(x1 + x2)))
        return self.up_out(self.clf_conv(x1), in_shape[2:])
