"""The pure parts of the transports and agents: the host program's command line and bundle, the guard's
framing, the agent stream's frames, the factory's choices."""
import json
import queue
import signal
import threading
from types import SimpleNamespace

import pytest

from launcher.agent.session import HostAgent, agent_argv, agent_stdin
from launcher.hostside import guard
from launcher.hostside import procset as host_agent
from launcher.transport.factory import open_transport
from launcher.transport.hostprog import BOOTSTRAP, bundle, host_argv, host_stdin
from launcher.transport.local import LocalTransport
from launcher.transport.modes import exec_header, split_exec_trailer, status_from_exit_code
from launcher.transport.ssh import SshTransport
from tests.harness.hosts import OpenSshMissing, require


class Stream:
    """An agent stream over bytes given in chunks (as a transport might deliver them), once the
    launcher has written its first request."""

    def __init__(self, chunks, code=None):
        self.chunks, self.code, self.written = list(chunks), code, []
        self.ready = threading.Event()

    def read(self, n):
        self.ready.wait(5)
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data):
        self.written.append(data)
        self.ready.set()

    def close(self):
        pass

    def exit_code(self, timeout):
        return self.code


def play(chunks, code=None, processes=2, tails=1):
    lines = {}
    events = queue.Queue()
    sinks = [lambda line, i=i: lines.setdefault(f"p{i}", []).append(line) for i in range(processes)]
    tail_sinks = [lambda line, j=j: lines.setdefault(f"t{j}", []).append(line) for j in range(tails)]
    session = HostAgent("node-1", Stream(chunks, code))
    session.begin_attempt(1, {}, sinks, tail_sinks, events)
    assert session.wait(5)
    got = []
    while not events.empty():
        got.append(events.get())
    return session, lines, got


def frame(kind, index, text):
    data = text.encode()
    return b"%s %d %d\n" % (kind.encode(), index, len(data)) + data


def test_frames_keep_each_line_with_its_process_however_the_bytes_arrive():
    data = (frame("o", 0, "α first line\n") + frame("e", 0, "to stderr\n") + frame("o", 1, "other\n")
            + frame("t", 0, "from a file\nand more\n") + frame("o", 0, "\n")
            + b'! {"event": "exit", "i": 0, "status": -9, "t": 1.5, "a": 1}\n'
            + b'! {"event": "done", "t": 2, "a": 1}\n! {"event": "bye"}\n')
    for size in (1, 2, 3, 7, len(data)):
        _, lines, events = play([data[i:i + size] for i in range(0, len(data), size)])
        assert lines == {"p0": ["α first line", "to stderr", ""], "p1": ["other"],
                         "t0": ["from a file", "and more"]}
        assert [(e.kind, e.index, dict(e.data)) for e in events] == [
            ("exit", 0, {"i": 0, "status": -9, "t": 1.5}), ("done", None, {"t": 2})]


def test_the_agent_frames_whole_lines_and_cuts_endless_ones():
    out = []
    rest = host_agent.whole_lines(b"o", 3, b"par", b"tial\nnext\nincomp", out)
    assert out == [b"o 3 13\npartial\nnext\n"] and rest == b"incomp"
    out = []
    rest = host_agent.whole_lines(b"t", 0, b"", b"x" * (host_agent.MAX_LINE + 5), out)
    assert out == [b"t 0 %d\n" % (host_agent.MAX_LINE + 1) + b"x" * host_agent.MAX_LINE + b"\n"]
    assert rest == b"xxxxx"


def test_a_stream_that_ends_without_done_is_a_lost_agent_with_the_shells_words():
    _, _, events = play([b"sh: 1: python3: not found\n"], code=127)
    assert [e.kind for e in events] == ["lost"]
    assert events[0].data["detail"] == "sh: 1: python3: not found" and events[0].data["code"] == 127
    _, _, events = play([frame("o", 0, "x\n")], code=None)
    assert events[0].kind == "lost" and "closed" in events[0].data["detail"]


def test_requests_are_json_lines():
    session, _, _ = play([b'! {"event": "done", "a": 1}\n'])
    session.stream.written.clear()
    session.stop(signal.SIGINT)
    session.signal(signal.SIGUSR1)
    assert [json.loads(w) for w in session.stream.written] == [{"op": "stop", "sig": 2},
                                                                 {"op": "signal", "sig": 10}]


def test_the_agent_travels_on_stdin_after_the_host_program():
    argv = agent_argv("/usr/bin/python3")
    assert argv == ["/usr/bin/python3", "-S", "-c", BOOTSTRAP, "agent", str(len(bundle()))]
    data = agent_stdin({"job_id": "j"})
    assert data == bundle() + b'{"job_id":"j"}\n'


def test_exec_trailer_is_split_off_exactly():
    nonce = "refinenet-guard-0123"
    assert split_exec_trailer(b"err text\n" + f"\n{nonce} -15\n".encode(), nonce) == (b"err text\n", -15)
    assert split_exec_trailer(b"no newline" + f"\n{nonce} 3\n".encode(), nonce) == (b"no newline", 3)
    assert split_exec_trailer(b"sh: python3: not found\n", nonce) == (b"sh: python3: not found\n", None)


def test_guard_exit_codes_map_back_to_signals():
    assert status_from_exit_code(0) == 0
    assert status_from_exit_code(2) == 2
    assert status_from_exit_code(128 + signal.SIGKILL) == -signal.SIGKILL
    assert status_from_exit_code(guard.exit_status(-signal.SIGTERM)) == -signal.SIGTERM
    assert status_from_exit_code(None) is None


def test_header_carries_the_command_verbatim():
    header = json.loads(exec_header(["echo", "a b", "$HOME;rm"], {"X": 1}, "/tmp", 2.0, "n"))
    assert header == {"argv": ["echo", "a b", "$HOME;rm"], "env": {"X": "1"}, "cwd": "/tmp", "grace": 2.0,
                      "nonce": "n"}
    with pytest.raises(ValueError):
        exec_header([], None, None, 1.0)


def test_every_command_line_is_short_and_the_program_travels_on_stdin():
    argv = host_argv("/usr/bin/python3", "kill", 42, 15, "REFINENET_JOB_ID=a b")
    assert argv[:3] == ["/usr/bin/python3", "-S", "-c"] and len(argv[3]) < 600
    assert argv[4:] == ["kill", "42", "15", "REFINENET_JOB_ID=a b", str(len(bundle()))]
    assert host_stdin(b"HEADER\n") == bundle() + b"HEADER\n"
    with pytest.raises(ValueError, match="unknown host program mode"):
        host_argv("python3", "rm")


def test_factory_picks_local_or_ssh_and_fills_defaults():
    local = open_transport(SimpleNamespace(name="here", address="localhost", ssh=None))
    assert isinstance(local, LocalTransport) and local.host == "here"
    ssh = SimpleNamespace(user=None, port=None, key_file=None, known_hosts=None, host_key_policy=None,
                          connect_timeout_s=None, use_agent=None)
    remote = open_transport(SimpleNamespace(name="n1", address="10.0.0.5", ssh=ssh))
    assert isinstance(remote, SshTransport)
    assert (remote.host, remote.address, remote.port, remote.host_key_policy, remote.use_agent,
            remote.python) == ("n1", "10.0.0.5", 22, "strict", True, "python3")
    assert remote.known_hosts.name == "known_hosts"
    custom = SimpleNamespace(user="bob", port=2222, key_file="~/k", known_hosts="/tmp/kh",
                             host_key_policy="accept-new", connect_timeout_s=3, use_agent=False)
    remote = open_transport(SimpleNamespace(name="n2", address="h", ssh=custom, python="/opt/py/bin/python"))
    assert (remote.user, remote.port, remote.host_key_policy, remote.connect_timeout_s, remote.use_agent,
            remote.python, str(remote.known_hosts)) == ("bob", 2222, "accept-new", 3.0, False,
                                                        "/opt/py/bin/python", "/tmp/kh")
    assert not str(remote.key_file).startswith("~")


def test_unknown_host_key_policy_is_refused():
    with pytest.raises(ValueError, match="host_key_policy"):
        SshTransport("n", "h", host_key_policy="yes-please")


def test_missing_openssh_fails_with_the_setup_command():
    with pytest.raises(OpenSshMissing, match="make test"):
        require("/nonexistent/sbin/sshd")


def test_the_read_mode_copies_a_file_and_waits_until_it_was_read(tmp_path):
    import subprocess
    import sys

    from launcher.hostside import files

    data = bytes(range(256)) * 1000
    (tmp_path / "f").write_bytes(data)
    done = subprocess.run(host_argv(sys.executable, "read", tmp_path / "f"), input=host_stdin(),
                          capture_output=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, data)
    missing = subprocess.run(host_argv(sys.executable, "read", tmp_path / "nope"), input=host_stdin(),
                             capture_output=True, timeout=30)
    assert missing.returncode == files.NOT_FOUND and b"No such file" in missing.stderr
