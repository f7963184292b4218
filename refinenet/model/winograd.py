"""A 3x3 stride-1 convolution that trains in Winograd form F(2x2,3x3): 2.25x fewer multiplications.

Same parameters as `nn.Conv2d` (`weight` (cout, cin, 3, 3), optional `bias`), so checkpoints are
unchanged; same results within float rounding (output and gradients ~1e-6 relative). Each 2x2
output tile is A^T [(G w G^T) * (B^T d B)] A over its 4x4 input tile d. Built from operators the
CPU backend runs fast:

- input transform: one fixed 1 -> 16 channel 4x4 stride-2 convolution over every (sample,
  channel) plane, padding included;
- weight transform: one (cout*cin, 9) x (9, 16) matmul;
- the 16 products: one 16-group 1x1 convolution, between two row gathers that turn the
  channel-major transform output into product-major groups and back (their gradients are the
  inverse gathers);
- output transform: one fixed 16 -> 1 channel 2x2 stride-2 transposed convolution, which also
  crops the last tile row and column for odd sizes.

Used only while training and only where it pays on CPU (cin and cout >= 256, feature map >= 65x65:
the RefineNet decoder at 1/4 and 1/8 resolution; `benchmarks/conv_winograd.py`). Inference and
export run the plain convolution.
"""
from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
#: input transform as a 1 -> 16 channel 4x4 kernel: channel i*4+j holds BT[i,a] * BT[j,b]
KERNEL_IN = np.einsum("ia,jb->ijab", BT, BT).reshape(16, 1, 4, 4)
#: weight transform G w G^T as one (9, 16) matrix on flattened 3x3 kernels
KERNEL_W = np.einsum("ia,jb->abij", G, G).reshape(9, 16)
#: output transform as the 16 -> 1 channel 2x2 kernel of a transposed convolution
KERNEL_OUT = np.einsum("pi,qj->ijpq", AT, AT).reshape(16, 1, 2, 2)


class RowOrder(nn.Cell):
    """Axis 1 of a (n, rows, cols) tensor in a fixed order; the gradient is the inverse order."""

    def __init__(self, order: np.ndarray):
        super().__init__()
        self.order = Tensor(order.astype(np.int32))
        self.inverse = Tensor(np.argsort(order).astype(np.int32))

    def construct(self, x):
        return ops.gather(x, self.order, 1)

    def bprop(self, x, out, dout):
        return (ops.gather(dout, self.inverse, 1),)


def _transpose_order(rows: int, cols: int) -> np.ndarray:
    """Indices that turn a row-major (rows, cols) index space into (cols, rows)."""
    return np.arange(rows * cols).reshape(rows, cols).T.reshape(-1)


class WinogradConv2d(nn.Conv2d):
    """3x3, stride 1, padding 1 convolution; Winograd F(2x2,3x3) while training where it pays."""

    #: smallest channel count (in and out) and feature-map side that take the Winograd form
    min_channels = 256
    min_size = 65

    def __init__(self, cin: int, cout: int, has_bias: bool = False, weight_init="normal"):
        super().__init__(cin, cout, 3, stride=1, pad_mode="pad", padding=1, has_bias=has_bias,
                         weight_init=weight_init)
        self.use_winograd = cin >= self.min_channels and cout >= self.min_channels
        self.kernel_in, self.kernel_w = Tensor(KERNEL_IN), Tensor(KERNEL_W)
        self.kernel_out = Tensor(KERNEL_OUT)
        self.to_product_major = RowOrder(_transpose_order(cin, 16))
        self.to_channel_major = RowOrder(_transpose_order(16, cout))
        self.products = ops.Conv2D(16 * cout, 1, group=16)
        # the input transform pads 1 before and 1 (even side) or 2 (odd side) after; the output
        # transform crops the extra output row/column of an odd side. Suffix: parity of h, w.
        self.transform_in_ee = self._transform_in(0, 0)
        self.transform_in_eo = self._transform_in(0, 1)
        self.transform_in_oe = self._transform_in(1, 0)
        self.transform_in_oo = self._transform_in(1, 1)
        self.transform_out_ee = self._transform_out(0, 0)
        self.transform_out_eo = self._transform_out(0, 1)
        self.transform_out_oe = self._transform_out(1, 0)
        self.transform_out_oo = self._transform_out(1, 1)

    @staticmethod
    def _transform_in(odd_h: int, odd_w: int):
        return ops.Conv2D(16, 4, pad_mode="pad", stride=2, pad=(1, 1 + odd_h, 1, 1 + odd_w))

    @staticmethod
    def _transform_out(odd_h: int, odd_w: int):
        return ops.Conv2DTranspose(16, 2, pad_mode="pad", stride=2, pad=(0, odd_h, 0, odd_w))

    def construct(self, x):
        n, _, h, w = x.shape
        if self.training and self.use_winograd and h >= self.min_size and w >= self.min_size:
            return self._winograd(x, n, h, w)
        return super().construct(x)

    def _winograd(self, x, n, h, w):
        cin, cout = self.in_channels, self.out_channels
        th, tw = (h + 1) // 2, (w + 1) // 2
        odd_h, odd_w = h % 2, w % 2
        planes = x.reshape(n * cin, 1, h, w)
        if odd_h and odd_w:
            v = self.transform_in_oo(planes, self.kernel_in)
        elif odd_h:
            v = self.transform_in_oe(planes, self.kernel_in)
        elif odd_w:
            v = self.transform_in_eo(planes, self.kernel_in)
        else:
            v = self.transform_in_ee(planes, self.kernel_in)
        v = self.to_product_major(v.reshape(n, cin * 16, th * tw)).reshape(n, 16 * cin, th, tw)
        u = ops.matmul(self.weight.reshape(cout * cin, 9), self.kernel_w)       # (cout*cin, 16)
        u = u.reshape(cout, cin, 16).transpose(2, 0, 1).reshape(16 * cout, cin, 1, 1)
        m = self.products(v, u).reshape(n, 16 * cout, th * tw)
        m = self.to_channel_major(m).reshape(n * cout, 16, th, tw)
        size = (n * cout, 1, h, w)
        if odd_h and odd_w:
            y = self.transform_out_oo(m, self.kernel_out, size)
        elif odd_h:
            y = self.transform_out_oe(m, self.kernel_out, size)
        elif odd_w:
            y = self.transform_out_eo(m, self.kernel_out, size)
        else:
            y = self.transform_out_ee(m, self.kernel_out, size)
        y = y.reshape(n, cout, h, w)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        return y
