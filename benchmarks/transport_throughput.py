"""Transport output throughput: 8 ranks printing as fast as they can, through each transport vs a raw pipe.

All variants run the same writer processes (each prints `--lines` numbered 60-byte lines from a
Python loop). Writers start, then wait for a go file, so the clock measures streaming only, not
process start-up (`run` returns once the guard has reported the command's ids: about 35 ms locally,
170 ms over SSH on the development machine; see docs/performance.md). The baseline drains each
writer's pipe with 64 KiB `os.read` calls and counts newlines; the transport variants start the
writers with `Transport.run` (under the guard) and receive every line through `on_line`, which
checks that each rank's lines arrive complete and in order.
The SSH variant runs against a real sshd on 127.0.0.2 (tests/e2e/sshd.py), so the bytes cross
sshd, the encrypted connection and paramiko.

Usage: python benchmarks/transport_throughput.py [--ranks 8] [--lines 200000] [--repeat 3] [--no-ssh]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.transport.factory import open_transport  # noqa: E402
from launcher.transport.local import LocalTransport  # noqa: E402

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


class Checker:
    """`on_line` for one rank: counts lines and checks each is the next one, whole."""

    def __init__(self, rank: int):
        self.prefix = f"rank {rank} line "
        self.count = 0
        self.bad = 0

    def __call__(self, line: str) -> None:
        if not (line.startswith(self.prefix) and len(line) == 60):
            self.bad += 1
        self.count += 1


def run_transport(transport, ranks: int, lines: int) -> float:
    checkers = [Checker(r) for r in range(ranks)]
    go = go_file()
    procs = [transport.run(writer_argv(r, lines, go), on_line=checkers[r]) for r in range(ranks)]
    started = time.perf_counter()
    go.touch()
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - started
    assert codes == [0] * ranks, codes
    assert [c.count for c in checkers] == [lines] * ranks and not any(c.bad for c in checkers)
    return seconds


def start_latency(transport, runs: int = 10) -> float:
    """Median seconds from `run` called to `run` returned (guard up, command's ids known)."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = transport.run(["true"])
        seconds.append(time.perf_counter() - started)
        proc.wait()
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ssh", action="store_true")
    args = parser.parse_args()

    variants = {"raw pipe (64 KiB reads, count only)": lambda: run_raw(args.ranks, args.lines)}
    local = LocalTransport()
    transports = {"LocalTransport": local}
    variants["LocalTransport.run + on_line"] = lambda: run_transport(local, args.ranks, args.lines)
    server = None
    if not args.no_ssh:
        from tests.e2e.sshd import ClientKey, SshServer

        root = Path(tempfile.mkdtemp(prefix="bench-sshd-"))
        key = ClientKey.create(root / "client")
        server = SshServer(root / "host", "bench-host", "127.0.0.2", key).start()
        ssh = open_transport(server.host())
        transports["SshTransport"] = ssh
        variants["SshTransport.run + on_line (sshd on 127.0.0.2)"] = lambda: run_transport(
            ssh, args.ranks, args.lines)
    try:
        mib = args.ranks * args.lines * 60 / 2**20
        print(f"{args.ranks} writers x {args.lines} lines of 60 bytes ({mib:.0f} MiB), "
              f"median of {args.repeat} runs")
        results = {}
        for name, fn in variants.items():
            fn()
            results[name] = statistics.median(fn() for _ in range(args.repeat))
        base = results["raw pipe (64 KiB reads, count only)"]
        for name, seconds in results.items():
            print(f"{name:48s} {seconds:7.3f} s  {mib / seconds:7.1f} MiB/s  "
                  f"{args.ranks * args.lines / seconds / 1e6:5.2f} Mlines/s  x{seconds / base:.2f}")
        for name, transport in transports.items():
            print(f"{name} start latency (run -> ids known, median of 10): "
                  f"{start_latency(transport) * 1000:.0f} ms")
    finally:
        if server is not None:
            ssh.close()
            server.stop()


if __name__ == "__main__":
    main()
