"""Pixel-wise softmax cross entropy that ignores void pixels (MODELZOO_FACTS §4)."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class SegmentationLoss(nn.Cell):
    """Mean cross entropy over the pixels whose label is not `ignore_label`, over the whole batch.

    Logits (N, C, H, W) of any float type are computed in float32. A batch without any valid
    pixel gives loss 0 (the recipe divides by zero there).
    """

    def __init__(self, num_classes: int = 21, ignore_label: int = 255):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction="none")
        self.one_hot = ops.OneHot()
        self.on = ms.Tensor(1.0, ms.float32)
        self.off = ms.Tensor(0.0, ms.float32)

    def construct(self, logits, labels):
        logits = ops.cast(logits, ms.float32)
        flat = ops.reshape(ops.transpose(logits, (0, 2, 3, 1)), (-1, self.num_classes))
        labels = ops.reshape(ops.cast(labels, ms.int32), (-1,))
        valid = ops.not_equal(labels, self.ignore_label)
        weights = ops.cast(valid, ms.float32)
        safe_labels = ops.select(valid, labels, ops.zeros_like(labels))
        target = self.one_hot(safe_labels, self.num_classes, self.on, self.off)
        per_pixel = self.ce(flat, target)
        return ops.reduce_sum(per_pixel * weights) / ops.maximum(ops.reduce_sum(weights), 1.0)


class NetWithLoss(nn.Cell):
    """Network followed by the loss; parameter names stay unprefixed so checkpoints match the ModelZoo."""

    def __init__(self, net: nn.Cell, loss_fn: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn

    def construct(self, data, label):
        return self.loss_fn(self.net(data), label)


class LossAndGrads(nn.Cell):
    """The loss and the gradients of `weights` for one batch, no loss scale and no update (for
    comparing two formulations of the network)."""

    def __init__(self, with_loss: nn.Cell, weights):
        super().__init__(auto_prefix=False)
        self.with_loss = with_loss
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, x, y):
        return self.with_loss(x, y), self.grad(self.with_loss, self.weights)(x, y)
