"""The host agent for real (local transport): framing, exit reports, tails, hangs, teardown, EOF."""
from __future__ import annotations

import os
import queue
import signal
import time
from typing import Dict, List

import pytest

from launcher.agent.session import AgentSession, start_session
from launcher.transport.local import LocalTransport

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def run_agent(processes: List[dict], tails=(), hang_s=None, grace=1.0):
    lines: Dict[str, List[str]] = {}
    events: queue.Queue = queue.Queue()
    doc = {"job_id": "t", "attempt": 1, "host": "h", "grace": grace, "hang_s": hang_s, "files": [],
           "processes": processes, "tails": list(tails)}
    sinks = [lambda line, n=p["name"]: lines.setdefault(n, []).append(line) for p in processes]
    tail_sinks = [lambda line, j=j: lines.setdefault(f"tail{j}", []).append(line) for j in range(len(tails))]
    session = start_session(LocalTransport("h"), "python3", doc, sinks, tail_sinks, events)
    return session, events, lines


def collect(events, until, timeout=20.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            e = events.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(e)
        if until(e):
            return seen
    raise AssertionError(f"no matching event within {timeout} s: {[(e.kind, dict(e.data)) for e in seen]}")


def proc(name, script, **kw):
    return {"name": name, "argv": ["bash", "-c", script], "env": {"X": "1"}, "cwd": "/tmp", **kw}


def test_lines_keep_their_process_and_exits_are_reported(tmp_path):
    session, events, lines = run_agent([
        proc("a", "for i in $(seq 200); do echo a$i; echo A$i >&2; done; exit 4"),
        proc("b", "printf 'no newline'; exit 0")])
    seen = collect(events, lambda e: e.kind == "done")
    exits = {e.index: e.data["status"] for e in seen if e.kind == "exit"}
    assert exits == {0: 4, 1: 0}
    assert [x for x in lines["a"] if x.startswith("a")] == [f"a{i}" for i in range(1, 201)]
    assert [x for x in lines["a"] if x.startswith("A")] == [f"A{i}" for i in range(1, 201)]
    assert lines["b"] == ["no newline"]
    assert session.wait(5)


def test_a_tailed_file_and_a_silent_process_are_seen(tmp_path):
    log = tmp_path / "sub" / "worker_0.log"
    session, events, lines = run_agent(
        [proc("w", f"mkdir -p {tmp_path}/sub; echo one >> {log}; echo two >> {log}; sleep 30", watch=True)],
        tails=[{"path": str(log), "watch": False}], hang_s=1.0)
    seen = collect(events, lambda e: e.kind == "hang")
    assert seen[-1].index == 0 and seen[-1].data["silent_s"] >= 1.0
    assert lines["tail0"][:2] == ["one", "two"]
    session.stop(signal.SIGTERM)
    collect(events, lambda e: e.kind == "done")


def test_stop_ends_groups_and_escaped_descendants_even_when_sigterm_is_ignored(tmp_path):
    pidfile = tmp_path / "escaped.pid"
    session, events, lines = run_agent([
        proc("stubborn", "trap '' TERM; echo up; while true; do sleep 0.1; done"),
        proc("escaper", f"setsid bash -c 'echo $$ > {pidfile}; sleep 60' & sleep 60")], grace=0.5)
    started = collect(events, lambda e: e.kind == "ready")
    pids = [e.data["pid"] for e in started if e.kind == "started"]
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    escaped = int(pidfile.read_text())
    t0 = time.monotonic()
    session.stop(signal.SIGTERM)
    seen = collect(events, lambda e: e.kind == "done")
    assert time.monotonic() - t0 < 5
    statuses = {e.index: e.data["status"] for e in seen if e.kind == "exit"}
    assert statuses[0] == -signal.SIGKILL
    assert not any(alive(p) for p in [*pids, escaped])


def test_eof_from_the_launcher_tears_everything_down(tmp_path):
    session, events, _ = run_agent([proc("x", "sleep 60"), proc("y", "sleep 60")])
    pids = [e.data["pid"] for e in collect(events, lambda e: e.kind == "ready") if e.kind == "started"]
    session.close()
    assert session.wait(10)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert isinstance(session, AgentSession) and os.getpid()
