"""Straggler detection: pure detector fed scripted records, then the aggregator with real timing."""
from __future__ import annotations

import io
import json
import threading
import time

import pytest

from launcher.jobs import JobDir
from launcher.stragglers import Straggler, StragglerDetector, step_times


def records(step_s, steps, attempt=1, start=1000.0, hosts=None):
    """Metrics records of ranks stepping every step_s[rank] seconds, in time order."""
    out = []
    for rank, dt in enumerate(step_s):
        for step in range(steps + 1):
            out.append({"rank": rank, "host": (hosts or {}).get(rank, f"host-{rank}"), "attempt": attempt,
                        "epoch": 1, "epoch_step": step, "loss": 1.0, "time": start + step * dt})
    return sorted(out, key=lambda r: r["time"])


def feed_all(detector, recs):
    return [s for s in map(detector.feed, recs) if s is not None]


def test_one_slow_rank_is_flagged_once_and_the_others_not():
    flagged = feed_all(StragglerDetector(factor=1.5, window=5), records([0.2, 0.6, 0.2, 0.21], 20))
    assert len(flagged) == 1
    s = flagged[0]
    assert (s.rank, s.host, s.attempt) == (1, "host-1", 1)
    assert s.ratio == pytest.approx(3.0, rel=0.05) and s.step_time == pytest.approx(0.6)
    assert s.since == pytest.approx(1000.0 + 0.6 * (s.epoch_step - 5))
    assert "rank 1 on host-1 step time 0.60 s = 3.0x the median of the others" in s.message()


def test_a_slow_spell_shorter_than_the_window_is_not_flagged():
    recs, t = [], {0: 0.0, 1: 0.0}
    for step in range(1, 31):
        for rank in (0, 1):
            t[rank] += 0.6 if rank == 1 and 10 <= step < 14 else 0.2
            recs.append({"rank": rank, "host": "h", "attempt": 1, "epoch": 1, "epoch_step": step,
                         "time": t[rank]})
    recs.sort(key=lambda r: r["time"])
    assert feed_all(StragglerDetector(factor=1.5, window=5), recs) == []
    assert len(feed_all(StragglerDetector(factor=1.5, window=4), recs)) == 1


def test_equal_ranks_and_a_single_rank_are_never_flagged():
    assert feed_all(StragglerDetector(), records([0.3, 0.3, 0.31], 30)) == []
    assert feed_all(StragglerDetector(window=1), records([5.0], 30)) == []


def test_each_attempt_can_flag_again_and_epoch_boundaries_do_not_count():
    det = StragglerDetector(factor=2, window=3)
    first = feed_all(det, records([0.1, 0.5], 10, attempt=1))
    second = feed_all(det, records([0.1, 0.5], 10, attempt=2, start=5000.0))
    assert [s.attempt for s in first + second] == [1, 2]
    boundary = [{"rank": 0, "attempt": 1, "epoch": 1, "epoch_step": 10, "time": 0.0},
                {"rank": 0, "attempt": 1, "epoch": 2, "epoch_step": 1, "time": 100.0}]
    assert step_times(boundary) == {}


def test_bad_settings_and_records_are_refused_or_ignored():
    with pytest.raises(ValueError):
        StragglerDetector(factor=1.0)
    with pytest.raises(ValueError):
        StragglerDetector(window=0)
    det = StragglerDetector()
    assert det.feed({"rank": "x"}) is None and det.feed({}) is None


def test_straggler_round_trips_through_json():
    s = Straggler(rank=1, host="b", ratio=2.5, step_time=0.5, median_others=0.2, since=1.0, time=2.0,
                  attempt=1, epoch=1, epoch_step=7)
    assert Straggler.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_the_aggregator_flags_a_rank_that_really_sleeps_longer(tmp_path):
    """Two threads print progress lines like ranks; rank 1 sleeps three times longer per step."""
    job = JobDir.create(tmp_path / "runs", cluster="c", stage="r1", spec={}, job_id="slow")
    stream = io.StringIO()
    with job.open_logs(stream=stream, straggler_factor=1.5, straggler_window=4) as agg:
        agg.start_attempt(1)

        def rank(r: int, host: str, step_s: float) -> None:
            sink = agg.rank_sink(r, host)
            for step in range(1, 13):
                time.sleep(step_s)
                sink(f"epoch: 1 step: {step}, loss is {1.0 / step:.4f}\n")

        threads = [threading.Thread(target=rank, args=(0, "host-a", 0.04)),
                   threading.Thread(target=rank, args=(1, "host-b", 0.12)),
                   threading.Thread(target=rank, args=(2, "host-a", 0.04))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert agg.flush(5)
        flagged = list(agg.observers[0].stragglers)
    assert [(s.rank, s.host) for s in flagged] == [(1, "host-b")]
    assert 2.0 < flagged[0].ratio < 5.0
    text = stream.getvalue()
    assert text.count("[launcher] straggler: rank 1 on host-b step time") == 1
    assert "straggler: rank 0" not in text and "straggler: rank 2" not in text
    assert "[launcher] straggler: rank 1 on host-b" in (job.logs_dir / "job.log").read_text()
    lines = job.stragglers_file.read_text().splitlines()
    assert [json.loads(line)["rank"] for line in lines] == [1]
    assert [(s.rank, s.attempt) for s in job.read().stragglers] == [(1, 1)]
    assert [s.rank for s in job.read_stragglers()] == [1]
    assert "straggler" not in (job.logs_dir / "rank_1.log").read_text()
