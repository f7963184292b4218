"""refinenet-train on a tiny synthetic set: loss goes down, the contract's files and lines, exact resume."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refinenet import lr as lr_mod
from refinenet import manifest as mf
from refinenet.train import main
from tests.harness.data import make_dataset

EPOCHS = 3
TINY = ["--depth", "18", "--crop-size", "33", "--batch-size", "2", "--save-epochs", "1", "--base-lr", "0.002",
        "--workers", "1"]


def _train_cmd(data, out, *extra, epochs=EPOCHS):
    return [sys.executable, "-m", "refinenet.train", "--stage", "r1", "--data", str(data),
            "--output-dir", str(out), *TINY, "--epochs", str(epochs), *extra]


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory, child_env):
    """One uninterrupted run: (output dir, stdout)."""
    out = tmp_path_factory.mktemp("run") / "out"
    return out, _run(_train_cmd(data / "sbd_train_lst.txt", out), child_env)


def _records(out, rank=0):
    return [json.loads(line) for line in (out / "metrics" / f"rank_{rank}.jsonl").read_text().splitlines()]


def test_loss_goes_down(trained):
    records = _records(trained[0])
    by_epoch = {}
    for r in records:
        by_epoch.setdefault(r["epoch"], []).append(r["loss"])
    first, last = (sum(v) / len(v) for v in (by_epoch[1], by_epoch[EPOCHS]))
    assert last < 0.9 * first, by_epoch


def test_log_lines_and_metrics_follow_the_contract(trained):
    out, stdout = trained
    assert "training starts from random initialisation (no --pretrained; seed 1)" in stdout
    steps = int(re.search(r"(\d+) steps per epoch", stdout).group(1))
    step_lines = re.findall(r"^epoch: (\d+) step: (\d+), loss is (\d+\.\d+)$", stdout, re.M)
    assert [(int(e), int(s)) for e, s, _ in step_lines] == [
        (e, s) for e in range(1, EPOCHS + 1) for s in range(1, steps + 1)]
    epoch_lines = re.findall(r"^Train epoch time: \d+\.\d{3} ms, per step time: \d+\.\d{3} ms$", stdout, re.M)
    assert len(epoch_lines) == EPOCHS
    records = _records(out)
    assert [r["step"] for r in records] == list(range(1, EPOCHS * steps + 1))
    assert all(set(r) == {"step", "epoch", "loss", "lr", "seconds", "time"} for r in records)
    expected_lr = lr_mod.learning_rates("cos", 0.002, steps, EPOCHS)
    assert [r["lr"] for r in records] == pytest.approx(expected_lr)
    assert [float(v) for _, _, v in step_lines] == pytest.approx([r["loss"] for r in records], rel=1e-6)


def test_checkpoint_every_epoch_with_manifest(trained):
    out, stdout = trained
    complete, skipped = mf.scan(out / "ckpt")
    steps = int(re.search(r"(\d+) steps per epoch", stdout).group(1))
    assert skipped == []
    assert [(e.manifest.epoch, e.manifest.step, e.manifest.global_step) for e in complete] == [
        (e, steps, e * steps) for e in range(EPOCHS, 0, -1)]
    assert all(e.manifest.stage == "r1" and e.manifest.rank == 0 for e in complete)
    assert sorted(os.listdir(out / "ckpt")) == sorted(
        f"refinenet-{e}_{steps}.{ext}" for e in range(1, EPOCHS + 1) for ext in ("ckpt", "json"))


def _wait_for(path, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "training exited before writing " + str(path)
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_and_resumed_run_ends_bit_identical(trained, data, tmp_path, child_env):
    import mindspore as ms
    import numpy as np

    reference_out, stdout = trained
    steps = int(re.search(r"(\d+) steps per epoch", stdout).group(1))
    out = tmp_path / "out"
    cmd = _train_cmd(data / "sbd_train_lst.txt", out, "--resume", "auto")
    proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(out / "ckpt" / f"refinenet-1_{steps}.json", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted = [e.manifest.epoch for e in mf.scan(out / "ckpt")[0]]
    assert interrupted and max(interrupted) < EPOCHS
    resumed = _run(cmd, child_env)
    assert f"training starts from resume point {out / 'ckpt'}" in resumed
    assert f"at epoch {max(interrupted)}, global step {max(interrupted) * steps}" in resumed
    assert f"epoch: {max(interrupted) + 1} step: 1," in resumed and "epoch: 1 step: 1," not in resumed
    name = f"refinenet-{EPOCHS}_{steps}.ckpt"
    ref, got = (ms.load_checkpoint(str(d / "ckpt" / name)) for d in (reference_out, out))
    assert ref.keys() == got.keys()
    assert [k for k in ref if not np.array_equal(ref[k].asnumpy(), got[k].asnumpy())] == []
    last_epoch = list(range((EPOCHS - 1) * steps + 1, EPOCHS * steps + 1))
    assert [r["step"] for r in _records(out)][-steps:] == last_epoch


def test_r2_starts_from_the_latest_r1_checkpoint(trained, data, tmp_path, child_env):
    r1_out, _ = trained
    cmd = [sys.executable, "-m", "refinenet.train", "--stage", "r2",
           "--data", str(data / "voc_train_lst.txt"), "--output-dir", str(tmp_path / "r2"),
           "--pretrained", f"latest:{r1_out / 'ckpt'}",
           *TINY, "--epochs", "1"]
    stdout = _run(cmd, child_env)
    newest = mf.scan(r1_out / "ckpt")[0][0].path
    assert f"training starts from pretrained weights {newest}" in stdout
    assert "lr cos base 0.002" in stdout
    assert [e.manifest.stage for e in mf.scan(tmp_path / "r2")[0]] == ["r2"]


def _main_fails(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err
    return err


def test_bad_inputs_are_refused_before_anything_is_written(data, tmp_path, capsys):
    lst = str(data / "sbd_train_lst.txt")
    out = tmp_path / "out"
    base = ["--output-dir", str(out), *TINY, "--epochs", "1"]
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint" * 50)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["--stage", "r3", "--data", lst], "--stage"),
        (["--stage", "r1", "--data", str(tmp_path / "none.lst")], "none.lst"),
        (["--stage", "r1", "--data", lst, "--pretrained", str(garbage)], "garbage.ckpt"),
        (["--stage", "r1", "--data", lst, "--pretrained", str(tmp_path / "nope.ckpt")], "does not exist"),
        (["--stage", "r2", "--data", lst, "--pretrained", f"latest:{tmp_path / 'empty'}"],
         "no complete checkpoint"),
        (["--stage", "r1", "--data", lst, "--resume", str(tmp_path / "nope.ckpt")], "--resume"),
        (["--stage", "r1", "--data", lst, "--amp-level", "O2", "--amp-dtype", "bfloat16"], "bfloat16"),
        (["--stage", "r1", "--data", lst, "--amp-level", "O1"], "O2 or O3"),
        (["--stage", "r1", "--data", lst, "--batch-size", "100"], "fewer than one global batch"),
        (["--stage", "r1", "--data", lst, "--min-scale", "2", "--max-scale", "1"], "--min-scale"),
        (["--stage", "r1", "--data", lst, "--output-dir", str(tmp_path / "a_file")], "not a directory"),
    ]
    for argv, needle in cases:
        _main_fails(capsys, base + argv, needle)
        assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        main(["--stage", "r1", "--output-dir", str(out)])
    assert exc.value.code == 2 and not out.exists()


def test_pretrained_that_does_not_fit_the_network_is_bad_input(trained, data, tmp_path, capsys):
    newest = mf.scan(trained[0] / "ckpt")[0][0].path
    out = tmp_path / "out"
    argv = ["--stage", "r2", "--data", str(data / "voc_train_lst.txt"), "--output-dir", str(out),
            "--pretrained", newest, *TINY, "--epochs", "1", "--depth", "34"]
    _main_fails(capsys, argv, newest)
    assert not out.exists()


def test_resume_from_the_last_epoch_has_nothing_to_do(trained, tmp_path, data, child_env):
    out, _ = trained
    final = mf.scan(out / "ckpt")[0][0]
    cmd = _train_cmd(data / "sbd_train_lst.txt", tmp_path / "again", "--resume", final.path)
    stdout = _run(cmd, child_env)
    assert f"nothing to train: the start point is epoch {EPOCHS} of {EPOCHS}" in stdout
    assert not Path(tmp_path / "again" / "ckpt").exists() or not os.listdir(tmp_path / "again" / "ckpt")
