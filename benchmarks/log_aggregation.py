"""Log aggregation throughput: 8 local ranks printing as fast as they can, aggregator vs a raw pipe.

All variants run the same writer processes (each prints `--lines` numbered lines as fast as a
Python write loop goes). The baseline drains each pipe with 64 KiB `os.read` calls and only
counts newlines; the agent variant starts them all under one host agent through `LocalTransport`,
each rank's lines going to a counting sink; the aggregator variant does the same with each rank's
sink being `LogAggregator.rank_sink` (rank files, job.log, metrics, a live stream to /dev/null,
activity, tail). Starting the agent and the writers is inside the timed span. Afterwards every rank
file is checked line by line: nothing lost, per-rank order kept.

Usage: python benchmarks/log_aggregation.py [--ranks 8] [--lines 200000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.agent.session import AgentEvent  # noqa: E402
from launcher.logs.aggregator import LogAggregator  # noqa: E402
from launcher.logs.format import JOB_LOG, rank_log_name  # noqa: E402
from launcher.logs.progress import ProgressRecorder  # noqa: E402
from launcher.transport.local import LocalTransport  # noqa: E402
from tests.harness.agents import start_attempt  # noqa: E402

WRITER = r"""
import sys
rank, n = int(sys.argv[1]), int(sys.argv[2])
pad = "x" * 40
write = sys.stdout.write
for i in range(n):
    write(f"rank {rank} line {i} {pad}\n")
"""


def writer_argv(rank: int, lines: int):
    return [sys.executable, "-c", WRITER, str(rank), str(lines)]


def run_raw(ranks: int, lines: int) -> float:
    """Seconds for all writers to finish with their pipes drained by bulk reads; checks the count."""
    counts = [0] * ranks

    def drain(r: int, fd: int) -> None:
        n = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            n += chunk.count(b"\n")
        counts[r] = n

    t0 = time.perf_counter()
    procs = [subprocess.Popen(writer_argv(r, lines), stdout=subprocess.PIPE) for r in range(ranks)]
    threads = [threading.Thread(target=drain, args=(r, p.stdout.fileno())) for r, p in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.wait()
        p.stdout.close()
    seconds = time.perf_counter() - t0
    assert counts == [lines] * ranks, counts
    return seconds


def run_agent(transport, argvs: Sequence[Sequence[str]], sinks: Sequence[Callable[[str], None]]) -> None:
    """Run `argvs` under one host agent started through `transport`, process i's lines to `sinks[i]`;
    returns after the agent's `done` event, when every line has been handed to its sink."""
    events: queue.Queue[AgentEvent] = queue.Queue()
    document = {"job_id": "bench", "attempt": 1, "host": transport.host, "grace": 2.0, "hang_s": None,
                "files": [], "tails": [],
                "processes": [{"name": f"r{i}", "argv": list(a)} for i, a in enumerate(argvs)]}
    session = start_attempt(transport, sys.executable, document, sinks, [], events)
    statuses = {}
    while True:
        event = events.get(timeout=600)
        if event.kind in ("lost", "error"):
            raise RuntimeError(f"agent: {event.kind} {dict(event.data)}")
        if event.kind == "exit":
            statuses[event.index] = event.data["status"]
        if event.kind == "done":
            break
    session.close()
    session.wait(10)
    assert statuses == {i: 0 for i in range(len(argvs))}, statuses


def run_agent_only(transport, ranks: int, lines: int) -> float:
    """Seconds through the host agent with counting sinks: the agent's and the reader's own share."""
    counts = [0] * ranks

    def counter(r):
        def on_line(line):
            counts[r] += 1
        return on_line

    t0 = time.perf_counter()
    run_agent(transport, [writer_argv(r, lines) for r in range(ranks)], [counter(r) for r in range(ranks)])
    seconds = time.perf_counter() - t0
    assert counts == [lines] * ranks, counts
    return seconds


def run_aggregated(transport, ranks: int, lines: int, job_dir: Path) -> float:
    """Seconds for all writers to finish with every line written by the aggregator."""
    with open(os.devnull, "w") as devnull:
        agg = LogAggregator(job_dir / "logs", stream=devnull,
                            observers=[ProgressRecorder(job_dir / "metrics.jsonl")])
        agg.start_attempt(1)
        t0 = time.perf_counter()
        run_agent(transport, [writer_argv(r, lines) for r in range(ranks)],
                  [agg.rank_sink(r, transport.host) for r in range(ranks)])
        agg.close()
        seconds = time.perf_counter() - t0
    return seconds


def check_files(job_dir: Path, ranks: int, lines: int) -> None:
    """Every rank file holds exactly its lines, in order, after the attempt header."""
    for r in range(ranks):
        got = (job_dir / "logs" / rank_log_name(r)).read_text().splitlines()
        assert got[0].startswith("=== attempt 1 "), got[0]
        body = got[1:]
        assert len(body) == lines, f"rank {r}: {len(body)} of {lines} lines"
        for i, line in enumerate(body):
            if not line.startswith(f"rank {r} line {i} "):
                raise AssertionError(f"rank {r}: line {i} is {line!r}")
    total = sum(1 for line in (job_dir / "logs" / JOB_LOG).open() if line.startswith("[r"))
    assert total == ranks * lines, f"job.log holds {total} of {ranks * lines} lines"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--lines", type=int, default=200_000, help="lines per rank")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    total = args.ranks * args.lines
    transport = LocalTransport()
    load = os.getloadavg()
    raw_times, agg_times, agent_times = [], [], []
    for _ in range(args.repeat):
        raw_times.append(run_raw(args.ranks, args.lines))
        agent_times.append(run_agent_only(transport, args.ranks, args.lines))
        with tempfile.TemporaryDirectory() as tmp:
            agg_times.append(run_aggregated(transport, args.ranks, args.lines, Path(tmp)))
            check_files(Path(tmp), args.ranks, args.lines)
    raw, only, agg = total / min(raw_times), total / min(agent_times), total / min(agg_times)
    print(f"{args.ranks} ranks x {args.lines} lines ({total} lines, best of {args.repeat}), "
          f"reader: one host agent through LocalTransport")
    print(f"load average at start / end: {' '.join(f'{x:.2f}' for x in load)} / "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"raw pipe (bulk os.read, count newlines): {raw:,.0f} lines/s")
    print(f"host agent, counting sinks: {only:,.0f} lines/s ({only / raw:.2f} of raw)")
    print(f"LogAggregator (files + job.log + stream): {agg:,.0f} lines/s, zero lines lost, order kept")
    rounds = sorted(r / a for r, a in zip(raw_times, agg_times))
    print(f"aggregator / raw pipe = {agg / raw:.2f} (best of each); per round: "
          f"{', '.join(f'{x:.2f}' for x in rounds)} (median {statistics.median(rounds):.2f})")


if __name__ == "__main__":
    main()
