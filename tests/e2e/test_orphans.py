"""A launcher killed with SIGKILL leaves no process behind, on the local host or on SSH hosts.

A launcher-like parent process starts process trees (a shell with `sleep` children, one subtree
ignoring SIGTERM so only SIGKILL ends it) through host agents, prints their ids and waits; the
test SIGKILLs it and checks that every process of every tree, and every agent, is gone within 5 s.
"""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.harness.procs import cmdline, gone_after, group_members, identity

pytestmark = pytest.mark.e2e

TREE = "sleep 300 & sh -c 'trap \"\" TERM; sleep 300' & sleep 300 & wait"

PARENT = """
import json, queue, sys, time
from types import SimpleNamespace
from launcher.agent.session import start_session
from launcher.transport.factory import open_transport

events, sessions = queue.Queue(), []
for spec in json.loads(sys.argv[1]):
    ssh = SimpleNamespace(**spec["ssh"]) if spec.get("ssh") else None
    host = SimpleNamespace(name=spec["name"], address=spec["address"], ssh=ssh, python=spec.get("python"))
    processes = [{"name": f"r{rank}", "argv": ["sh", "-c", sys.argv[2]], "cwd": "/",
                  "env": {"REFINENET_JOB_ID": "orphan-test"}} for rank in range(2)]
    doc = {"job_id": "orphan-test", "attempt": 1, "host": host.name, "grace": 2.0, "hang_s": None,
           "files": [], "tails": [], "processes": processes}
    sessions.append(start_session(open_transport(host), host.python or "python3", doc, [print, print], [],
                                  events))
started, ready = [], 0
while ready < len(sessions):
    event = events.get(timeout=30)
    if event.kind == "started":
        started.append([event.host, event.data["pid"], event.data["pgid"]])
    ready += event.kind == "ready"
print(json.dumps(started), flush=True)
while True:
    time.sleep(60)
"""


def start_parent(hosts, tree: str, child_env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PARENT, json.dumps(hosts), tree], env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_parent(parent: subprocess.Popen, procs) -> float:
    """SIGKILL the launcher-like parent; the seconds until none of `procs` (identities) lives, at most 10."""
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    killed = time.monotonic()
    gone, left = gone_after(procs, killed, 10)
    assert left == [], [(pid, cmdline(pid)) for pid in left]
    return gone


def close_parent(parent: subprocess.Popen) -> None:
    if parent.poll() is None:
        parent.kill()
    parent.wait()
    parent.stdout.close()
    parent.stderr.close()


def identities(pids):
    return {i for i in map(identity, pids) if i}


def run_and_kill_launcher(hosts, child_env):
    """Start the parent, SIGKILL it once its trees are up; the seconds until nothing of them is left."""
    parent = start_parent(hosts, TREE, child_env)
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()
        started = json.loads(line)
        assert len(started) == 2 * len(hosts)
        trees = set()
        for _, pid, pgid in started:
            assert pid == pgid
            deadline = time.monotonic() + 10
            while len(group_members(pgid)) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            tree = group_members(pgid)
            assert len(tree) >= 5, [cmdline(p) for p in tree]
            trees |= identities(tree + [psutil.Process(pid).ppid()])
        gone = kill_parent(parent, trees)
        assert all(group_members(pgid) == [] for _, _, pgid in started)
        return gone
    finally:
        close_parent(parent)


def test_sigkilled_launcher_leaves_no_local_process(child_env):
    local = {"name": "local", "address": "localhost", "ssh": None}
    assert run_and_kill_launcher([local], child_env) < 5


def test_sigkilled_launcher_leaves_no_process_on_ssh_hosts(ssh_hosts, child_env):
    hosts = [host.spec_dict() for host in ssh_hosts]
    assert run_and_kill_launcher(hosts, child_env) < 5


ESCAPING_TREE = "setsid sleep 301 & setsid sh -c 'trap \"\" TERM; sleep 302' & sleep 303 & wait"


def test_processes_that_leave_the_group_are_ended_too(child_env):
    """msrun starts its workers in sessions of their own: the agent must end them all the same."""
    local = {"name": "local", "address": "localhost", "ssh": None}
    parent = start_parent([local], ESCAPING_TREE, child_env)
    try:
        started = json.loads(parent.stdout.readline())
        everything = set()
        for _, pid, _ in started:
            shell = psutil.Process(pid)
            deadline = time.monotonic() + 10
            while len(shell.children(recursive=True)) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            tree = [p.pid for p in shell.children(recursive=True)] + [pid]
            assert sum(1 for p in tree if os.getsid(p) != pid) >= 2, [cmdline(p) for p in tree]
            everything |= identities(tree + [shell.ppid()])
        assert kill_parent(parent, everything) < 5
    finally:
        close_parent(parent)
