"""The RefineNet network: `build_refinenet(num_classes, depth, ...) -> nn.Cell`."""
from __future__ import annotations

from typing import Optional, Tuple

from refinenet.model.refinenet import RefineNet, feature_sizes
from refinenet.model.resnet import BN_MODES, RESNET_LAYERS

DEPTHS = tuple(sorted(RESNET_LAYERS))


def build_refinenet(num_classes: int = 21, depth: int = 101, bn_mode: str = "frozen",
                    input_size: Optional[Tuple[int, int]] = None,
                    separable_pool: Optional[bool] = None, winograd: Optional[bool] = None) -> RefineNet:
    """RefineNet on a ResNet-`depth` encoder; output (N, num_classes, H, W) logits for (N, 3, H, W) input.

    `bn_mode`: `frozen` (moving statistics only, the ModelZoo behaviour) or `train`.
    `input_size=(H, W)` fixes the input size and makes every resize a constant matrix product,
    the form that exports to ONNX; without it the network takes any size.
    `separable_pool`: separable argmax max pools in the CRP blocks when training; `winograd`:
    the decoder's 3x3 convolutions in Winograd form when training, where that pays (>= 256
    channels, >= 65x65). Both give the same results and a faster train step on CPU; None (the
    default) selects each on CPU only. Inference and export always run the plain form.
    """
    return RefineNet(num_classes=num_classes, depth=depth, bn_mode=bn_mode, input_size=input_size,
                     separable_pool=separable_pool, winograd=winograd)


__all__ = ["build_refinenet", "RefineNet", "feature_sizes", "DEPTHS", "BN_MODES"]
