"""The faster training formulation (separable argmax max pools in the CRP blocks, the decoder's 3x3
convolutions in Winograd form) computes what the original one does: same parameter names and
shapes, same loss and gradients (1e-5 relative), same inference output. Tiny network (depth 18,
33x33, every decoder convolution made eligible for the Winograd form) so it runs in seconds; the
RefineNet-101 figures come from benchmarks/train_step_formulation.py (docs/performance.md)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import ops

from refinenet.loss import LossAndGrads, NetWithLoss, SegmentationLoss
from refinenet.model import build_refinenet
from refinenet.model.refinenet import MaxPool5x5
from refinenet.model.winograd import WinogradConv2d

NUM_CLASSES = 5
CROP = 33


def _rel(a, b):
    scale = float(np.abs(b).max())
    diff = float(np.abs(a - b).max())
    return diff / scale if scale else diff


def _loss_and_grads(fast):
    ms.set_seed(5)
    net = build_refinenet(num_classes=NUM_CLASSES, depth=18, bn_mode="frozen", separable_pool=fast,
                          winograd=fast)
    rng = np.random.default_rng(11)
    for p in net.get_parameters():  # trained-like BN values instead of the identity of a fresh BN
        if p.name.endswith((".gamma", ".moving_variance")):
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, size=p.shape).astype(np.float32)))
        elif p.name.endswith((".beta", ".moving_mean")):
            p.set_data(ms.Tensor(rng.uniform(-0.2, 0.2, size=p.shape).astype(np.float32)))
    with_loss = NetWithLoss(net, SegmentationLoss(NUM_CLASSES, 255))
    with_loss.set_train()
    data_rng = np.random.default_rng(0)
    x = ms.Tensor(data_rng.standard_normal((2, 3, CROP, CROP)).astype(np.float32))
    labels = data_rng.integers(0, NUM_CLASSES, size=(2, CROP, CROP)).astype(np.int32)
    labels[:, :4] = 255
    weights = net.trainable_params()
    loss, grads = LossAndGrads(with_loss, ms.ParameterTuple(weights))(x, ms.Tensor(labels))
    names = [(p.name, tuple(p.shape)) for p in net.get_parameters()]
    return net, x, float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(weights, grads)}, names


@pytest.fixture(scope="module")
def both():
    ms.set_context(mode=ms.GRAPH_MODE)
    saved = WinogradConv2d.min_size
    WinogradConv2d.min_size = 1  # the decoder maps of a 33x33 input are 9x9 and smaller
    try:
        return _loss_and_grads(False), _loss_and_grads(True)
    finally:
        WinogradConv2d.min_size = saved


def test_same_parameter_names_and_shapes(both):
    (_, _, _, _, old_names), (_, _, _, _, new_names) = both
    assert new_names == old_names


def test_same_loss_and_gradients(both):
    (_, _, old_loss, old_grads, _), (_, _, new_loss, new_grads, _) = both
    assert abs(new_loss - old_loss) <= 1e-5 * abs(old_loss)
    assert new_grads.keys() == old_grads.keys()
    assert any(np.abs(g).max() > 0 for g in old_grads.values())
    worst = max((_rel(new_grads[k], old_grads[k]), k) for k in old_grads)
    assert worst[0] <= 1e-5, worst


def test_same_inference_output(both):
    (old_net, x, _, _, _), (new_net, _, _, _, _) = both
    old_net.set_train(False)
    new_net.set_train(False)
    assert np.array_equal(old_net(x).asnumpy(), new_net(x).asnumpy())


def test_separable_pool_equals_square_pool():
    ms.set_context(mode=ms.GRAPH_MODE)
    x = ms.Tensor(np.random.default_rng(3).standard_normal((1, 4, 11, 9)).astype(np.float32))
    square, separable = MaxPool5x5(separable=False), MaxPool5x5(separable=True)
    square.set_train()
    separable.set_train()
    assert np.array_equal(square(x).asnumpy(), separable(x).asnumpy())
    grad = ops.GradOperation()
    gs, gp = grad(square)(x).asnumpy(), grad(separable)(x).asnumpy()
    assert np.array_equal(gs, gp)


def test_cpu_default_trains_the_fast_form_down_to_one_pixel_maps(monkeypatch):
    ms.set_context(mode=ms.GRAPH_MODE)
    assert ms.get_context("device_target") == "CPU"
    monkeypatch.setattr(WinogradConv2d, "min_size", 1)
    net = build_refinenet(num_classes=NUM_CLASSES, depth=18)
    pools = [cell for _, cell in net.cells_and_names() if isinstance(cell, MaxPool5x5)]
    assert len(pools) == 4 and all(p.separable for p in pools)
    assert sum(isinstance(cell, WinogradConv2d) for _, cell in net.cells_and_names()) == 66
    plain = build_refinenet(num_classes=NUM_CLASSES, depth=18, separable_pool=False, winograd=False)
    assert not plain.mflow_conv_g1_pool[0].pool.separable
    assert not any(isinstance(cell, WinogradConv2d) for _, cell in plain.cells_and_names())
    with_loss = NetWithLoss(net, SegmentationLoss(NUM_CLASSES, 255))
    with_loss.set_train()
    x = ms.Tensor(np.random.default_rng(1).standard_normal((1, 3, 17, 17)).astype(np.float32))  # layer4: 1x1
    labels = ms.Tensor(np.zeros((1, 17, 17), np.int32))
    loss, grads = LossAndGrads(with_loss, ms.ParameterTuple(net.trainable_params()))(x, labels)
    assert np.isfinite(float(loss.asnumpy())) and all(np.isfinite(g.asnumpy()).all() for g in grads)
