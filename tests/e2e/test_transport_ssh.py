"""SSH connection handling against real sshd servers: host keys, authentication, unreachable hosts, agent."""
import queue
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.agent.session import start_agent
from launcher.transport.base import HostError
from launcher.transport.factory import open_transport
from tests.harness.agents import start_attempt
from tests.harness.hosts import ClientKey, free_port

pytestmark = pytest.mark.e2e


def with_ssh(host, **changes):
    return replace(host, ssh=replace(host.ssh, **changes))


def run_agent(transport, python, argv, timeout=30.0):
    """(exit status, output lines) of `argv` run by a host agent started through `transport`."""
    events, lines = queue.Queue(), []
    doc = {"job_id": "t", "attempt": 1, "host": transport.host, "grace": 1.0, "hang_s": None, "files": [],
           "tails": [], "processes": [{"name": "p", "argv": list(argv), "cwd": "/", "env": {}}]}
    start_attempt(transport, python, doc, [lines.append], [], events)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        event = events.get(timeout=timeout)
        if event.kind == "exit":
            status = event.data["status"]
        if event.kind in ("done", "lost"):
            return status, lines
    raise AssertionError("the agent did not finish")


def test_unknown_host_key_is_refused_with_the_command_that_trusts_it(ssh_hosts, tmp_path):
    known_hosts = tmp_path / "ssh" / "known_hosts"
    host = with_ssh(ssh_hosts[0], known_hosts=str(known_hosts))
    with open_transport(host) as transport, pytest.raises(HostError) as err:
        transport.probe(host.python)
    message = str(err.value)
    hint = f"ssh-keyscan -p {host.port} {host.address} >> {known_hosts}"
    assert err.value.host == host.name and "unknown host key" in message and hint in message
    assert "accept-new" in message and not known_hosts.exists()

    known_hosts.parent.mkdir()
    subprocess.run(["sh", "-c", hint], check=True, stderr=subprocess.DEVNULL)
    with open_transport(host) as transport:
        assert transport.probe(host.python).host == host.name


def test_accept_new_records_the_key_and_then_checks_it(ssh_hosts, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    host = with_ssh(ssh_hosts[0], known_hosts=str(known_hosts), host_key_policy="accept-new")
    with open_transport(host) as transport:
        transport.probe(host.python)
    assert known_hosts.read_text() == f"[{host.address}]:{host.port} {host.host_key}\n"
    with open_transport(with_ssh(host, host_key_policy="strict")) as transport:
        transport.probe(host.python)
    assert known_hosts.read_text().count("\n") == 1


def test_a_changed_host_key_is_refused_even_with_accept_new(ssh_hosts, tmp_path):
    a, b = ssh_hosts
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{a.address}]:{a.port} {b.host_key}\n")
    host = with_ssh(a, known_hosts=str(known_hosts), host_key_policy="accept-new")
    with open_transport(host) as transport, pytest.raises(HostError, match="HOST KEY CHANGED") as err:
        transport.probe(host.python)
    assert f"ssh-keygen -f {known_hosts} -R '[{a.address}]:{a.port}'" in str(err.value)


def test_a_key_the_host_does_not_authorize_fails_authentication(ssh_hosts, tmp_path):
    stranger = ClientKey.create(tmp_path / "stranger")
    host = with_ssh(ssh_hosts[0], key_file=str(stranger.private))
    with open_transport(host) as transport, pytest.raises(HostError, match="authentication failed"):
        transport.probe(host.python)
    missing = with_ssh(ssh_hosts[0], key_file=str(tmp_path / "nope"))
    with open_transport(missing) as transport, pytest.raises(HostError, match="nope does not exist"):
        transport.probe(missing.python)


def test_agent_authentication(ssh_hosts, ssh_agent, monkeypatch):
    host = with_ssh(ssh_hosts[0], key_file=None, use_agent=True)
    monkeypatch.setenv("SSH_AUTH_SOCK", ssh_agent.socket)
    monkeypatch.setenv("HOME", str(ssh_agent.folder))
    with open_transport(host) as transport:
        assert transport.exec(["echo", "via agent"]).stdout == "via agent\n"
    with open_transport(with_ssh(host, use_agent=False)) as transport:
        with pytest.raises(HostError, match="authentication failed"):
            transport.probe(host.python)


def test_refused_connection_fails_fast(ssh_hosts):
    host = ssh_hosts[0]
    closed = with_ssh(host, port=free_port(host.address))
    started = time.monotonic()
    with open_transport(closed) as transport, pytest.raises(HostError, match="connection refused") as err:
        transport.exec(["true"])
    assert time.monotonic() - started < 2 and err.value.host == host.name


def test_a_silent_server_times_out_fast(ssh_hosts):
    host = ssh_hosts[0]
    with socket.socket() as silent:
        silent.bind((host.address, 0))
        silent.listen(8)
        mute = with_ssh(host, port=silent.getsockname()[1], connect_timeout_s=1.0)
        started = time.monotonic()
        with open_transport(mute) as transport, pytest.raises(HostError, match="within 1 s"):
            transport.probe(host.python)
    assert time.monotonic() - started < 4


def test_each_host_is_its_own_server_with_its_own_workdir(ssh_hosts):
    seen = {}
    for host in ssh_hosts:
        with open_transport(host) as transport:
            result = transport.exec(["sh", "-c", 'echo "$REFINENET_SIMULATED_HOST $SSH_CONNECTION"'])
            seen[host.name] = result.stdout.split()
            transport.write_file(f"{host.workdir}/which-host", host.name.encode())
    assert seen["host-a"][0] == "host-a" and seen["host-b"][0] == "host-b"
    assert seen["host-a"][3] == "127.0.0.2" and seen["host-b"][3] == "127.0.0.3"
    assert len({h.workdir for h in ssh_hosts}) == len(ssh_hosts)


def test_one_connection_serves_commands_and_files(ssh_hosts):
    host = ssh_hosts[0]
    with open_transport(host) as transport:
        connection = transport.connect()
        assert run_agent(transport, host.python, ["true"]) == (0, [])
        transport.exec(["true"])
        transport.write_file(f"{host.workdir}/one-connection", b"x")
        transport.read_file(f"{host.workdir}/one-connection")
        assert transport.connect() is connection
        peers = transport.exec(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()
        assert peers[1] == str(connection.sock.getsockname()[1])


def test_the_guard_needs_only_a_bare_python_on_the_host(ssh_hosts):
    bare = str(Path(sys.base_prefix) / "bin" / "python3")
    host = replace(ssh_hosts[0], python=bare)
    with open_transport(host) as transport:
        assert transport.python == bare
        result = transport.exec([bare, "-c", "import launcher"], cwd="/")
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr
        assert run_agent(transport, bare, ["sh", "-c", "echo bare; exit 5"]) == (5, ["bare"])


def test_a_missing_python_is_named_even_when_it_ends_before_reading_its_input(ssh_hosts):
    """The host's shell ends at once; the sources and a large job document cannot all be sent, and the
    error is the shell's own message, not the closed channel."""
    host = ssh_hosts[0]
    job = {"job_id": "t", "host": host.name, "pad": "x" * (8 << 20)}
    with open_transport(host) as transport, pytest.raises(HostError) as caught:
        start_agent(transport, "/nonexistent/bin/python3", job)
    assert "/nonexistent/bin/python3" in str(caught.value) and "closed" not in str(caught.value)
