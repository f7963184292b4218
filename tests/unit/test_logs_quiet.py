"""MindSpore's INFO/DEBUG log lines stay in the files but not in the live stream (unless asked);
refinenet-data's progress bar prints a few lines when not on a terminal."""
from __future__ import annotations

import io

import pytest

from launcher.jobs import JobDir
from launcher.logs.aggregator import LogAggregator
from launcher.logs.format import is_framework_log
from refinenet.data.progress import Progress

FRAMEWORK = [
    "[INFO] DISTRIBUTED(12345,7f3a2b1c4700,python):2026-11-29-10:11:12.345.678 "
    "[mindspore/ccsrc/distributed/rpc/tcp/tcp_comm.cc:123] Connect] Event base dispatch success!",
    "[DEBUG] ME(4242,ffff8b7fe010,python):2026-11-29-10:11:12.000.001 [mindspore/core/ir/anf.cc:9] f] x",
    "[INFO] PS(7,7f00,?):2026-01-02-03:04:05.678.910 [mindspore/ccsrc/ps/core.cc:1] Start] started",
]
KEPT = [
    "[WARNING] ME(4242,7f3a2b1c4700,python):2026-11-29-10:11:12.345.678 [mindspore/train/x.py:1] w] careful",
    "[ERROR] DISTRIBUTED(1,2,python):2026-11-29-10:11:12.345.678 [mindspore/ccsrc/a.cc:1] f] broken",
    "epoch: 1 step: 3, loss is 0.5",
    "[INFO] loading data from /data",
    "the [INFO] ME(1,2,python):2026-11-29-10 line quoted inside another",
]


def test_framework_lines_are_recognised():
    assert all(is_framework_log(line) for line in FRAMEWORK)
    assert not any(is_framework_log(line) for line in KEPT)


def _run(tmp_path, **options):
    stream = io.StringIO()
    with LogAggregator(tmp_path / "logs", stream=stream, **options) as agg:
        agg.start_attempt(1)
        sink = agg.rank_sink(0, "host-a")
        for a, b in zip(FRAMEWORK + [""] * 2, KEPT):
            sink(a + "\n") if a else None
            sink(b + "\n")
        other = agg.rank_sink(1, "host-b")
        other(FRAMEWORK[0] + "\n")
    return stream.getvalue(), tmp_path / "logs"


def test_framework_lines_are_left_out_of_the_stream_but_kept_in_the_files(tmp_path):
    streamed, logs = _run(tmp_path)
    for line in KEPT:
        assert f"[r0 host-a] {line}\n" in streamed
    assert "DISTRIBUTED(12345" not in streamed and "[DEBUG]" not in streamed and "PS(7" not in streamed
    assert "[r1 host-b]" not in streamed
    job_log, rank_log = (logs / "job.log").read_text(), (logs / "rank_0.log").read_text()
    for line in FRAMEWORK:
        assert f"[r0 host-a] {line}\n" in job_log and f"{line}\n" in rank_log
    assert f"[r1 host-b] {FRAMEWORK[0]}\n" in job_log
    assert rank_log.index(FRAMEWORK[0]) < rank_log.index(KEPT[0]) < rank_log.index(FRAMEWORK[1])


def test_show_framework_logs_streams_everything(tmp_path):
    streamed, logs = _run(tmp_path, show_framework_logs=True)
    assert streamed.split("\n", 1)[1] == (logs / "job.log").read_text().split("\n", 1)[1]


def test_job_dir_open_logs_passes_the_option_through(tmp_path):
    job = JobDir.create(tmp_path / "runs", cluster="c", stage="r1", spec={}, job_id="quiet")
    for show in (False, True):
        stream = io.StringIO()
        with job.open_logs(stream=stream, show_framework_logs=show) as agg:
            agg.rank_sink(0, "h")(FRAMEWORK[0] + "\n")
        assert ("Event base dispatch" in stream.getvalue()) is show


@pytest.mark.parametrize("total", [1, 4, 7, 100, 1000])
def test_progress_off_a_terminal_prints_at_quarters(total):
    out = io.StringIO()
    progress = Progress("synth", stream=out)
    for done in range(total + 1):
        progress(done, total)
    lines = out.getvalue().splitlines()
    assert len(lines) <= 5 and "\r" not in out.getvalue()
    assert lines[0].endswith(f" 0/{total}") and lines[-1].endswith(f" {total}/{total}")
    if total >= 4:
        assert [line.rsplit(" ", 1)[1] for line in lines] == [
            f"{total * q // 4 + (1 if total * q % 4 else 0)}/{total}" for q in range(5)]


def test_progress_on_a_terminal_redraws_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    progress = Progress("synth", stream=out, interval=0)
    for done in range(11):
        progress(done, 10)
    assert out.getvalue().count("\r") == 11 and out.getvalue().count("\n") == 1
