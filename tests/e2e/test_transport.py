"""Both transports, local and SSH (a real sshd on 127.0.0.2), through the same tests and interface:
short commands, files, and host agents started through them."""
import dataclasses
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

from launcher.health.preflight import LaunchInputs, launch_check
from launcher.spec.load import parse_cluster
from launcher.transport.base import HostError, Transport
from launcher.transport.factory import open_transport
from launcher.transport.local import LocalTransport
from tests.harness.agents import start_attempt
from tests.harness.procs import alive, group_members

pytestmark = pytest.mark.e2e

TAG = "REFINENET_JOB_ID"


@dataclass
class Host:
    transport: Transport
    workdir: Path
    python: str


@pytest.fixture(params=["local", "ssh"])
def host(request, tmp_path):
    if request.param == "local":
        transport, workdir = LocalTransport("local"), tmp_path / "work"
    else:
        spec = request.getfixturevalue("ssh_hosts")[0]
        transport, workdir = open_transport(spec), Path(spec.workdir) / request.node.name
    workdir.mkdir(parents=True, exist_ok=True)
    with transport:
        yield Host(transport, workdir, sys.executable)


def wait_gone(pids, timeout=5.0):
    """Pids among `pids` still alive (not zombies) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        time.sleep(0.05)
    return left


def wait_members(pgid, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    members = group_members(pgid)
    while len(members) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        members = group_members(pgid)
    return members


class Agent:
    """A host agent started through the host's transport, with its lines and events collected."""

    def __init__(self, host: Host, processes, tails=(), hang_s=None, grace=1.0):
        self.lines: Dict[str, List[str]] = {}
        self.events: queue.Queue = queue.Queue()
        self.seen: List = []
        procs = [{"name": f"p{i}", "cwd": str(host.workdir), "env": {}, **p} for i, p in enumerate(processes)]
        doc = {"job_id": "t", "attempt": 1, "host": "h", "grace": grace, "hang_s": hang_s, "files": [],
               "processes": procs, "tails": list(tails)}
        sinks = [lambda line, n=p["name"]: self.lines.setdefault(n, []).append(line) for p in procs]
        tail_sinks = [lambda line, j=j: self.lines.setdefault(f"t{j}", []).append(line)
                      for j in range(len(tails))]
        self.session = start_attempt(host.transport, host.python, doc, sinks, tail_sinks, self.events)

    def until(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"no such event in {timeout} s: {[(e.kind, dict(e.data)) for e in self.seen]}")

    def pids(self) -> List[int]:
        self.until(lambda e: e.kind == "ready")
        return [e.data["pid"] for e in self.seen if e.kind == "started"]

    def statuses(self) -> Dict[int, int]:
        self.until(lambda e: e.kind == "done")
        return {e.index: e.data["status"] for e in self.seen if e.kind == "exit"}


def sh(script, **kw):
    return {"argv": ["sh", "-c", script], **kw}


def test_processes_run_with_env_and_cwd_and_report_real_ids(host):
    agent = Agent(host, [sh('echo "value=$GREETING"; pwd; echo to-stderr >&2; exit 7',
                            env={"GREETING": "hello world; $(id)"})])
    pids = agent.pids()
    assert agent.statuses() == {0: 7}
    assert agent.lines["p0"] == ["value=hello world; $(id)", str(host.workdir), "to-stderr"]
    started = [e for e in agent.seen if e.kind == "started"][0]
    assert started.data["pid"] == started.data["pgid"] == pids[0] > 1


def test_lines_arrive_in_order_whole_and_complete(host):
    script = (
        "import sys\n"
        "for i in range(3000):\n"
        "    stream = sys.stderr if i % 3 == 0 else sys.stdout\n"
        "    stream.write('line %d %s\\n' % (i, 'x' * (i % 50))); stream.flush()\n"
        "sys.stdout.write('L' * 300000 + '\\n')\n"
        "sys.stdout.write('no newline at the end'); sys.stdout.flush()\n"
    )
    agent = Agent(host, [{"argv": [host.python, "-c", script]}])
    assert agent.statuses() == {0: 0}
    lines = agent.lines["p0"]
    out = [f"line {i} {'x' * (i % 50)}" for i in range(3000) if i % 3]
    err = [f"line {i} {'x' * (i % 50)}" for i in range(3000) if i % 3 == 0]
    assert [x for x in lines if x.startswith("line") and int(x.split()[1]) % 3] == out
    assert [x for x in lines if x.startswith("line") and int(x.split()[1]) % 3 == 0] == err
    stdout = [x for x in lines if not (x.startswith("line") and int(x.split()[1]) % 3 == 0)]
    assert stdout[-2:] == ["L" * 300000, "no newline at the end"]


def test_many_fast_writers_lose_nothing(host):
    agent = Agent(host, [{"argv": ["seq", "1", "20000"]} for _ in range(8)])
    assert agent.statuses() == {i: 0 for i in range(8)}
    expected = [str(i) for i in range(1, 20001)]
    assert all(agent.lines[f"p{i}"] == expected for i in range(8))


def test_exit_codes_signal_deaths_and_commands_that_cannot_start(host):
    agent = Agent(host, [sh("exit 200"), sh("exit 0"), sh("kill -KILL $$"), sh("kill -TERM $$"),
                         {"argv": ["no-such-program", "--flag"]},
                         {"argv": ["true"], "cwd": str(host.workdir / "missing")}])
    assert agent.statuses() == {0: 200, 1: 0, 2: -signal.SIGKILL, 3: -signal.SIGTERM, 4: 127, 5: 127}
    errors = [e.data["message"] for e in agent.seen if e.kind == "error"]
    assert any("no-such-program" in m for m in errors)
    assert any("No such file or directory" in m for m in errors)


def test_stop_takes_every_tree_and_escalates_to_sigkill(host):
    agent = Agent(host, [sh("sleep 60 & sleep 60 & sh -c 'sleep 60' & wait"),
                         sh("trap '' TERM; echo ready; sleep 60 & wait")], grace=0.5)
    pids = agent.pids()
    members = wait_members(pids[0], 5) + wait_members(pids[1], 2)
    started = time.monotonic()
    agent.session.stop(signal.SIGTERM)
    statuses = agent.statuses()
    assert time.monotonic() - started < 5
    assert statuses == {0: -signal.SIGTERM, 1: -signal.SIGKILL}
    assert wait_gone(members) == []


def test_stray_processes_of_a_finished_process_are_cleaned_up(host):
    agent = Agent(host, [sh("sleep 60 & echo $!; exit 0")])
    assert agent.statuses() == {0: 0}
    assert wait_gone([int(agent.lines["p0"][0])]) == []


def test_signals_reach_every_process_group(host):
    script = "trap 'echo got USR1; exit 3' USR1; echo ready; while :; do sleep 0.05; done"
    agent = Agent(host, [sh(script), sh(script)])
    agent.pids()
    deadline = time.monotonic() + 10
    while len(agent.lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    agent.session.signal(signal.SIGUSR1)
    assert agent.statuses() == {0: 3, 1: 3}
    assert "got USR1" in agent.lines["p0"] and "got USR1" in agent.lines["p1"]


def test_files_are_followed_and_silence_is_reported(host):
    log = host.workdir / "sub" / "worker_0.log"
    agent = Agent(host, [sh(f"mkdir -p {host.workdir}/sub; echo one >> {log}; echo two >> {log}; sleep 30",
                            watch=True)], tails=[{"path": str(log), "watch": False}], hang_s=1.0)
    hang = agent.until(lambda e: e.kind == "hang")
    assert hang.index == 0 and hang.data["silent_s"] >= 1.0
    assert agent.lines["t0"][:2] == ["one", "two"]
    agent.session.stop(signal.SIGTERM)
    assert agent.statuses() == {0: -signal.SIGTERM}


def test_kill_group_by_id_from_another_transport_checks_the_job_tag(host, request):
    job = f"job-{request.node.name}"
    agent = Agent(host, [sh("sleep 60 & wait", env={TAG: job})])
    pgid = agent.pids()[0]
    members = wait_members(pgid, 2)
    with (LocalTransport("local") if isinstance(host.transport, LocalTransport)
          else open_transport(request.getfixturevalue("ssh_hosts")[0])) as other:
        assert other.kill_group(pgid, signal.SIGTERM, verify_env=(TAG, "some-other-job")) is False
        assert other.kill_group(pgid, signal.SIGTERM, verify_env=(TAG, job)) is True
        assert agent.statuses() == {0: -signal.SIGTERM}
        assert wait_gone(members) == []
        assert other.kill_group(pgid, signal.SIGTERM) is False


def test_exec_separates_streams_and_times_out_killing_the_command(host):
    result = host.transport.exec(["sh", "-c", 'echo "out $X"; echo err >&2; exit 4'], env={"X": "1"},
                                 cwd=str(host.workdir))
    assert (result.returncode, result.stdout, result.stderr, result.ok) == (4, "out 1\n", "err\n", False)
    assert host.transport.exec(["sh", "-c", "kill -KILL $$"]).returncode == -signal.SIGKILL
    missing = host.transport.exec(["no-such-program"])
    assert missing.returncode == 127 and "cannot start no-such-program" in missing.stderr
    pid_file = host.workdir / "slow.pid"
    started = time.monotonic()
    with pytest.raises(HostError, match="did not finish within 1 s"):
        host.transport.exec(["sh", "-c", 'echo $$ > "$1"; exec sleep 60', "sh", str(pid_file)], timeout=1)
    assert time.monotonic() - started < 5
    assert wait_gone([int(pid_file.read_text())]) == []


def test_files_are_written_atomically_into_new_folders_and_read_back(host):
    target = host.workdir / "deep" / "er" / "rank_table.json"
    host.transport.write_file(str(target), b'{"a": 1}\n', mode=0o600)
    assert host.transport.read_file(str(target)) == b'{"a": 1}\n'
    assert target.stat().st_mode & 0o777 == 0o600
    payload = os.urandom(3 * 1024 * 1024)
    host.transport.write_file(str(target), payload)
    assert host.transport.read_file(str(target)) == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["rank_table.json"]
    with pytest.raises(FileNotFoundError):
        host.transport.read_file(str(host.workdir / "absent.json"))


def test_probe_and_preflight_checks(host):
    info = host.transport.probe(host.python)
    assert info.host == host.transport.host
    assert info.python_version == ".".join(map(str, sys.version_info[:3]))
    assert info.hostname and os.path.isabs(info.python)
    with pytest.raises(HostError, match="does not run"):
        host.transport.probe("/no/such/python")
    spec = parse_cluster({"name": "t", "backend": "dynamic", "device": "cpu", "master": {"port": 9999},
                          "health": {"check_devices": False, "min_free_disk_gb": 0.01},
                          "hosts": [{"name": host.transport.host, "ranks": 1, "workdir": str(host.workdir),
                                     "python": host.python}]}, "t.yaml")
    h = spec.hosts[0]
    (host.workdir / "data.lst").write_text("x")
    checks = launch_check(spec, h, host.transport, LaunchInputs(("json", "launcher.hostside.program"),
                                                                (str(host.workdir / "data.lst"),)))
    assert {c.check for c in checks} >= {"reachable", "workdir writable", "disk space"}
    assert all(c.ok for c in checks)
    with pytest.raises(HostError, match="no_such_module_xyz"):
        launch_check(spec, h, host.transport, LaunchInputs(("json", "no_such_module_xyz")))
    with pytest.raises(HostError, match="input file.*missing there: /nonexistent/list"):
        launch_check(spec, h, host.transport, LaunchInputs(("json",), ("/nonexistent/list",)))
    (host.workdir / "ro").mkdir()
    (host.workdir / "ro" / "file").write_text("")
    bad = dataclasses.replace(h, workdir=str(host.workdir / "ro" / "file" / "sub"))
    with pytest.raises(HostError, match="cannot write"):
        launch_check(spec, bad, host.transport, LaunchInputs(("json",)))


def test_closing_the_transport_ends_its_agents(host):
    agent = Agent(host, [sh("sleep 60 & sleep 60 & wait")])
    members = wait_members(agent.pids()[0], 3)
    host.transport.close()
    assert wait_gone(members) == []
    assert agent.session.wait(10)


def test_one_transport_serves_many_threads(host):
    results = [None] * 8

    def work(i):
        agent = Agent(host, [sh(f"echo {i}")])
        code = agent.statuses()
        path = host.workdir / f"f{i}"
        host.transport.write_file(str(path), str(i).encode())
        echoed = host.transport.exec(["echo", str(i)]).stdout
        results[i] = (code, agent.lines["p0"], host.transport.read_file(str(path)), echoed)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [({0: 0}, [str(i)], str(i).encode(), f"{i}\n") for i in range(8)]
