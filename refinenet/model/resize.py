"""Bilinear resizing in two forms with the same numbers.

`op`: MindSpore's ResizeBilinearV2 (any input size). `matmul`: for a fixed input size, constant
interpolation matrices, Y = Ah . X . Aw^T — this form exports to ONNX (the exporter has no
ResizeBilinearV2). Two coordinate mappings are used by the network: `align_corners=True`
(src = dst * (in - 1) / (out - 1)) and the legacy asymmetric one of the ModelZoo's
`nn.ResizeBilinear(align_corners=False)` (src = dst * in / out, no half-pixel offset).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from mindspore import Tensor, nn, ops


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """(n_out, n_in) float32 matrix of 1-D linear interpolation weights."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        if align_corners:
            src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = i * n_in / n_out
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m.astype(np.float32)


class Resize(nn.Cell):
    """Resize (N, C, h, w) to the spatial size of a reference tensor, or to a fixed size."""

    def __init__(self, align_corners: bool, in_size: Optional[Tuple[int, int]] = None,
                 out_size: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.align_corners = align_corners
        self.use_matmul = in_size is not None and out_size is not None
        self.resize = ops.ResizeBilinearV2(align_corners=align_corners, half_pixel_centers=False)
        if self.use_matmul:
            self.ah = Tensor(interpolation_matrix(in_size[0], out_size[0], align_corners))
            self.awt = Tensor(interpolation_matrix(in_size[1], out_size[1], align_corners).T.copy())
        else:
            self.ah = Tensor(np.zeros((1, 1), np.float32))
            self.awt = Tensor(np.zeros((1, 1), np.float32))

    def construct(self, x, size):
        if self.use_matmul:
            return ops.matmul(ops.matmul(self.ah, x), self.awt)
        return self.resize(x, size)
