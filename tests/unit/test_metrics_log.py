"""A rank's metrics JSONL: step records as before, event records with times and phase durations."""
import json
import subprocess
import sys
import time

import pytest

from refinenet import metrics_log as ml


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_process_start_is_the_kernels_start_time():
    code = "import time; from refinenet import metrics_log as m; print(m.process_start_time(), time.time())"
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    started, now = (float(v) for v in out.stdout.split())
    assert before - 0.05 <= started <= now  # 10 ms clock ticks
    assert ml.process_start_time() <= before
    assert ml.process_start_time("no-such-pid") is None


def test_events_wait_for_open_then_follow_in_order(tmp_path):
    log = ml.MetricsLog(started=1000.0)
    log.event(ml.PROCESS_START, at=1000.0, pid=7)
    log.event(ml.IMPORTS, at=1003.5)
    path = tmp_path / "metrics" / "rank_3.jsonl"
    log.open(path)
    log.event(ml.CLUSTER, at=1004.0, rank=3, ranks=4, init_s=0.25)
    log.step(step=11, epoch=2, loss=0.5, lr=0.01, seconds=0.123456789)
    log.event(ml.FIRST_STEP, at=1010.0, step=11, epoch=2, epoch_step=1, step_s=5.0)
    log.close()
    records = _lines(path)
    assert records[0] == {"event": "process_start", "time": 1000.0, "since_start": 0.0, "pid": 7}
    assert records[1] == {"event": "imports", "time": 1003.5, "since_start": 3.5, "seconds": 3.5}
    assert records[2] == {"event": "cluster", "time": 1004.0, "since_start": 4.0, "seconds": 0.5, "rank": 3,
                          "ranks": 4, "init_s": 0.25}
    step = records[3]
    assert set(step) == {"step", "epoch", "loss", "lr", "seconds", "time"} and step["seconds"] == 0.123457
    assert records[4] == {"event": "first_step", "time": 1010.0, "since_start": 10.0, "seconds": 6.0,
                          "step": 11, "epoch": 2, "epoch_step": 1, "step_s": 5.0}


def test_reopening_appends_and_unknown_events_are_refused(tmp_path):
    log = ml.MetricsLog()
    with pytest.raises(ValueError, match="unknown event"):
        log.event("lunch")
    with pytest.raises(RuntimeError, match="before open"):
        log.step(step=1, epoch=1, loss=1.0, lr=0.1, seconds=0.1)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"step": 1}\n')
    log.open(first)
    log.event(ml.IMPORTS)
    log.open(second)
    log.event(ml.CLUSTER, rank=0, ranks=1)
    log.close()
    assert [r.get("event") for r in _lines(first)] == [None, "imports"]
    assert [r["event"] for r in _lines(second)] == ["cluster"]
    assert log.started <= time.time()
