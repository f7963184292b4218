"""ResNet building blocks (v1.5: stride on the 3x3 conv), named as the ModelZoo RefineNet names them."""
from __future__ import annotations

import math
from typing import Optional

from mindspore import nn
from mindspore.common.initializer import HeUniform

#: Blocks per stage for each depth, and whether the depth uses bottleneck blocks.
RESNET_LAYERS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
BN_MODES = ("frozen", "train")


def init_weight() -> HeUniform:
    """The ModelZoo recipe's convolution weight initialiser (kaiming-uniform, a=sqrt(5))."""
    return HeUniform(negative_slope=math.sqrt(5))


def conv(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """A convolution initialised like the ModelZoo recipe."""
    pad = kernel // 2
    return nn.Conv2d(cin, cout, kernel, stride=stride, pad_mode="pad" if pad else "valid", padding=pad,
                     has_bias=bias, weight_init=init_weight())


def batch_norm(channels: int, bn_mode: str) -> nn.BatchNorm2d:
    """`frozen`: moving statistics only, never updated (the ModelZoo behaviour); `train`: batch statistics."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, not {bn_mode!r}")
    return nn.BatchNorm2d(channels, use_batch_statistics=False if bn_mode == "frozen" else None)


class BasicBlock(nn.Cell):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Cell], bn_mode: str):
        super().__init__()
        self.conv1 = conv(inplanes, planes, 3, stride)
        self.bn1 = batch_norm(planes, bn_mode)
        self.conv2 = conv(planes, planes, 3)
        self.bn2 = batch_norm(planes, bn_mode)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.has_downsample = downsample is not None

    def construct(self, x):
        residual = self.downsample(x) if self.has_downsample else x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Cell):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Cell], bn_mode: str):
        super().__init__()
        self.conv1 = conv(inplanes, planes, 1)
        self.bn1 = batch_norm(planes, bn_mode)
        self.conv2 = conv(planes, planes, 3, stride)
        self.bn2 = batch_norm(planes, bn_mode)
        self.conv3 = conv(planes, planes * 4, 1)
        self.bn3 = batch_norm(planes * 4, bn_mode)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.has_downsample = downsample is not None

    def construct(self, x):
        residual = self.downsample(x) if self.has_downsample else x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


def make_layer(block, inplanes: int, planes: int, blocks: int, stride: int, bn_mode: str):
    """One ResNet stage; the first block gets `downsample` (1x1 conv + BN) when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.SequentialCell([conv(inplanes, planes * block.expansion, 1, stride),
                                        batch_norm(planes * block.expansion, bn_mode)])
    cells = [block(inplanes, planes, stride, downsample, bn_mode)]
    inplanes = planes * block.expansion
    cells += [block(inplanes, planes, 1, None, bn_mode) for _ in range(1, blocks)]
    return nn.SequentialCell(cells), inplanes
