"""Two CPU ranks train data-parallel through the dynamic-cluster environment and end identical; a save
request seen by one rank stops both after the same step, and the resumed pair ends bit-identical to an
uninterrupted pair."""
import json
import re
import subprocess
import sys
import time

import pytest

from refinenet import manifest as mf
from tests.harness.environment import free_port
from tests.harness.procs import wait_all

pytestmark = pytest.mark.e2e

EPOCHS = 2
TRAIN_ARGS = ["--depth", "18", "--crop-size", "33", "--batch-size", "1", "--epochs", str(EPOCHS),
              "--save-epochs", "1", "--base-lr", "0.002", "--workers", "1"]


def _start(args, env, log):
    return subprocess.Popen([sys.executable, *args], env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def run_two_ranks(folder, child_env, train_list, *extra, rank_env=None):
    """Scheduler and two workers; each rank plays a host of its own (local rank 0, own output folder).
    Returns {log name: text}; fails unless every process exits 0."""
    folder.mkdir(parents=True, exist_ok=True)
    base = dict(child_env, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(free_port()), MS_WORKER_NUM="2")
    procs = [_start(["-m", "refinenet.scheduler"], base, folder / "scheduler.log")]
    for rank in range(2):
        env = dict(base, MS_ROLE="MS_WORKER", MS_NODE_ID=str(rank), LOCAL_RANK="0",
                   **(rank_env(rank) if rank_env else {}))
        procs.append(_start(["-m", "refinenet.train", "--stage", "r1", "--data", str(train_list),
                             "--output-dir", str(folder / f"host{rank}"), *TRAIN_ARGS, *extra],
                            env, folder / f"rank{rank}.log"))
    codes = wait_all(procs, 420)
    logs = {f.name: f.read_text() for f in sorted(folder.glob("*.log"))}
    assert codes == [0, 0, 0], "\n".join(f"== {n}\n{t[-3000:]}" for n, t in logs.items())
    return logs


def records(folder, rank, events=False):
    lines = (folder / f"host{rank}" / "metrics" / f"rank_{rank}.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if ("event" in r) == events]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, child_env, train_list):
    folder = tmp_path_factory.mktemp("uninterrupted")
    return folder, run_two_ranks(folder, child_env, train_list)


@pytest.mark.slow
def test_two_ranks_keep_identical_weights(uninterrupted):
    folder, logs = uninterrupted
    for rank in range(2):
        text = logs[f"rank{rank}.log"]
        assert "training starts from random initialisation" in text
        assert "initial state identical on all 2 ranks" in text
        assert f"rank {rank} of 2" in text
        steps = int(re.search(r"(\d+) steps per epoch", text).group(1))
        assert f"epoch: {EPOCHS} step: {steps}, loss is" in text and "Train epoch time:" in text
        assert len(records(folder, rank)) == EPOCHS * steps
        cluster = [e for e in records(folder, rank, events=True) if e["event"] == "cluster"]
        assert [(e["rank"], e["ranks"]) for e in cluster] == [(rank, 2)] and cluster[0]["init_s"] > 0

    import mindspore as ms
    import numpy as np

    finals = [mf.scan(folder / f"host{rank}")[0] for rank in range(2)]
    assert [[e.manifest.epoch for e in f] for f in finals] == [[2, 1], [2, 1]]
    assert [f[0].manifest.rank for f in finals] == [0, 1]
    params = [ms.load_checkpoint(f[0].path) for f in finals]
    assert params[0].keys() == params[1].keys()
    differ = [k for k in params[0] if not np.array_equal(params[0][k].asnumpy(), params[1][k].asnumpy())]
    assert differ == []
    first = ms.load_checkpoint(finals[0][1].path)
    moved = [k for k in first if k.endswith("weight") and not np.array_equal(first[k].asnumpy(),
                                                                               params[0][k].asnumpy())]
    assert moved, "the second epoch changed no weight"


@pytest.mark.slow
def test_a_request_on_one_rank_stops_both_after_the_same_step_and_the_resumed_pair_ends_identical(
        uninterrupted, tmp_path, child_env, train_list):
    import mindspore as ms
    import numpy as np

    reference, _ = uninterrupted
    requests = [tmp_path / f"request{rank}" for rank in range(2)]
    requests[1].touch()  # only rank 1 is asked
    env = {r: {"REFINENET_SAVE_REQUEST": str(requests[r]), "REFINENET_JOB_ID": "pair"} for r in range(2)}
    logs = run_two_ranks(tmp_path, child_env, train_list, "--resume", "auto", rank_env=env.get)
    steps = int(re.search(r"(\d+) steps per epoch", logs["rank0.log"]).group(1))
    assert steps > 1
    for rank in range(2):
        ckpt = tmp_path / f"host{rank}" / "ckpt" / "refinenet-1_1.ckpt"
        assert f"saved on request at epoch 1 step 1 (global step 1): {ckpt}" in logs[f"rank{rank}.log"]
        assert [r["step"] for r in records(tmp_path, rank)] == [1]
        saved = records(tmp_path, rank, events=True)[-1]
        assert (saved["event"], saved["checkpoint"], saved["step"]) == ("saved_on_request", str(ckpt), 1)
        assert mf.verify(ckpt).job_id == "pair"
    assert not requests[1].exists(), "the request was not consumed"

    logs = run_two_ranks(tmp_path, child_env, train_list, "--resume", "auto", rank_env=env.get)
    finals = []
    for rank in range(2):
        text = logs[f"rank{rank}.log"].split("training starts from", 2)[2]
        start_line = text.splitlines()[0]
        assert start_line.startswith(" resume point ")
        assert start_line.endswith("at epoch 1 step 1, global step 1")
        assert "saved on request" not in text
        got, want = records(tmp_path, rank), records(reference, rank)
        assert [r["step"] for r in got] == list(range(1, EPOCHS * steps + 1))
        assert [(r["loss"], r["lr"]) for r in got] == [(r["loss"], r["lr"]) for r in want]
        loaded = [e for e in records(tmp_path, rank, events=True) if e["event"] == "checkpoint_loaded"]
        assert [(e["step"], e["epoch"], e["epoch_step"]) for e in loaded] == [(1, 1, 1)]
        name = f"refinenet-{EPOCHS}_{steps}.ckpt"
        finals.append([ms.load_checkpoint(str(folder / f"host{rank}" / "ckpt" / name))
                       for folder in (reference, tmp_path)])
    for ref, mine in finals:
        assert ref.keys() == mine.keys()
        assert [k for k in ref if not np.array_equal(ref[k].asnumpy(), mine[k].asnumpy())] == []


def test_rank_with_bad_input_exits_before_the_cluster_forms(tmp_path, port, child_env):
    env = dict(child_env, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(port), MS_WORKER_NUM="2",
               MS_ROLE="MS_WORKER", MS_NODE_ID="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "refinenet.train", "--stage", "r1", "--data",
                           str(tmp_path / "missing.lst"), "--output-dir", str(tmp_path / "out"), *TRAIN_ARGS],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--data" in proc.stderr and "missing.lst" in proc.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out").exists()
