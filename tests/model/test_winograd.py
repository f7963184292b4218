"""WinogradConv2d: the training form F(2x2,3x3) computes what nn.Conv2d computes (output, input and
weight gradients within float rounding) for odd and even sizes, batches and biases; inference runs
the plain convolution; small layers keep the plain form."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from refinenet.model.winograd import WinogradConv2d


class Dot(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, dy):
        return (self.net(x) * dy).sum()


def _pair(cin, cout, bias):
    plain = nn.Conv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=bias, bias_init="normal")
    wino = WinogradConv2d(cin, cout, has_bias=bias)
    wino.weight.set_data(plain.weight.data)
    if bias:
        wino.bias.set_data(plain.bias.data)
    return plain, wino


def _outputs_and_grads(net, x, dy):
    params = ms.ParameterTuple(net.trainable_params())
    grad = ops.GradOperation(get_all=True, get_by_list=True)(Dot(net), params)
    (gx, _), gparams = grad(x, dy)
    return [net(x).asnumpy(), gx.asnumpy()] + [g.asnumpy() for g in gparams]


@pytest.fixture
def small_layers_take_winograd(monkeypatch):
    ms.set_context(mode=ms.GRAPH_MODE)
    monkeypatch.setattr(WinogradConv2d, "min_channels", 1)
    monkeypatch.setattr(WinogradConv2d, "min_size", 1)


@pytest.mark.parametrize("n,cin,cout,h,w,bias", [
    (1, 8, 6, 9, 9, True), (2, 5, 7, 8, 10, False), (1, 4, 4, 7, 6, True), (3, 6, 4, 2, 3, True)])
def test_training_form_equals_conv2d(small_layers_take_winograd, n, cin, cout, h, w, bias):
    rng = np.random.default_rng(h * 100 + w)
    plain, wino = _pair(cin, cout, bias)
    plain.set_train()
    wino.set_train()
    x = ms.Tensor(rng.standard_normal((n, cin, h, w)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((n, cout, h, w)).astype(np.float32))
    ref, got = _outputs_and_grads(plain, x, dy), _outputs_and_grads(wino, x, dy)
    assert [a.shape for a in got] == [a.shape for a in ref]
    for a, b in zip(got, ref):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    assert not np.array_equal(got[0], ref[0])  # the Winograd form ran (rounding differs)


def test_inference_is_the_plain_convolution(small_layers_take_winograd):
    plain, wino = _pair(4, 4, True)
    plain.set_train(False)
    wino.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 4, 9, 9)).astype(np.float32))
    assert np.array_equal(plain(x).asnumpy(), wino(x).asnumpy())


def test_small_layers_keep_the_plain_form():
    ms.set_context(mode=ms.GRAPH_MODE)
    assert not WinogradConv2d(128, 256).use_winograd and WinogradConv2d(256, 256).use_winograd
    plain, wino = _pair(256, 256, False)
    plain.set_train()
    wino.set_train()
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 256, 8, 8)).astype(np.float32))  # < min_size
    assert np.array_equal(plain(x).asnumpy(), wino(x).asnumpy())
