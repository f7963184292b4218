"""Atomic checkpoints: the previous good checkpoint survives any failure, readers skip partial ones."""
import json
import os
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from refinenet import checkpoints as ck
from refinenet import manifest as mf
from refinenet.loss import NetWithLoss, SegmentationLoss

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


def _train_cell(seed=0):
    ms.set_seed(seed)
    net = nn.SequentialCell([nn.Conv2d(3, 4, 3, has_bias=True), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.Conv2d(4, 3, 1)])
    opt = nn.Momentum(net.trainable_params(), learning_rate=[0.1, 0.05, 0.02, 0.01], momentum=0.9)
    cell = nn.TrainOneStepCell(NetWithLoss(net, SegmentationLoss(num_classes=3)), opt)
    cell.set_train()
    return cell


def _step(cell, n=1):
    rng = np.random.default_rng(7)
    x = ms.Tensor(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 3, size=(2, 8, 8)).astype(np.int32))
    for _ in range(n):
        cell(x, y)


def _save(cell, folder, epoch, steps=2):
    return ck.save_atomic(cell, folder, stage="r1", epoch=epoch, step=steps, steps_per_epoch=steps,
                          global_step=epoch * steps, rank=0)


def _values(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def test_save_writes_checkpoint_then_manifest(tmp_path):
    cell = _train_cell()
    ref = _save(cell, tmp_path, 1)
    assert sorted(os.listdir(tmp_path)) == ["refinenet-1_2.ckpt", "refinenet-1_2.json"]
    assert mf.verify(ref.path) == ref.manifest
    keys = set(ms.load_checkpoint(str(ref.path)))
    assert {"global_step", "learning_rate", "momentum", "0.weight", "moments.0.weight"} <= keys


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cell = _train_cell()
    good = _save(cell, tmp_path, 1)
    real_save = ms.save_checkpoint

    def dies_midway(obj, name, **kwargs):
        real_save(obj, name, **kwargs)
        with open(name, "r+b") as f:
            f.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", dies_midway)
    with pytest.raises(OSError):
        _save(cell, tmp_path, 2)
    assert sorted(os.listdir(tmp_path)) == ["refinenet-1_2.ckpt", "refinenet-1_2.json"]
    assert ck.latest_complete(tmp_path).path == good.path


def test_resave_same_name_stays_complete(tmp_path):
    cell = _train_cell()
    _save(cell, tmp_path, 1)
    _step(cell)
    again = _save(cell, tmp_path, 1)
    assert mf.verify(again.path).sha256 == mf.file_sha256(again.path)
    assert sorted(os.listdir(tmp_path)) == ["refinenet-1_2.ckpt", "refinenet-1_2.json"]


def test_latest_complete_skips_partial_corrupt_and_unloadable(tmp_path, caplog):
    cell = _train_cell()
    for epoch in (1, 2, 3, 4):
        _save(cell, tmp_path, epoch)
    with open(tmp_path / "refinenet-4_2.ckpt", "r+b") as f:
        f.truncate(50)
    (tmp_path / "refinenet-3_2.json").unlink()
    # A file with a valid manifest whose bytes MindSpore cannot parse.
    bogus = tmp_path / "refinenet-5_2.ckpt"
    bogus.write_bytes(b"not a checkpoint" * 10)
    mf.write_manifest(bogus, mf.make_manifest(bogus, stage="r1", epoch=5, step=2, steps_per_epoch=2,
                                              global_step=10, rank=0))
    with caplog.at_level("WARNING"):
        found = ck.latest_complete(tmp_path)
    assert found.path.name == "refinenet-2_2.ckpt" and found.manifest.global_step == 4
    text = caplog.text
    assert "refinenet-4_2.ckpt" in text and "partial" in text
    assert "refinenet-3_2.ckpt" in text and "manifest is missing" in text
    assert "refinenet-5_2.ckpt" in text and "not loadable" in text


def test_resolve_ckpt_ref(tmp_path):
    cell = _train_cell()
    _save(cell, tmp_path / "ckpt", 1)
    newest = _save(cell, tmp_path / "ckpt", 2)
    assert ck.resolve_ckpt_ref(f"latest:{tmp_path / 'ckpt'}").path == newest.path
    assert ck.resolve_ckpt_ref(f"latest:{tmp_path}").path == newest.path
    assert ck.resolve_ckpt_ref(str(newest.path)).manifest.epoch == 2
    (tmp_path / "empty").mkdir()
    for ref, needle in ((f"latest:{tmp_path / 'empty'}", "no complete checkpoint"),
                        (f"latest:{tmp_path / 'nope'}", "not a directory"), ("latest:", "names no directory"),
                        (str(tmp_path / "missing.ckpt"), "does not exist")):
        with pytest.raises(ck.CheckpointError, match=needle):
            ck.resolve_ckpt_ref(ref)


def test_prune_keeps_newest(tmp_path):
    cell = _train_cell()
    for epoch in (1, 2, 3, 4):
        _save(cell, tmp_path, epoch)
    removed = ck.prune(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["refinenet-1_2.ckpt", "refinenet-2_2.ckpt"]
    assert sorted(os.listdir(tmp_path)) == ["refinenet-3_2.ckpt", "refinenet-3_2.json",
                                            "refinenet-4_2.ckpt", "refinenet-4_2.json"]


def test_restore_training_state_brings_back_weights_moments_and_step(tmp_path):
    cell = _train_cell(seed=0)
    _step(cell, 2)
    ref = _save(cell, tmp_path, 1)
    saved = _values(cell)
    fresh = _train_cell(seed=5)
    assert not np.array_equal(fresh.optimizer.global_step.asnumpy(), saved["global_step"])
    ck.restore_training_state(ref.path, fresh)
    restored = _values(fresh)
    assert set(restored) == set(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    _step(cell)
    _step(fresh)
    for name, value in _values(cell).items():
        np.testing.assert_array_equal(_values(fresh)[name], value, err_msg=name)


def test_restore_refuses_weights_only_checkpoint(tmp_path):
    cell = _train_cell()
    path = tmp_path / "weights.ckpt"
    ms.save_checkpoint(cell.network, str(path))
    with pytest.raises(ck.CheckpointError, match="not a training checkpoint"):
        ck.restore_training_state(path, _train_cell())


_SAVER = """
import sys, refinenet, mindspore as ms, numpy as np
from refinenet import checkpoints as ck
ms.set_device("CPU")
params = [ms.Parameter(ms.Tensor(np.full((512, 1024), i, np.float32)), name=f"w{i}") for i in range(8)]
params.append(ms.Parameter(ms.Tensor(np.zeros((1,), np.int32)), name="global_step"))
for epoch in range(1, 10000):
    params[0].set_data(ms.Tensor(np.full((512, 1024), epoch, np.float32)))
    ck.save_atomic(params, sys.argv[1], stage="r1", epoch=epoch, step=1, steps_per_epoch=1,
                   global_step=epoch, rank=0)
    print(epoch, flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.037, 0.11])
def test_kill_during_saves_never_loses_a_complete_checkpoint(tmp_path, delay):
    """SIGKILL a process that saves 16 MiB checkpoints back to back, at several moments."""
    folder = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        seen = 0
        while seen < 3:
            line = proc.stdout.readline()
            assert line, "saver exited early"
            seen = int(line)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    complete, _ = mf.scan(folder)
    epochs = [e.manifest.epoch for e in complete]
    assert epochs and epochs == sorted(epochs, reverse=True)
    assert epochs[0] >= seen and set(range(1, epochs[0] + 1)) == set(epochs)
    for entry in complete:
        params = ms.load_checkpoint(entry.path)
        assert float(params["w0"].asnumpy()[0, 0]) == entry.manifest.epoch
    scan = subprocess.run([sys.executable, "-m", "refinenet.manifest", "scan", str(folder), "--verify"],
                          capture_output=True, text=True, timeout=60)
    assert [r["epoch"] for r in json.loads(scan.stdout)] == epochs
