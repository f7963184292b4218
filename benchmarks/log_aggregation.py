"""Log aggregation throughput: 8 local ranks printing as fast as they can, aggregator vs a raw pipe.

All variants run the same writer processes (each prints `--lines` numbered lines as fast as a
Python write loop goes). The baseline drains each pipe with 64 KiB `os.read` calls and only
counts newlines; the transport variant runs them with `LocalTransport` and a counting `on_line`;
the aggregator variant hands every line, through the local transport's line reader, to
`LogAggregator` (rank files, job.log, metrics, a live stream to /dev/null, activity, tail).
Without `launcher.transport.local` it reads the pipes with its own threads instead. Afterwards
every rank file is checked line by line: nothing lost, per-rank order kept.

Usage: python benchmarks/log_aggregation.py [--ranks 8] [--lines 200000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import codecs
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.logs import JOB_LOG, LogAggregator, rank_log_name  # noqa: E402

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


def _local_transport():
    try:
        from launcher.transport.local import LocalTransport
    except ImportError:
        return None
    return LocalTransport()


def run_transport_only(ranks: int, lines: int) -> float:
    """Seconds through the local transport with a counting callback: the reader's own share."""
    transport = _local_transport()
    counts = [0] * ranks

    def counter(r):
        def on_line(line):
            counts[r] += 1
        return on_line

    t0 = time.perf_counter()
    procs = [transport.run(writer_argv(r, lines), on_line=counter(r)) for r in range(ranks)]
    for p in procs:
        p.wait()
    seconds = time.perf_counter() - t0
    assert counts == [lines] * ranks, counts
    return seconds


def run_aggregated(ranks: int, lines: int, job_dir: Path) -> tuple:
    """Seconds for all writers to finish with every line written by the aggregator; which reader ran."""
    transport = _local_transport()
    with open(os.devnull, "w") as devnull:
        agg = LogAggregator(job_dir / "logs", stream=devnull, metrics_file=job_dir / "metrics.jsonl")
        agg.start_attempt(1)
        t0 = time.perf_counter()
        if transport is not None:
            procs = [transport.run(writer_argv(r, lines), on_line=agg.rank_sink(r, "localhost"))
                     for r in range(ranks)]
            for p in procs:
                p.wait()
            reader = "launcher.transport.local.LocalTransport"
        else:
            procs = [subprocess.Popen(writer_argv(r, lines), stdout=subprocess.PIPE) for r in range(ranks)]

            def pump(proc, sink):
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                fd, rest = proc.stdout.fileno(), ""
                while True:
                    chunk = os.read(fd, 1 << 16)
                    text = rest + decoder.decode(chunk, final=not chunk)
                    lines = text.split("\n")
                    rest = lines.pop()
                    for line in lines:
                        sink(line)
                    if not chunk:
                        break
                if rest:
                    sink(rest)

            threads = [threading.Thread(target=pump, args=(p, agg.rank_sink(r, "localhost")))
                       for r, p in enumerate(procs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for p in procs:
                p.wait()
                p.stdout.close()
            reader = "subprocess reader threads (64 KiB reads, split into lines)"
        agg.close()
        seconds = time.perf_counter() - t0
    return seconds, reader


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
    raw_times, agg_times, transport_times, reader = [], [], [], ""
    for _ in range(args.repeat):
        raw_times.append(run_raw(args.ranks, args.lines))
        if _local_transport() is not None:
            transport_times.append(run_transport_only(args.ranks, args.lines))
        with tempfile.TemporaryDirectory() as tmp:
            seconds, reader = run_aggregated(args.ranks, args.lines, Path(tmp))
            check_files(Path(tmp), args.ranks, args.lines)
        agg_times.append(seconds)
    raw, agg = total / min(raw_times), total / min(agg_times)
    print(f"{args.ranks} ranks x {args.lines} lines ({total} lines, best of {args.repeat}), reader: {reader}")
    print(f"raw pipe (bulk os.read, count newlines): {raw:,.0f} lines/s")
    if transport_times:
        only = total / min(transport_times)
        print(f"local transport, counting callback: {only:,.0f} lines/s ({only / raw:.2f} of raw)")
    print(f"LogAggregator (files + job.log + stream): {agg:,.0f} lines/s, zero lines lost, order kept")
    rounds = sorted(r / a for r, a in zip(raw_times, agg_times))
    print(f"aggregator / raw pipe = {agg / raw:.2f} (best of each); per round: "
          f"{', '.join(f'{x:.2f}' for x in rounds)} (median {statistics.median(rounds):.2f})")


if __name__ == "__main__":
    main()
