"""Two CPU ranks train data-parallel through the dynamic-cluster environment and end identical."""
import re
import subprocess
import sys
import time

import pytest

from refinenet import manifest as mf
from tests.harness.procs import wait_all

pytestmark = pytest.mark.e2e

TRAIN_ARGS = ["--depth", "18", "--crop-size", "33", "--batch-size", "2", "--epochs", "2",
              "--save-epochs", "1", "--base-lr", "0.002", "--workers", "1"]


def _start(args, env, log):
    return subprocess.Popen([sys.executable, *args], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_ranks_keep_identical_weights(tmp_path, port, child_env, train_list):
    base = dict(child_env, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(port), MS_WORKER_NUM="2")
    procs = [_start(["-m", "refinenet.scheduler"], base, tmp_path / "scheduler.log")]
    for rank in range(2):
        # Each rank plays a host of its own: local rank 0, its own output folder.
        env = dict(base, MS_ROLE="MS_WORKER", MS_NODE_ID=str(rank), LOCAL_RANK="0")
        procs.append(_start(["-m", "refinenet.train", "--stage", "r1", "--data", str(train_list),
                             "--output-dir", str(tmp_path / f"host{rank}"), *TRAIN_ARGS],
                            env, tmp_path / f"rank{rank}.log"))
    codes = wait_all(procs, 420)
    logs = {f.name: f.read_text() for f in sorted(tmp_path.glob("*.log"))}
    assert codes == [0, 0, 0], "\n".join(f"== {n}\n{t[-3000:]}" for n, t in logs.items())
    for rank in range(2):
        text = logs[f"rank{rank}.log"]
        assert "training starts from random initialisation" in text
        assert "initial state identical on all 2 ranks" in text
        assert f"rank {rank} of 2" in text
        steps = int(re.search(r"(\d+) steps per epoch", text).group(1))
        assert f"epoch: 2 step: {steps}, loss is" in text and "Train epoch time:" in text
        metrics = tmp_path / f"host{rank}" / "metrics" / f"rank_{rank}.jsonl"
        assert metrics.read_text().count("\n") == 2 * steps

    import mindspore as ms
    import numpy as np

    finals = [mf.scan(tmp_path / f"host{rank}")[0] for rank in range(2)]
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
