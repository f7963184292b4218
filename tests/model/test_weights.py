"""Checkpoint reading and loading: reports, official ResNet names, optimizer state, bad files."""
import logging
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from refinenet import ckpt_reader, weights
from refinenet.checkpoints import CheckpointError
from refinenet.model import build_refinenet
from refinenet.weights import CheckpointLoadError, load_into, load_pretrained, read_checkpoint


@pytest.fixture(scope="module")
def net18():
    ms.set_seed(1)
    return build_refinenet(num_classes=21, depth=18)


def _snapshot(net, names=None):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters() if names is None or p.name in names}


def _save(path, arrays):
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], str(path))
    return path


@pytest.mark.parametrize("crc", [False, True])
def test_reader_matches_mindspore(tmp_path, crc):
    rng = np.random.default_rng(0)
    arrays = {
        "a.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b.half": rng.standard_normal((5,)).astype(np.float16),
        "c.double": rng.standard_normal((2, 2)).astype(np.float64),
        "d.int": np.arange(6, dtype=np.int32).reshape(2, 3),
        "e.long": np.array([7], dtype=np.int64),
        "f.bytes": np.arange(9, dtype=np.uint8),
        "g.flags": np.array([True, False, True]),
        "global_step": np.array(12, dtype=np.int32),
    }
    path = tmp_path / "mixed.ckpt"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], str(path),
                       crc_check=crc, append_dict={"epoch_num": 3})
    ours = read_checkpoint(path)
    theirs = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}
    assert set(ours) == set(theirs) == set(arrays) | {"epoch_num"}
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype, name
        assert ours[name].shape == value.shape, name
        np.testing.assert_array_equal(ours[name], value)
    assert weights.read_checkpoint_names(path)[:2] == ["a.weight", "b.half"]


def test_official_resnet101_checkpoint_loads_every_backbone_tensor(tmp_path, caplog):
    """down_sample_layer is mapped to downsample (20 tensors the ModelZoo left at their init values)."""
    ms.set_seed(2)
    net = build_refinenet(num_classes=21, depth=101)
    path = weights.save_official_resnet(net, tmp_path / "resnet101.ckpt")
    saved = read_checkpoint(path)
    assert len(saved) == 522 and "end_point.weight" in saved
    assert sum("down_sample_layer" in n for n in saved) == 20
    decoder_before = net.clf_conv.weight.asnumpy().copy()
    for p in net.get_parameters():
        if weights.is_backbone_name(p.name):
            p.set_data(ms.Tensor(np.zeros(p.shape, np.float32)))

    with caplog.at_level(logging.INFO, logger="refinenet.weights"):
        report = load_into(net, path, kind="backbone")
    assert report.expected == 520 and len(report.loaded) == 520
    assert report.complete and report.exact
    assert report.missing == () and report.unexpected == () and report.shape_mismatches == ()
    assert report.ignored == ("end_point.weight", "end_point.bias")
    assert len(report.renamed) == 20
    assert ("layer3.0.down_sample_layer.1.moving_variance", "layer3.0.downsample.1.moving_variance") \
        in report.renamed
    assert "loaded 520/520" in report.summary()
    assert any("loaded 520/520" in r.getMessage() for r in caplog.records)
    params = {p.name: p for p in net.get_parameters()}
    np.testing.assert_array_equal(params["layer4.0.downsample.0.weight"].asnumpy(),
                                  saved["layer4.0.down_sample_layer.0.weight"])
    np.testing.assert_array_equal(params["layer2.3.bn3.gamma"].asnumpy(), saved["layer2.3.bn3.gamma"])
    np.testing.assert_array_equal(net.clf_conv.weight.asnumpy(), decoder_before)


def test_optimizer_state_is_counted_not_loaded(net18):
    net_names = [p.name for p in net18.get_parameters()]
    source = {p.name: p for p in net18.get_parameters()}
    source.update({f"moments.{n}": np.zeros(1, np.float32) for n in net_names[:5]})
    source.update({"learning_rate": np.ones(10, np.float32), "momentum": np.float32(0.9),
                   "global_step": np.array([3], np.int32)})
    report = load_into(net18, source)
    assert report.exact and len(report.loaded) == len(net_names) == report.expected
    assert sorted(report.optimizer_state) == sorted([f"moments.{n}" for n in net_names[:5]]
                                                    + ["learning_rate", "momentum", "global_step"])
    assert report.unexpected == ()


def test_missing_and_unexpected_are_reported(net18):
    source = {"conv1.weight": net18.conv1.weight, "clf_conv.bias": net18.clf_conv.bias,
              "head.fc.weight": np.zeros((2, 2), np.float32)}
    report = load_into(net18, source)
    assert report.loaded == ("conv1.weight", "clf_conv.bias")
    assert report.unexpected == ("head.fc.weight",)
    assert len(report.missing) == report.expected - 2
    assert not report.complete
    with pytest.raises(CheckpointLoadError) as err:
        report.require_complete()
    assert err.value.tensor == report.missing[0] and "missing" in str(err.value)


def test_wrong_shape_names_file_and_tensor_and_changes_nothing(tmp_path, net18):
    before = _snapshot(net18, {"conv1.weight", "clf_conv.weight"})
    path = _save(tmp_path / "five_classes.ckpt", {
        "conv1.weight": np.ones((64, 3, 7, 7), np.float32),
        "clf_conv.weight": np.ones((5, 256, 3, 3), np.float32)})
    with pytest.raises(CheckpointLoadError) as err:
        load_into(net18, path)
    assert err.value.path == str(path) and err.value.tensor == "clf_conv.weight"
    message = str(err.value)
    assert str(path) in message and "(5, 256, 3, 3)" in message and "(21, 256, 3, 3)" in message
    assert isinstance(err.value, CheckpointError)
    after = _snapshot(net18, set(before))
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])

    report = load_into(net18, path, strict_shapes=False)
    assert report.loaded == ("conv1.weight",)
    assert [m.name for m in report.shape_mismatches] == ["clf_conv.weight"]
    assert "clf_conv.weight" not in report.missing
    with pytest.raises(CheckpointLoadError, match="clf_conv.weight"):
        report.require_complete()
    np.testing.assert_array_equal(net18.conv1.weight.asnumpy(), np.ones((64, 3, 7, 7), np.float32))
    load_into(net18, {n: a for n, a in before.items()})


@pytest.fixture
def three_tensors(tmp_path):
    arrays = {"first.weight": np.ones((10,), np.float32), "second.weight": np.ones((1000,), np.float32),
              "third.weight": np.ones((10,), np.float32)}
    return _save(tmp_path / "three.ckpt", arrays)


def test_truncated_file_names_the_tensor(tmp_path, three_tensors):
    data = three_tensors.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointLoadError) as err:
        read_checkpoint(cut)
    assert err.value.path == str(cut) and err.value.tensor == "second.weight"
    assert "truncated" in str(err.value) and str(cut) in str(err.value)


def test_corrupt_files_are_refused_with_the_file_name(tmp_path, three_tensors, net18):
    data = bytearray(three_tensors.read_bytes())
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    # The length of the second record's tensor content, one byte too short: sizes no longer agree.
    header = data.index(b"second.weight")
    content = data.index(bytes([0x1A, 0xA0, 0x1F]), header)  # field 3, length 4000 (varint a0 1f)
    data[content + 1] = 0x9F
    shrunk = tmp_path / "shrunk.ckpt"
    shrunk.write_bytes(bytes(data))
    for path, tensor, words in ((garbage, None, "corrupt"), (empty, None, "empty"),
                                (shrunk, "second.weight", "corrupt"),
                                (tmp_path / "absent.ckpt", None, "does not exist")):
        with pytest.raises(CheckpointLoadError) as err:
            load_into(net18, path)
        assert err.value.path == str(path), path
        assert str(path) in str(err.value) and words in str(err.value), str(err.value)
        if tensor:
            assert err.value.tensor == tensor, str(err.value)


def test_load_pretrained_tells_backbone_from_refinenet(tmp_path, net18):
    official = weights.save_official_resnet(net18, tmp_path / "resnet18.ckpt", fc_classes=10,
                                            optimizer_state=True)
    report = load_pretrained(net18, official)
    assert report.kind == "backbone" and report.exact and len(report.loaded) == report.expected
    assert len(report.optimizer_state) == len(read_checkpoint(official)) - len(report.loaded) - 2
    deeper = build_refinenet(num_classes=21, depth=34)
    with pytest.raises(CheckpointLoadError) as err:
        load_pretrained(deeper, official)
    assert err.value.path == str(official) and err.value.tensor.startswith("layer")

    partial = _save(tmp_path / "partial.ckpt", {"clf_conv.bias": np.zeros(21, np.float32)})
    with pytest.raises(CheckpointLoadError, match="missing from the checkpoint"):
        load_pretrained(net18, partial)


def test_the_reader_stands_alone_and_is_shared():
    """ckpt_reader imports nothing else of refinenet; checkpoints and weights use its classes."""
    code = ("import sys, refinenet.ckpt_reader\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('refinenet.'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["refinenet._cpu", "refinenet.ckpt_reader"]
    assert CheckpointError is ckpt_reader.CheckpointError
    assert CheckpointLoadError is ckpt_reader.CheckpointLoadError
    assert weights.read_checkpoint_names is ckpt_reader.read_checkpoint_names
