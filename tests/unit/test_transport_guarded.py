"""The pure parts of the transports: line splitting, the guard protocol's framing, the factory's choices."""
import io
import json
import signal
import threading
from types import SimpleNamespace

import pytest

from launcher.transport import guard
from launcher.transport.base import HostError
from launcher.transport.factory import open_transport
from launcher.transport.guarded import (
    GuardedProcess,
    LineSplitter,
    guard_argv,
    guard_header,
    guard_source,
    guard_stdin,
    split_exec_trailer,
    status_from_exit_code,
)
from launcher.transport.local import LocalTransport
from launcher.transport.ssh import SshTransport
from tests.e2e.sshd import OpenSshMissing, require


def split(chunks):
    lines = []
    splitter = LineSplitter(lines.append)
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.close()
    return lines


def test_lines_are_whole_however_the_bytes_arrive():
    data = "α first line\nsecond\n\nthird ü".encode()
    expected = ["α first line", "second", "", "third ü"]
    for size in (1, 2, 3, 7, len(data)):
        assert split([data[i:i + size] for i in range(0, len(data), size)]) == expected


def test_a_final_newline_gives_no_empty_line_and_bad_bytes_are_replaced():
    assert split([b"a\nb\n"]) == ["a", "b"]
    assert split([b"ok \xff\n"]) == ["ok \ufffd"]
    assert split([]) == []


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
    header = json.loads(guard_header(["echo", "a b", "$HOME;rm"], {"X": 1}, "/tmp", 2.0, "n"))
    assert header == {"argv": ["echo", "a b", "$HOME;rm"], "env": {"X": "1"}, "cwd": "/tmp", "grace": 2.0,
                      "nonce": "n"}
    with pytest.raises(ValueError):
        guard_header([], None, None, 1.0)


def test_guard_source_is_stdlib_only():
    source = guard_source()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"json", "os", "select", "signal", "subprocess", "sys", "time"}
    assert "launcher" not in imports


def test_guard_command_line_is_short_and_the_source_travels_on_stdin():
    argv = guard_argv("/usr/bin/python3", "run")
    assert argv[:3] == ["/usr/bin/python3", "-S", "-c"] and argv[4] == "run" and len(argv[3]) < 300
    data = guard_stdin(b"HEADER\n")
    assert int(argv[5]) == len(data) - len(b"HEADER\n") and data.endswith(b"HEADER\n")


def test_guard_refuses_bad_usage():
    assert guard.main([]) == 2
    assert guard.main(["kill", "x", "15"]) == 2
    assert guard.main(["kill", "1", "0", "NOEQUALS"]) == 2


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


def fake_process(side: bytes, out: bytes = b"", exit_code=None, hold=None, write_control=None, kills=None):
    """A GuardedProcess over in-memory streams; `hold` (an Event) keeps the side channel open until set."""
    side_stream, out_stream = io.BytesIO(side), io.BytesIO(out)

    def read_side(n):
        data = side_stream.read(n)
        if not data and hold is not None:
            hold.wait(10)
        return data

    lines = []
    proc = GuardedProcess(
        "node-1", read_out=out_stream.read, read_side=read_side,
        write_control=write_control or (lambda data: None), hangup=lambda: None,
        guard_exit_code=lambda: exit_code, signal_group=lambda pgid, sig: kills.append((pgid, sig)),
        on_line=lines.append, argv=["train"])
    return proc, lines


STARTED = b'refinenet-guard {"event": "started", "pid": 4242, "pgid": 4242}\n'


def test_process_reports_ids_lines_and_the_guards_exact_status():
    proc, lines = fake_process(STARTED + b'refinenet-guard {"event": "exit", "status": 130}\n', b"a\nb",
                               exit_code=130)
    proc.start()
    assert (proc.pid, proc.pgid) == (4242, 4242)
    assert proc.wait(5) == 130 and lines == ["a", "b"] and not proc.connection_lost


def test_a_guard_that_never_started_is_a_host_error_with_the_shells_words():
    proc, _ = fake_process(b"sh: 1: python3: not found\n", exit_code=127)
    with pytest.raises(HostError, match="python3: not found") as err:
        proc.start()
    assert err.value.host == "node-1"


def test_losing_the_connection_reads_as_a_hangup():
    proc, _ = fake_process(STARTED, exit_code=-1)
    proc.start()
    assert proc.wait(5) == -signal.SIGHUP and proc.connection_lost


def test_kill_group_goes_through_the_guard_and_falls_back_to_the_id():
    hold, sent, kills = threading.Event(), [], []
    proc, _ = fake_process(STARTED, hold=hold, write_control=sent.append, kills=kills)
    proc.start()
    proc.kill_group(signal.SIGTERM)
    assert sent == [b"signal 15\n"] and kills == []

    def broken(data):
        raise OSError("channel closed")

    proc2, _ = fake_process(STARTED, hold=hold, write_control=broken, kills=kills)
    proc2.start()
    proc2.kill_group(signal.SIGKILL)
    assert kills == [(4242, signal.SIGKILL)]
    hold.set()
    proc.wait(5)
    proc2.wait(5)
    proc.kill_group(signal.SIGKILL)
    assert sent == [b"signal 15\n"]


def test_missing_openssh_fails_with_the_setup_command():
    with pytest.raises(OpenSshMissing, match="make test"):
        require("/nonexistent/sbin/sshd")
