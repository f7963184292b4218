"""Both transports, local and SSH (a real sshd on 127.0.0.2), through the same tests and interface."""
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from launcher.transport.base import HostError, Transport
from launcher.transport.factory import open_transport
from launcher.transport.local import LocalTransport
from launcher.transport.probe import check_python_imports, check_writable

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


def group_members(pgid):
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def is_alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, timeout=5.0):
    """Pids among `pids` still alive (not zombies) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if is_alive(p)]
        time.sleep(0.05)
    return alive


def wait_members(pgid, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    members = group_members(pgid)
    while len(members) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        members = group_members(pgid)
    return members


def test_runs_with_env_and_cwd_and_reports_real_ids(host):
    lines = []
    proc = host.transport.run(["sh", "-c", 'echo "value=$GREETING"; pwd; echo to-stderr >&2; exit 7'],
                              env={"GREETING": "hello world; $(id)"}, cwd=str(host.workdir),
                              on_line=lines.append)
    assert proc.wait(10) == 7
    assert lines == ["value=hello world; $(id)", str(host.workdir), "to-stderr"]
    assert proc.pid == proc.pgid > 1
    assert proc.poll() == 7


def test_merged_lines_arrive_in_order_whole_and_complete(host):
    script = (
        "import sys\n"
        "for i in range(3000):\n"
        "    stream = sys.stderr if i % 3 == 0 else sys.stdout\n"
        "    stream.write('line %d %s\\n' % (i, 'x' * (i % 50))); stream.flush()\n"
        "sys.stdout.write('L' * 300000 + '\\n')\n"
        "sys.stdout.write('no newline at the end'); sys.stdout.flush()\n"
    )
    lines = []
    proc = host.transport.run([host.python, "-c", script], on_line=lines.append)
    assert proc.wait(30) == 0
    assert lines[:3000] == [f"line {i} {'x' * (i % 50)}" for i in range(3000)]
    assert lines[3000:] == ["L" * 300000, "no newline at the end"]


def test_many_fast_writers_lose_nothing(host):
    runs = 8
    lines = [[] for _ in range(runs)]
    procs = [host.transport.run(["seq", "1", "20000"], on_line=lines[r].append) for r in range(runs)]
    assert [p.wait(60) for p in procs] == [0] * runs
    expected = [str(i) for i in range(1, 20001)]
    assert all(got == expected for got in lines)


def test_exit_codes_and_signal_deaths(host):
    t = host.transport
    assert t.run(["sh", "-c", "exit 200"]).wait(10) == 200
    assert t.run(["sh", "-c", "exit 0"]).wait(10) == 0
    assert t.run(["sh", "-c", "kill -KILL $$"]).wait(10) == -signal.SIGKILL
    assert t.run(["sh", "-c", "kill -TERM $$"]).wait(10) == -signal.SIGTERM


def test_a_command_that_cannot_start_is_a_host_error(host):
    with pytest.raises(HostError, match="no-such-program"):
        host.transport.run(["no-such-program", "--flag"])
    with pytest.raises(HostError, match="No such file or directory"):
        host.transport.run(["true"], cwd=str(host.workdir / "missing"))


def test_kill_group_takes_the_whole_tree(host):
    proc = host.transport.run(["sh", "-c", "sleep 60 & sleep 60 & sh -c 'sleep 60' & wait"])
    members = wait_members(proc.pgid, 5)
    assert len(members) >= 5 and proc.pid in members
    proc.kill_group(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM
    assert wait_gone(members) == []


def test_terminate_escalates_to_sigkill(host):
    lines = []
    proc = host.transport.run(["sh", "-c", "trap '' TERM; echo ready; sleep 60 & wait"], on_line=lines.append)
    while not lines:
        time.sleep(0.02)
    members = wait_members(proc.pgid, 2)
    started = time.monotonic()
    assert proc.terminate(grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert wait_gone(members) == []


def test_stray_processes_of_a_finished_command_are_cleaned_up(host):
    lines = []
    proc = host.transport.run(["sh", "-c", "sleep 60 & echo $!; exit 0"], on_line=lines.append)
    assert proc.wait(10) == 0
    assert wait_gone([int(lines[0])]) == []


def test_signals_to_the_guard_reach_the_command(host):
    lines = []
    script = "trap 'echo got USR1; exit 3' USR1; echo ready; while :; do sleep 0.05; done"
    proc = host.transport.run(["sh", "-c", script], on_line=lines.append)
    while "ready" not in lines:
        time.sleep(0.02)
    guard = psutil.Process(proc.pid).parent()
    assert "guard" in " ".join(guard.cmdline()) or guard.name().startswith("python")
    guard.send_signal(signal.SIGUSR1)
    assert proc.wait(10) == 3
    assert lines[-1] == "got USR1"


def test_kill_group_by_id_from_another_transport_checks_the_job_tag(host, request):
    job = f"job-{request.node.name}"
    proc = host.transport.run(["sh", "-c", "sleep 60 & wait"], env={TAG: job})
    members = wait_members(proc.pgid, 2)
    with (LocalTransport("local") if isinstance(host.transport, LocalTransport)
          else open_transport(request.getfixturevalue("ssh_hosts")[0])) as other:
        assert other.kill_group(proc.pgid, signal.SIGTERM, verify_env=(TAG, "some-other-job")) is False
        assert proc.poll() is None
        assert other.kill_group(proc.pgid, signal.SIGTERM, verify_env=(TAG, job)) is True
        assert proc.wait(10) == -signal.SIGTERM
        assert wait_gone(members) == []
        assert other.kill_group(proc.pgid, signal.SIGTERM) is False


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
    check_python_imports(host.transport, host.python, ["json", "launcher.transport.guard"])
    with pytest.raises(HostError, match="no_such_module_xyz"):
        check_python_imports(host.transport, host.python, ["json", "no_such_module_xyz"])
    check_writable(host.transport, str(host.workdir / "out" / "r1"), host.python)
    assert (host.workdir / "out" / "r1").is_dir()
    (host.workdir / "ro").mkdir()
    (host.workdir / "ro" / "file").write_text("")
    with pytest.raises(HostError, match="cannot write"):
        check_writable(host.transport, str(host.workdir / "ro" / "file" / "sub"), host.python)


def test_closing_the_transport_kills_what_it_runs(host):
    proc = host.transport.run(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    members = wait_members(proc.pgid, 3)
    host.transport.close()
    assert wait_gone(members) == []
    assert proc.wait(5) is not None


def test_one_transport_serves_many_threads(host):
    results = [None] * 8

    def work(i):
        lines = []
        code = host.transport.run(["sh", "-c", f"echo {i}"], on_line=lines.append).wait(30)
        path = host.workdir / f"f{i}"
        host.transport.write_file(str(path), str(i).encode())
        echoed = host.transport.exec(["echo", str(i)]).stdout
        results[i] = (code, lines, host.transport.read_file(str(path)), echoed)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [(0, [str(i)], str(i).encode(), f"{i}\n") for i in range(8)]
