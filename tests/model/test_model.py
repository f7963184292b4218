"""The network: ModelZoo names and shapes (ResNet-101, build only), and both resize forms on a tiny input."""
from pathlib import Path

import mindspore as ms
import numpy as np

from refinenet.model import build_refinenet, feature_sizes

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "modelzoo" / "modelzoo_refinenet_params.tsv"


def _reference():
    rows = []
    for line in REFERENCE.read_text().splitlines():
        name, shape = line.split("\t")
        rows.append((name, tuple(int(d) for d in shape.strip("()").split(",") if d.strip())))
    return rows


def test_resnet101_names_and_shapes_match_modelzoo():
    net = build_refinenet(num_classes=21, depth=101)
    params = [(p.name, tuple(p.shape)) for p in net.get_parameters()]
    assert params == _reference()
    assert len(params) == 608
    assert sum(1 for p in net.trainable_params()) == 400
    assert sum(int(np.prod(s)) for _, s in params) == 118_157_781


def test_feature_sizes_of_513():
    assert feature_sizes(513, 513) == ((129, 129), (65, 65), (33, 33), (17, 17))


def test_fixed_size_network_equals_dynamic_one():
    """The exportable form (constant interpolation matrices) computes what the resize operator does."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(3)
    dynamic = build_refinenet(num_classes=4, depth=18)
    fixed = build_refinenet(num_classes=4, depth=18, input_size=(37, 45))
    ms.load_param_into_net(fixed, {p.name: p for p in dynamic.get_parameters()}, strict_load=True)
    dynamic.set_train(False)
    fixed.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 37, 45)).astype(np.float32))
    a, b = dynamic(x).asnumpy(), fixed(x).asnumpy()
    assert a.shape == b.shape == (1, 4, 37, 45)
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max()))
