"""refinenet-train on a tiny synthetic set: loss goes down, the contract's files and lines, exact resume
(from an epoch end after a kill, and from any step after a save request)."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
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


@pytest.fixture(autouse=True)
def _signal_state_restored():
    """`main` called in this process takes SIGUSR1 over (blocks it, installs a handler): give both back,
    so later tests and the processes they start see the interpreter's defaults."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    handler = signal.getsignal(signal.SIGUSR1)
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    signal.signal(signal.SIGUSR1, handler)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory, child_env):
    """One uninterrupted run: (output dir, stdout)."""
    out = tmp_path_factory.mktemp("run") / "out"
    return out, _run(_train_cmd(data / "sbd_train_lst.txt", out), child_env)


def _all_records(out, rank=0):
    return [json.loads(line) for line in (out / "metrics" / f"rank_{rank}.jsonl").read_text().splitlines()]


def _records(out, rank=0):
    """The per-step records."""
    return [r for r in _all_records(out, rank) if "event" not in r]


def _events(out, rank=0):
    return [r for r in _all_records(out, rank) if "event" in r]


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


def test_phase_events_of_a_fresh_run(trained):
    out, _ = trained
    events = _events(out)
    assert [e["event"] for e in events] == ["process_start", "imports", "cluster", "first_step"]
    start, imports, cluster, first = events
    assert start["since_start"] == 0 and "seconds" not in start and start["pid"] > 0 and start["main_s"] >= 0
    times = [e["time"] for e in events]
    assert times == sorted(times)
    for before, e in zip(events, events[1:]):
        assert e["seconds"] == pytest.approx(e["time"] - before["time"], abs=1e-5)
        assert e["since_start"] == pytest.approx(e["time"] - start["time"], abs=1e-5)
    assert (cluster["rank"], cluster["ranks"]) == (0, 1) and cluster["init_s"] >= 0
    step_one = _records(out)[0]
    assert (first["step"], first["epoch"], first["epoch_step"]) == (1, 1, 1)
    assert first["step_s"] == step_one["seconds"] and first["time"] >= step_one["time"]
    lines = (out / "metrics" / "rank_0.jsonl").read_text().splitlines()
    assert json.loads(lines[4])["event"] == "first_step" and "event" not in json.loads(lines[3])


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


def _popen(cmd, env):
    """Start `cmd` with its output in a temporary file (a pipe nobody reads could fill and stall it)."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def _popen_with_usr1_blocked(cmd, env):
    """Start `cmd` with SIGUSR1 blocked, as a launcher that may ask before the handler is in place does."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        return _popen(cmd, env)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _finish(proc, timeout=600):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.log.seek(0)
    stdout = proc.log.read()
    proc.log.close()
    assert proc.returncode == 0, stdout[-3000:]
    return stdout


@pytest.mark.slow
def test_stopped_on_request_at_any_step_and_resumed_ends_bit_identical(trained, data, tmp_path, child_env):
    """Three runs: SIGUSR1 sent at once (still starting up) stops after the first step; the resumed run,
    signalled while training, stops after a later step; the last run finishes. Every step is taken
    once, with the uninterrupted run's loss and learning rate, and the final checkpoints are equal."""
    import mindspore as ms
    import numpy as np

    reference_out, stdout = trained
    steps = int(re.search(r"(\d+) steps per epoch", stdout).group(1))
    out = tmp_path / "out"
    env = dict(child_env, REFINENET_JOB_ID="job-r", REFINENET_SAVE_REQUEST=str(tmp_path / "request"))
    cmd = _train_cmd(data / "sbd_train_lst.txt", out, "--resume", "auto")

    first = _popen_with_usr1_blocked(cmd, env)
    first.send_signal(signal.SIGUSR1)
    said = _finish(first)
    ckpt = out / "ckpt" / "refinenet-1_1.ckpt"
    assert f"saved on request at epoch 1 step 1 (global step 1): {ckpt}" in said
    assert mf.verify(ckpt).job_id == "job-r" and mf.verify(ckpt).global_step == 1
    assert [e["event"] for e in _events(out)][-1] == "saved_on_request"
    assert _events(out)[-1]["checkpoint"] == str(ckpt) and _events(out)[-1]["step"] == 1

    second = _popen(cmd, env)
    _wait_until(lambda: any(r["step"] >= 2 for r in _records(out)), second)
    second.send_signal(signal.SIGUSR1)
    said = _finish(second)
    assert f"training starts from resume point {ckpt} at epoch 1 step 1, global step 1" in said
    assert "epoch: 1 step: 2," in said and "epoch: 1 step: 1," not in said
    stop = re.search(r"saved on request at epoch (\d+) step (\d+) \(global step (\d+)\): (\S+)", said)
    assert stop, said[-2000:]
    epoch, step, global_step = (int(g) for g in stop.groups()[:3])
    assert 2 <= global_step < EPOCHS * steps and (epoch - 1) * steps + step == global_step
    loaded = [e for e in _events(out) if e["event"] == "checkpoint_loaded"]
    assert [(e["checkpoint"], e["step"], e["epoch"], e["epoch_step"]) for e in loaded] == [
        (str(ckpt), 1, 1, 1)]

    said = _finish(_popen(cmd, env))
    start_line = said.split("training starts from resume point", 1)[1].splitlines()[0]
    assert start_line.endswith(f"global step {global_step}")
    assert "saved on request" not in said

    reference, resumed = _records(reference_out), _records(out)
    assert [r["step"] for r in resumed] == list(range(1, EPOCHS * steps + 1))
    assert [(r["loss"], r["lr"], r["epoch"]) for r in resumed] == [
        (r["loss"], r["lr"], r["epoch"]) for r in reference]
    names = [e["event"] for e in _events(out)]
    assert names.count("process_start") == 3 and names.count("checkpoint_loaded") == 2
    assert names.count("saved_on_request") == 2
    name = f"refinenet-{EPOCHS}_{steps}.ckpt"
    ref, got = (ms.load_checkpoint(str(d / "ckpt" / name)) for d in (reference_out, out))
    assert ref.keys() == got.keys()
    assert [k for k in ref if not np.array_equal(ref[k].asnumpy(), got[k].asnumpy())] == []


def _wait_until(condition, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, "training exited early"
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


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
