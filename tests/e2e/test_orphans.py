"""A launcher or a host agent killed with SIGKILL leaves no process behind, on the local host or on SSH
hosts.

A launcher-like parent process starts process trees (a shell with `sleep` children, one subtree
ignoring SIGTERM so only SIGKILL ends it) through host agents, prints their ids and waits; the
test SIGKILLs it and checks that every process of every tree, and every agent, is gone within 5 s.
An agent SIGKILLed on its own takes the processes it started along (parent-death signal); what they
started themselves is ended by a sweep of the job, which the launcher runs on a host whose agent it
lost.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from launcher.transport.factory import open_transport
from tests.harness.agents import start_attempt
from tests.harness.launched import command_cluster, launch_command, record_rank_pids
from tests.harness.procs import cmdline, gone_after, gone_within, group_members, identity, tagged

pytestmark = pytest.mark.e2e

TREE = "sleep 300 & sh -c 'trap \"\" TERM; sleep 300' & sleep 300 & wait"

PARENT = """
import json, queue, sys, time
from types import SimpleNamespace
from tests.harness.agents import start_attempt
from launcher.transport.factory import open_transport

events, sessions = queue.Queue(), []
for spec in json.loads(sys.argv[1]):
    ssh = SimpleNamespace(**spec["ssh"]) if spec.get("ssh") else None
    host = SimpleNamespace(name=spec["name"], address=spec["address"], ssh=ssh, python=spec.get("python"))
    processes = [{"name": f"r{rank}", "argv": ["sh", "-c", sys.argv[2]], "cwd": "/",
                  "env": {"REFINENET_JOB_ID": "orphan-test"}} for rank in range(2)]
    doc = {"job_id": "orphan-test", "attempt": 1, "host": host.name, "grace": 2.0, "hang_s": None,
           "files": [], "tails": [], "processes": processes}
    sessions.append(start_attempt(open_transport(host), host.python or "python3", doc, [print, print], [],
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


def alive(procs):
    """The psutil processes of `procs` still running (zombies are gone)."""
    result = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                result.append(proc)
        except psutil.NoSuchProcess:
            pass
    return result


def one_host(kind: str, request, tmp_path) -> dict:
    if kind == "local":
        return {"name": "local", "address": "localhost", "workdir": str(tmp_path / "work")}
    host = request.getfixturevalue("ssh_hosts")[0].spec_dict()
    return {**host, "workdir": f"{host['workdir']}/{request.node.name}"}


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_processes_die_with_their_agent_and_a_sweep_ends_what_they_started(kind, request, tmp_path):
    """SIGKILL of an agent: the processes it started die with it (parent-death signal); a process they
    started themselves (`sleep 301 &`) does not, and `sweep_job` ends it."""
    spec = one_host(kind, request, tmp_path)
    ssh = SimpleNamespace(**spec["ssh"]) if spec.get("ssh") else None
    host = SimpleNamespace(name=spec["name"], address=spec["address"], ssh=ssh, python=sys.executable)
    job = f"agent-kill-{kind}-{os.getpid()}"
    events = queue.Queue()
    processes = [{"name": f"r{i}", "argv": ["bash", "--norc", "--noprofile", "-c", script], "cwd": "/",
                  "env": {"REFINENET_JOB_ID": job}}
                 for i, script in enumerate(["exec sleep 300", "sleep 301 & wait"])]
    doc = {"job_id": job, "attempt": 1, "host": host.name, "grace": 2.0, "hang_s": None, "files": [],
           "tails": [], "processes": processes}
    with open_transport(host) as transport:
        start_attempt(transport, sys.executable, doc, [print, print], [], events)
        pids = {}
        while len(pids) < 2:
            event = events.get(timeout=30)
            if event.kind == "started":
                pids[event.index] = event.data["pid"]
        started = [psutil.Process(pid) for pid in pids.values()]
        agent = started[0].parent()
        deadline = time.monotonic() + 10
        while not started[1].children() and time.monotonic() < deadline:
            time.sleep(0.02)
        grandchild = started[1].children()[0]
        agent.kill()
        killed = time.monotonic()
        while alive(started) and time.monotonic() - killed < 2:
            time.sleep(0.02)
        assert alive(started) == []
        assert alive([grandchild]) == [grandchild], "the grandchild has no parent-death signal of its own"
        result = transport.sweep_job(job, 5)
        assert result.clean and [pid for pid, _ in result.killed] == [grandchild.pid]
        assert gone_within(job, 2) == []


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_a_sigkilled_agent_leaves_no_process_of_the_job(kind, request, tmp_path, standin_python, child_env):
    spec = one_host(kind, request, tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    job = f"agent-sigkill-{kind}"
    cluster = command_cluster(tmp_path / "c", spec, standin_python, ranks=1)
    launcher = launch_command(cluster, runs, job, child_env, "bash", "-c", "exec sleep 300")
    try:
        rank, = record_rank_pids(runs, job, 1, launcher)
        assert len(tagged(job)) >= 2
        psutil.Process(rank).parent().kill()
        killed = time.monotonic()
        left = gone_within(job, 2)
        assert left == [], f"still alive {time.monotonic() - killed:.1f} s after the agent died: {left}"
        assert launcher.wait(60) == 1
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
