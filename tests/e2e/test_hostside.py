"""The host program through real transports: files without SFTP, checked on the host; checkpoint copies
verified while written; the sweep of a job's leftovers; ranks that read no shell startup file on a
host whose sessions run as on a stock server (a real sshd, a HOME with a ~/.bashrc that leaves a trace).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.ckpt_copy import LAUNCHER, PIPE, copy_checkpoint
from launcher.errors import HostError
from launcher.transport.factory import open_transport
from launcher.transport.hostprog import host_argv, host_stdin
from launcher.transport.local import LocalTransport
from refinenet import manifest as mf
from tests.e2e.sshd import SshServer, login_home, startup_trace
from tests.harness.launched import command_cluster, launch_command, record_rank_pids
from tests.harness.procs import alive, gone_within, kill_tagged, tagged

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory, ssh_client_key):
    """An sshd without the SFTP subsystem."""
    with SshServer(tmp_path_factory.mktemp("sshd-bare"), "bare", "127.0.0.6", ssh_client_key,
                   sftp=False) as server:
        yield server


@pytest.fixture(params=["local", "ssh"])
def host(request, tmp_path):
    if request.param == "local":
        transport, workdir = LocalTransport("local"), tmp_path / "work"
    else:
        server = request.getfixturevalue("bare_server")
        transport, workdir = open_transport(server.host()), Path(server.workdir) / request.node.name
    workdir.mkdir(parents=True, exist_ok=True)
    with transport:
        yield transport, workdir


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_files_travel_on_the_command_channel_and_a_bad_copy_keeps_the_old_file(host):
    transport, workdir = host
    target = workdir / "new" / "folder" / "data.bin"
    payload = os.urandom(5 * 1024 * 1024 + 17)
    transport.write_file(str(target), payload, mode=0o640)
    assert target.read_bytes() == payload and target.stat().st_mode & 0o777 == 0o640
    assert transport.read_file(str(target)) == payload
    assert b"".join(transport.read_chunks(str(target), 1 << 20)) == payload
    digest = hashlib.sha256(payload).hexdigest()
    assert transport.write_chunks(str(target), [payload[:99], payload[99:]], size=len(payload),
                                  sha256=digest) == len(payload)
    with pytest.raises(HostError, match="not written"):
        transport.write_chunks(str(target), [b"other bytes"], sha256=digest)
    with pytest.raises(HostError):
        transport.write_chunks(str(target), [payload[:-1]], size=len(payload))

    def failing():
        yield payload[:1 << 20]
        raise OSError("the source went away")

    for size in (None, len(payload)):
        with pytest.raises(OSError, match="went away"):
            transport.write_chunks(str(target), failing(), size=size)
    deadline = time.monotonic() + 5
    while leftovers(target.parent) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.read_bytes() == payload and leftovers(target.parent) == []
    assert transport.write_chunks(str(workdir / "streamed"), iter([b"a" * 70000, b"b"])) == 70001
    assert (workdir / "streamed").read_bytes() == b"a" * 70000 + b"b"
    with pytest.raises(FileNotFoundError):
        transport.read_file(str(workdir / "absent"))


def checkpoint(folder: Path, megabytes: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / mf.ckpt_name(2, 5)
    path.write_bytes(os.urandom(int(megabytes * 1e6)))
    mf.mark_complete(path, epoch=2, step=5, steps_per_epoch=5)
    return path


@pytest.mark.parametrize("route", [PIPE, LAUNCHER])
def test_a_checkpoint_copy_is_verified_at_the_target_while_it_is_written(ssh_servers, route):
    source, target = ssh_servers
    ckpt = checkpoint(Path(source.workdir) / f"copy-{route}" / "ckpt", 3)
    target_dir = Path(target.workdir) / f"copy-{route}" / "ckpt"
    with open_transport(source.host()) as src, open_transport(target.host()) as dst:
        result = copy_checkpoint(src, str(ckpt), dst, str(target_dir), route=route)
        assert (result.route, result.size, result.host) == (route, ckpt.stat().st_size, target.name)
        copied = target_dir / ckpt.name
        assert copied.read_bytes() == ckpt.read_bytes()
        manifest = ckpt.with_suffix(".json")
        assert (target_dir / manifest.name).read_bytes() == manifest.read_bytes()
        record = json.loads(ckpt.with_suffix(".json").read_text())
        record["sha256"] = "0" * 64
        ckpt.with_suffix(".json").write_text(json.dumps(record))
        broken = target.workdir / f"broken-{route}"
        with pytest.raises(HostError, match=f"{target.name}: .*not written: sha256"):
            copy_checkpoint(src, str(ckpt), dst, str(broken), route=route)
        assert not (broken / ckpt.name).exists() and not (broken / ckpt.with_suffix(".json").name).exists()
        with pytest.raises(HostError, match=f"^{source.name}: .*refinenet-9_9.json does not exist"):
            copy_checkpoint(src, str(ckpt.parent / "refinenet-9_9.ckpt"), dst, str(broken), route=route)
        lost = ckpt.with_name(mf.ckpt_name(8, 8))
        lost.with_suffix(".json").write_bytes(manifest.read_bytes())
        with pytest.raises(HostError, match=f"^{source.name}: cannot read {lost}: it does not exist"):
            copy_checkpoint(src, str(lost), dst, str(broken), route=route)


TREE = "sleep 300 & setsid sleep 301 & env -u REFINENET_JOB_ID sleep 302 & exec sleep 303"


def start_tree(job_id: str) -> subprocess.Popen:
    env = dict(os.environ, REFINENET_JOB_ID=job_id)
    proc = subprocess.Popen(["bash", "--norc", "-c", TREE], env=env, start_new_session=True)
    deadline = time.monotonic() + 10
    while len(psutil.Process(proc.pid).children(recursive=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def end_tree(proc: subprocess.Popen, job_id: str) -> None:
    """SIGKILL what is left of a `start_tree` tree: its group, and its tagged processes in other groups."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_tagged(job_id)


def test_a_sweep_ends_every_process_of_the_job_and_nothing_else(host):
    transport, _ = host
    job, other = f"sweep-{os.getpid()}", f"other-{os.getpid()}"
    victim, bystander = start_tree(job), start_tree(other)
    try:
        tree = [victim.pid] + [p.pid for p in psutil.Process(victim.pid).children(recursive=True)]
        assert len(tree) == 4
        result = transport.sweep_job(job, 5)
        assert result.clean and sorted(pid for pid, _ in result.killed) == sorted(tree)
        assert {name for _, name in result.killed} == {"sleep"}
        assert victim.wait(5) == -signal.SIGKILL and not any(alive(pid) for pid in tree)
        assert len(tagged(other)) == 3 and bystander.poll() is None
        again = transport.sweep_job(job, 5)
        assert (again.killed, again.left) == ((), ())
    finally:
        end_tree(victim, job)
        end_tree(bystander, other)


def test_a_sweep_spares_itself_and_its_ancestors_even_when_they_carry_the_tag():
    job = f"self-{os.getpid()}"
    victim = start_tree(job)
    try:
        wrapper = ["bash", "--norc", "-c", '"$@"; echo "wrapper lives"', "bash",
                   *host_argv(sys.executable, "sweep", job, "5")]
        done = subprocess.run(wrapper, input=host_stdin(), capture_output=True, timeout=60,
                              env=dict(os.environ, REFINENET_JOB_ID=job))
        assert done.returncode == 0 and done.stdout.decode().endswith("wrapper lives\n"), done.stderr
        report = json.loads(done.stdout.decode().splitlines()[0])
        assert len(report["killed"]) == 4 and report["left"] == []
    finally:
        end_tree(victim, job)


def test_ranks_read_no_startup_file_the_agents_login_read_once(tmp_path, ssh_client_key, standin_python,
                                                                 child_env):
    home = login_home(tmp_path / "home", pyenv=None, bash_env=True)
    with SshServer(tmp_path / "sshd", "login", "127.0.0.7", ssh_client_key, login_home=home) as server:
        runs = tmp_path / "runs"
        cluster = command_cluster(tmp_path / "c", server.host().spec_dict(), standin_python)
        proc = launch_command(cluster, runs, "no-rc", child_env, "bash", "-c", "exec sleep 300")
        try:
            ranks = record_rank_pids(runs, "no-rc", 2, proc)
            agents = {psutil.Process(pid).ppid() for pid in ranks}
            assert len(agents) == 1
            agent = agents.pop()
            started = {p.pid for p in psutil.Process(agent).children()}
            assert set(ranks) < started
            trace = startup_trace(home)
            # The login that became the agent read ~/.bashrc once (the stand-in `python` is a bash script,
            # which read the BASH_ENV that ~/.bashrc exported on its way to the agent, as pid `agent` too).
            assert [name for name, pid, _ in trace if pid == agent].count("bashrc") == 1
            assert [t for t in trace if t[1] in started or t[2] == agent] == []
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert gone_within("no-rc", 5) == []


def test_slurm_files_kills_and_sweeps_go_through_the_step_command(tmp_path):
    """SlurmTransport with `env` as its step prefix (srun's place: it runs the command here)."""
    from launcher.slurm.transport import SlurmTransport

    transport = SlurmTransport("n1", ["env"], sys.executable)
    target = tmp_path / "a" / "b.bin"
    data = os.urandom(3_000_000)
    transport.write_file(str(target), data, 0o600)
    assert transport.read_file(str(target)) == data and target.stat().st_mode & 0o777 == 0o600
    assert transport.write_chunks(str(target), [b"a" * 70000, b"b"]) == 70001
    with pytest.raises(HostError, match="not written: sha256"):
        transport.write_chunks(str(target), [b"x"], sha256="0" * 64)

    def failing():
        yield b"zz"
        raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        transport.write_chunks(str(target), failing())
    assert target.read_bytes() == b"a" * 70000 + b"b" and leftovers(target.parent) == []
    with pytest.raises(FileNotFoundError):
        transport.read_file(str(tmp_path / "absent"))
    job = f"slurm-{os.getpid()}"
    tree = start_tree(job)
    try:
        assert transport.kill_group(tree.pid, 0, verify_env=("REFINENET_JOB_ID", job))
        assert not transport.kill_group(tree.pid, 0, verify_env=("REFINENET_JOB_ID", "other"))
        result = transport.sweep_job(job, 5)
        assert result.clean and len(result.killed) == 4
    finally:
        end_tree(tree, job)


class NoLogin(LocalTransport):
    """A host whose program command cannot log in (an OpenSSH client's exit 255)."""

    def program_command(self, mode, *args):
        return ["sh", "-c", "echo 'Permission denied (publickey).' >&2; exit 255"]


def test_a_copy_whose_pipe_cannot_log_in_goes_through_the_launcher(tmp_path):
    ckpt = checkpoint(tmp_path / "src" / "ckpt", 1)
    result = copy_checkpoint(LocalTransport("a"), str(ckpt), NoLogin("b"), str(tmp_path / "dst"))
    assert result.route == LAUNCHER
    assert (tmp_path / "dst" / ckpt.name).read_bytes() == ckpt.read_bytes()
    with pytest.raises(HostError, match="Permission denied"):
        copy_checkpoint(LocalTransport("a"), str(ckpt), NoLogin("b"), str(tmp_path / "other"), route=PIPE)
    piped = copy_checkpoint(LocalTransport("a"), str(ckpt), LocalTransport("b"), str(tmp_path / "p"))
    assert piped.route == PIPE


class DiskFull(LocalTransport):
    """A host whose writer fails half-way: after the host program (on its stdin first) and 100 kB."""

    def program_command(self, mode, *args):
        taken = len(host_stdin()) + 100000
        return ["sh", "-c", f"head -c {taken} >/dev/null; echo 'No space left on device' >&2; exit 3"]


def test_a_piped_copy_names_the_writer_when_it_failed_first(tmp_path):
    ckpt = checkpoint(tmp_path / "src" / "ckpt", 8)
    with pytest.raises(HostError, match="^b: .*No space left on device"):
        copy_checkpoint(LocalTransport("a"), str(ckpt), DiskFull("b"), str(tmp_path / "dst"))
    lost = ckpt.with_name(mf.ckpt_name(9, 9))
    lost.with_suffix(".json").write_bytes(ckpt.with_suffix(".json").read_bytes())
    with pytest.raises(HostError, match=f"^a: cannot read {lost}: it does not exist"):
        copy_checkpoint(LocalTransport("a"), str(lost), DiskFull("b"), str(tmp_path / "dst"))
