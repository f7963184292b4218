"""LogAggregator: many writer threads, nothing lost, order per rank, whole prefixed lines, filters."""
import io
import json
import re
import threading
import time

import pytest

from launcher.errors import BadInput
from launcher.logs.aggregator import LogAggregator
from launcher.logs.format import (
    JOB_LOG,
    JobLogFilter,
    parse_attempt_header,
    parse_ranks,
    parse_source,
    source_rank,
    tail_lines,
)
from launcher.logs.progress import ProgressRecorder
from launcher.workload.base import parse_progress


class SlowStream(io.StringIO):
    """A terminal that is slow now and then: writes must still come out whole and complete."""

    def write(self, s):
        if len(s) % 7 == 0:
            time.sleep(0.0005)
        return super().write(s)


def hammer(agg, ranks, lines, hosts):
    barrier = threading.Barrier(len(ranks))

    def writer(rank):
        sink = agg.rank_sink(rank, hosts[rank % len(hosts)])
        barrier.wait()
        for i in range(lines):
            sink(f"rank {rank} line {i} " + "x" * (i % 13) + ("\n" if i % 3 == 0 else ""))

    threads = [threading.Thread(target=writer, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def check_rank_lines(lines, rank):
    assert len(lines) == LINES, f"rank {rank}: {len(lines)} lines"
    for i, line in enumerate(lines):
        assert line == f"rank {rank} line {i} " + "x" * (i % 13), (rank, i, line)


LINES = 3000


def test_many_threads_nothing_lost_order_kept_whole_prefixed_lines(tmp_path):
    stream = SlowStream()
    with LogAggregator(tmp_path, stream=stream, max_pending=500) as agg:
        agg.start_attempt(1)
        hammer(agg, range(12), LINES, ["host-a", "host-b"])
    for r in range(12):
        body = (tmp_path / f"rank_{r}.log").read_text().splitlines()
        assert parse_attempt_header(body[0]) == 1
        check_rank_lines(body[1:], r)
    for text in (stream.getvalue(), (tmp_path / JOB_LOG).read_text()):
        assert text.endswith("\n")
        lines = text.splitlines()
        assert parse_attempt_header(lines[0]) == 1
        per_rank = {r: [] for r in range(12)}
        for line in lines[1:]:
            m = re.match(r"^\[r(\d+) (host-[ab])\] (.*)$", line)
            assert m, line
            rank = int(m.group(1))
            assert m.group(2) == ["host-a", "host-b"][rank % 2]
            per_rank[rank].append(m.group(3))
        for r, got in per_rank.items():
            check_rank_lines(got, r)


def test_rank_filter_applies_to_the_stream_only(tmp_path):
    stream = io.StringIO()
    with LogAggregator(tmp_path, stream=stream, ranks={1, 3}) as agg:
        hammer(agg, range(4), 50, ["h"])
        agg.process_sink("scheduler", "h")("scheduler up")
    sources = {parse_source(line) for line in stream.getvalue().splitlines()}
    assert sources == {"r1", "r3"}
    all_sources = {parse_source(line) for line in (tmp_path / JOB_LOG).read_text().splitlines()}
    assert all_sources == {"r0", "r1", "r2", "r3", "scheduler"}
    assert (tmp_path / "scheduler.log").read_text() == "scheduler up\n"


def test_attempts_tail_activity_and_metrics(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    agg = LogAggregator(tmp_path / "logs", tail_lines=3, observers=[ProgressRecorder(metrics)])
    assert agg.last_activity() == {}
    agg.start_attempt(1)
    r0, r1 = agg.rank_sink(0, "a"), agg.rank_sink(1, "b")
    before = time.monotonic()
    for i in range(5):
        r0(f"epoch: 1 step: {i + 1}, loss is 0.{9 - i}")
    r1("starting from random initialisation")
    assert agg.flush(10)
    assert agg.tail(0) == [f"epoch: 1 step: {i}, loss is 0.{10 - i}" for i in (3, 4, 5)]
    assert agg.tail(0, 1) == ["epoch: 1 step: 5, loss is 0.5"] and agg.tail(7) == []
    activity = agg.last_activity()
    assert set(activity) == {0, 1} and all(t >= before for t in activity.values())
    act = agg.activity()["r0"]
    assert act.lines == 5 and act.last_line.endswith("loss is 0.5") and act.host == "a"
    assert abs(act.last_time - time.time()) < 5
    agg.start_attempt(2)
    r0 = agg.rank_sink(0, "a")
    r0("epoch: 2 step: 1, loss is 0.25\n")
    agg.close()
    rank0 = (tmp_path / "logs" / "rank_0.log").read_text().splitlines()
    assert [parse_attempt_header(line) for line in rank0] == [1, None, None, None, None, None, 2, None]
    rank1 = (tmp_path / "logs" / "rank_1.log").read_text().splitlines()
    assert [parse_attempt_header(line) for line in rank1] == [1, None]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(records) == 6
    assert records[-1] | {"time": 0} == {"rank": 0, "source": "r0", "host": "a", "attempt": 2, "epoch": 2,
                                         "epoch_step": 1, "loss": 0.25, "time": 0}


def test_lines_after_close_are_still_written(tmp_path):
    agg = LogAggregator(tmp_path)
    sink = agg.rank_sink(0, "h")
    sink("before")
    agg.close()
    sink("after")
    assert (tmp_path / "rank_0.log").read_text() == "before\nafter\n"
    assert (tmp_path / JOB_LOG).read_text() == "[r0 h] before\n[r0 h] after\n"


def test_mixed_newlines_empty_lines_and_undecodable_text(tmp_path):
    with LogAggregator(tmp_path) as agg:
        sink = agg.rank_sink(2, "h")
        for line in ["a\n", "", "b", "c\r\n", "\n", "d \udcff e"]:
            sink(line)
    assert (tmp_path / "rank_2.log").read_bytes() == b"a\n\nb\nc\n\nd \xff e\n"


def test_broken_stream_does_not_stop_the_files(tmp_path):
    class Broken(io.StringIO):
        def write(self, s):
            raise BrokenPipeError

    with LogAggregator(tmp_path, stream=Broken()) as agg:
        sink = agg.rank_sink(0, "h")
        for i in range(100):
            sink(str(i))
    assert (tmp_path / "rank_0.log").read_text().split() == [str(i) for i in range(100)]


def test_process_names_must_not_look_like_ranks(tmp_path):
    with LogAggregator(tmp_path) as agg:
        for bad in ("r3", "has space", ""):
            with pytest.raises(ValueError):
                agg.process_sink(bad, "h")


def test_parsers():
    assert parse_progress("epoch: 12 step: 284, loss is 0.7524967") == {
        "epoch": 12, "epoch_step": 284, "loss": pytest.approx(0.7524967)}
    assert parse_progress("epoch: 1 step: 2, loss is 1.5e-03")["loss"] == pytest.approx(0.0015)
    assert parse_progress("Train epoch time: 5465.635 ms") is None
    assert parse_ranks("0,3") == {0, 3} and parse_ranks("0-2, 6") == {0, 1, 2, 6}
    for bad in ("", "a", "3-1", "1,,2"):
        with pytest.raises(BadInput, match="--ranks"):
            parse_ranks(bad)
    assert parse_source("[r12 host-1] hello") == "r12" and source_rank("r12") == 12
    assert parse_source("[scheduler h] x") == "scheduler" and source_rank("scheduler") is None
    assert parse_source("no prefix") is None


def test_job_log_filter_by_rank_and_attempt():
    lines = ["=== attempt 1 started 2025-01-01 00:00:00 ===", "[r0 a] one", "[r1 b] one",
             "[scheduler a] s", "=== attempt 2 started 2025-01-01 00:01:00 ===", "[r0 a] two",
             "[r1 b] two"]

    def kept(**kw):
        f = JobLogFilter(**kw)
        return [line for line in lines if f.keep(line)]

    assert kept() == lines
    assert kept(ranks={1}) == [lines[0], "[r1 b] one", lines[4], "[r1 b] two"]
    assert kept(attempt=2) == lines[4:]
    assert kept(attempt=1, ranks={0}) == [lines[0], "[r0 a] one"]


def test_tail_lines(tmp_path):
    path = tmp_path / "f.log"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert tail_lines(path, 2) == ["line 998", "line 999"]
    assert tail_lines(path, 3, max_bytes=20) == ["line 998", "line 999"]
    assert tail_lines(tmp_path / "missing", 3) == []


def test_rank_log_files_open_at_once_are_bounded(tmp_path):
    import os

    from launcher.logs.aggregator import MAX_OPEN_FILES, LogAggregator

    before = len(os.listdir("/proc/self/fd"))
    with LogAggregator(tmp_path / "logs") as logs:
        sinks = [logs.rank_sink(r, f"h{r // 8}") for r in range(3 * MAX_OPEN_FILES)]
        for round_ in range(3):
            for r, sink in enumerate(sinks):
                sink(f"rank {r} line {round_}")
            assert logs.flush(10)
            assert len(os.listdir("/proc/self/fd")) - before <= MAX_OPEN_FILES + 4
    for r in (0, 100, 3 * MAX_OPEN_FILES - 1):
        text = (tmp_path / "logs" / f"rank_{r}.log").read_text()
        assert [line for line in text.splitlines() if line.startswith("rank")] == [
            f"rank {r} line {i}" for i in range(3)]
