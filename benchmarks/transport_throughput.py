"""Transport output throughput: 8 ranks printing as fast as they can, through each transport vs a raw pipe.

All variants run the same writer processes (each prints `--lines` numbered 60-byte lines from a
Python loop). Writers start, then wait for a go file, so the clock measures streaming only, not
process start-up. The baseline drains each writer's pipe with 64 KiB `os.read` calls and counts
newlines; the transport variants start one host agent through the transport with every writer in
its document and receive every line through the writer's sink (one `o I TEXT` frame per line on the
agent's one stream), which checks that each rank's lines arrive complete and in order. The clock
stops at the agent's `done` event, after every line and exit has been received.
The SSH variant runs against a real sshd on 127.0.0.2 (tests/e2e/sshd.py), so the bytes cross
sshd, the encrypted connection and paramiko.

Start latency: from `start_attempt` called to the `started` event of every one of N `true`
processes received (N = 1 and 8; one agent per start, median of 10).

Usage: python benchmarks/transport_throughput.py [--ranks 8] [--lines 200000] [--repeat 3] [--no-ssh]
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
from typing import Callable, Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.agent.session import AgentEvent  # noqa: E402
from launcher.transport.factory import open_transport  # noqa: E402
from launcher.transport.local import LocalTransport  # noqa: E402
from tests.harness.agents import start_attempt  # noqa: E402

WRITER = r"""
import os, sys, time
rank, n, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.002)
pad = "x" * 40
write = sys.stdout.write
for i in range(n):
    write(f"rank {rank} line {i:07d} {pad}\n")
"""


def writer_argv(rank: int, lines: int, go: Path):
    return [sys.executable, "-c", WRITER, str(rank), str(lines), str(go)]


def go_file() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-go-")) / "go"


def run_raw(ranks: int, lines: int) -> float:
    counts = [0] * ranks

    def drain(r: int, fd: int) -> None:
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            counts[r] += chunk.count(b"\n")

    go = go_file()
    procs = [subprocess.Popen(writer_argv(r, lines, go), stdout=subprocess.PIPE) for r in range(ranks)]
    threads = [threading.Thread(target=drain, args=(r, p.stdout.fileno())) for r, p in enumerate(procs)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    go.touch()
    for t in threads:
        t.join()
    for p in procs:
        p.wait()
        p.stdout.close()
    seconds = time.perf_counter() - started
    assert counts == [lines] * ranks, counts
    return seconds


class AgentRun:
    """One host agent started through `transport`, running `argvs`; process i's lines go to `sinks[i]`."""

    def __init__(self, transport, argvs: Sequence[Sequence[str]], sinks: Sequence[Callable[[str], None]]):
        self.events: queue.Queue[AgentEvent] = queue.Queue()
        self.statuses: Dict[int, int] = {}
        document = {"job_id": "bench", "attempt": 1, "host": transport.host, "grace": 2.0, "hang_s": None,
                    "files": [], "tails": [],
                    "processes": [{"name": f"w{i}", "argv": list(a)} for i, a in enumerate(argvs)]}
        self.session = start_attempt(transport, sys.executable, document, sinks, [], self.events)

    def until(self, kind: str, count: int = 1, timeout: float = 600.0) -> None:
        """Take events until the `count`-th of `kind`; exits are recorded on the way."""
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count:
            event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if event.kind in ("lost", "error"):
                raise RuntimeError(f"agent on {event.host}: {event.kind} {dict(event.data)}")
            if event.kind == "exit":
                self.statuses[event.index] = event.data["status"]
            if event.kind == kind:
                seen += 1

    def finish(self) -> Dict[int, int]:
        """Wait for `done`, hang up; the exit status of every process."""
        self.until("done")
        self.session.close()
        self.session.wait(10)
        return self.statuses


class Checker:
    """The sink of one rank: counts lines and checks each is the next one, whole.

    `numbers[i]` is line i's zero-padded number, shared by all ranks, so a check is a slice and a
    compare."""

    def __init__(self, rank: int, numbers: Sequence[str]):
        self.prefix = f"rank {rank} line "
        self.start, self.end = len(self.prefix), len(self.prefix) + 7
        self.numbers = numbers
        self.count = 0
        self.bad = 0

    def __call__(self, line: str) -> None:
        if (len(line) != 60 or not line.startswith(self.prefix)
                or line[self.start:self.end] != self.numbers[self.count]):
            self.bad += 1
        self.count += 1


def run_agent(transport, ranks: int, lines: int) -> float:
    numbers = [f"{i:07d}" for i in range(lines)]
    checkers = [Checker(r, numbers) for r in range(ranks)]
    go = go_file()
    agent = AgentRun(transport, [writer_argv(r, lines, go) for r in range(ranks)], checkers)
    agent.until("ready")
    started = time.perf_counter()
    go.touch()
    agent.until("done")
    seconds = time.perf_counter() - started
    agent.session.close()
    agent.session.wait(10)
    assert agent.statuses == {r: 0 for r in range(ranks)}, agent.statuses
    assert [c.count for c in checkers] == [lines] * ranks and not any(c.bad for c in checkers)
    return seconds


def start_latency(transport, processes: int, runs: int = 10) -> float:
    """Median seconds from `start_attempt` called to every process's `started` event received."""
    seconds: List[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        agent = AgentRun(transport, [["true"]] * processes, [lambda line: None] * processes)
        agent.until("started", processes)
        seconds.append(time.perf_counter() - started)
        assert agent.finish() == {i: 0 for i in range(processes)}
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ssh", action="store_true")
    args = parser.parse_args()

    raw_name = "raw pipe (64 KiB reads, count only)"
    variants = {raw_name: lambda: run_raw(args.ranks, args.lines)}
    local = LocalTransport()
    transports = {"LocalTransport": local}
    variants["LocalTransport agent, lines to sinks"] = lambda: run_agent(local, args.ranks, args.lines)
    server = None
    if not args.no_ssh:
        from tests.harness.hosts import ClientKey, SshServer

        root = Path(tempfile.mkdtemp(prefix="bench-sshd-"))
        key = ClientKey.create(root / "client")
        server = SshServer(root / "host", "bench-host", "127.0.0.2", key).start()
        ssh = open_transport(server.host())
        transports["SshTransport"] = ssh
        variants["SshTransport agent, lines to sinks (127.0.0.2)"] = lambda: run_agent(
            ssh, args.ranks, args.lines)
    try:
        mib = args.ranks * args.lines * 60 / 2**20
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{args.ranks} writers x {args.lines} lines of 60 bytes ({mib:.0f} MiB), "
              f"median of {args.repeat} runs")
        results = {}
        for name, fn in variants.items():
            fn()
            results[name] = statistics.median(fn() for _ in range(args.repeat))
        base = results[raw_name]
        for name, seconds in results.items():
            print(f"{name:48s} {seconds:7.3f} s  {mib / seconds:7.1f} MiB/s  "
                  f"{args.ranks * args.lines / seconds / 1e6:5.2f} Mlines/s  x{seconds / base:.2f}")
        for name, transport in transports.items():
            figures = ", ".join(f"N={n}: {start_latency(transport, n) * 1000:.0f} ms" for n in (1, 8))
            print(f"{name} start latency (agent started -> N processes started, median of 10): {figures}")
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if server is not None:
            ssh.close()
            server.stop()


if __name__ == "__main__":
    main()
