"""Commands and files on a host reached over SSH (paramiko), one connection per host.

The connection opens on first use and is shared by every channel. Host keys are checked against a
known_hosts file; an unknown key is refused with the command that trusts it, unless
`host_key_policy='accept-new'`, which records a new key (a changed key is always refused).
Authentication uses the key file, the ssh-agent and, without a key file, ~/.ssh/id_*.

Everything runs one way: a channel executes the host program (`launcher.transport.hostprog`) in one
of its modes, its sources first on stdin. Closing a channel without a pty leaves the remote command
running, so commands run under the exec guard (killed with their whole process group when the
channel or the connection goes away) and the agent ends its processes on EOF. Files travel over
the same kind of channel (`read`, `write`: no SFTP subsystem needed), with a wide channel window.
The host needs a POSIX login shell and a python 3.6+ (`python`, default `python3`).

For bulk copies between hosts, `program_command` gives the same program run through this machine's
OpenSSH client with the same user, port, key and known_hosts, so the bytes need not pass through
paramiko's Python packet handling.
"""
from __future__ import annotations

import getpass
import hashlib
import logging
import os
import select
import shlex
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import paramiko

from launcher.hostside.files import end_marker
from launcher.transport.base import CommandResult, HostError, HostInfo, SweepResult, Transport
from launcher.transport.hostprog import host_argv, host_stdin
from launcher.transport.local import DEFAULT_GRACE_S, SHORT_TIMEOUT_S
from launcher.transport.modes import (
    CHUNK,
    exec_header,
    kill_args,
    kill_outcome,
    new_nonce,
    read_failure,
    split_exec_trailer,
    status_from_exit_code,
    sweep_args,
    sweep_outcome,
    write_args,
    write_outcome,
)
from launcher.transport.probe import parse_probe, probe_argv

STRICT = "strict"
ACCEPT_NEW = "accept-new"
HOST_KEY_POLICIES = (STRICT, ACCEPT_NEW)
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Channel window and packet size of file channels: paramiko's own 2 MiB / 32 KiB. Wider windows (16-64
#: MiB) and 256 KiB packets made the copy through the launcher slower, 0.8x (data piles up in paramiko's
#: buffers); 256 KiB windows about the same (docs/performance.md, "Carrying a checkpoint to a spare").
FILE_WINDOW = 1 << 21
FILE_PACKET = 1 << 15
#: A file channel that moves no byte for this long counts as a lost connection.
FILE_IDLE_S = 120.0
#: Ciphers tried first, by paramiko and by the OpenSSH client: AES-GCM runs on the CPU's AES
#: instructions, 1.2-1.8x the rate of paramiko's aes128-ctr + HMAC and of OpenSSH's default chacha20
#: here (docs/performance.md); either side's other ciphers stay acceptable after them.
AES_GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
OPENSSH_CIPHERS = ",".join((*AES_GCM, "chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr",
                            "aes256-ctr"))

_known_hosts_lock = threading.Lock()

# Connection failures become `HostError`s with their cause; paramiko's own tracebacks would only
# repeat them on stderr through logging's last-resort handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _aes_gcm_first(sock, **kwargs) -> paramiko.Transport:
    """A paramiko transport that offers AES-GCM first (see `AES_GCM`)."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = AES_GCM + tuple(c for c in options.ciphers if c not in AES_GCM)
    return transport


def fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint if hasattr(key, "fingerprint") else key.get_base64()[:16]


class UnknownHostKey(paramiko.SSHException):
    """The server's host key is not in the known_hosts file and the policy is strict."""

    def __init__(self, name: str, key: paramiko.PKey):
        super().__init__(f"unknown host key for {name}")
        self.name, self.key = name, key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(hostname, key)


class _RecordNew(paramiko.MissingHostKeyPolicy):
    """Trust a key seen for the first time and append it to the known_hosts file."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="ascii") as f:
                f.write(line)
        client.get_host_keys().add(hostname, key.get_name(), key)


class SshTransport(Transport):
    """A host reached over SSH as `user@address:port`; `host` is its name in the cluster spec."""

    def __init__(self, host: str, address: str, *, user: Optional[str] = None, port: int = 22,
                 key_file: Optional[str] = None, known_hosts: Optional[str] = None,
                 host_key_policy: str = STRICT, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 use_agent: bool = True, python: str = "python3", grace_s: float = DEFAULT_GRACE_S):
        if host_key_policy not in HOST_KEY_POLICIES:
            raise ValueError(f"host_key_policy must be one of {', '.join(HOST_KEY_POLICIES)}, "
                             f"got {host_key_policy!r}")
        self.host = host
        self.address = address
        self.user = user or getpass.getuser()
        self.port = int(port)
        self.key_file = None if key_file is None else Path(key_file).expanduser()
        self.known_hosts = Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        self.host_key_policy = host_key_policy
        self.connect_timeout_s = float(connect_timeout_s)
        self.use_agent = use_agent
        self.python = python
        self.grace_s = grace_s
        self._client: Optional[paramiko.SSHClient] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SshTransport({self.host!r}, {self.user}@{self.address}:{self.port})"

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> paramiko.Transport:
        """The live SSH connection, opened on first use (and again after it dropped)."""
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                self._close_client()
            self._client = self._open_client()
            transport = self._client.get_transport()
            transport.set_keepalive(15)
            return transport

    def _open_client(self) -> paramiko.SSHClient:
        if self.key_file is not None and not self.key_file.is_file():
            raise HostError(self.host, f"ssh key file {self.key_file} does not exist")
        client = paramiko.SSHClient()
        try:
            if self.known_hosts.is_file():
                client.load_host_keys(str(self.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise HostError(self.host, f"cannot read known_hosts file {self.known_hosts}: {exc}") from exc
        client.set_missing_host_key_policy(
            _RecordNew(self.known_hosts) if self.host_key_policy == ACCEPT_NEW else _RefuseUnknown())
        timeout = self.connect_timeout_s
        try:
            sock = socket.create_connection((self.address, self.port), timeout=timeout)
        except OSError as exc:
            client.close()
            raise self._connect_error(exc) from exc
        try:
            client.connect(self.address, port=self.port, username=self.user, sock=sock,
                           key_filename=None if self.key_file is None else str(self.key_file),
                           allow_agent=self.use_agent, look_for_keys=self.key_file is None,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           channel_timeout=timeout, transport_factory=_aes_gcm_first)
        except Exception as exc:
            client.close()
            sock.close()
            raise self._connect_error(exc) from exc
        return client

    def _connect_error(self, exc: BaseException) -> HostError:
        where = f"{self.address}:{self.port}"
        if isinstance(exc, UnknownHostKey):
            scan = " ".join(shlex.quote(w) for w in ("ssh-keyscan", "-p", str(self.port), self.address))
            return HostError(self.host, (
                f"unknown host key for {where} ({exc.key.get_name()} {fingerprint(exc.key)}), not in "
                f"{self.known_hosts}; if this is the right host, trust it with: "
                f"{scan} >> {shlex.quote(str(self.known_hosts))}  (or set host_key_policy: accept-new)"))
        if isinstance(exc, paramiko.BadHostKeyException):
            name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
            return HostError(self.host, (
                f"HOST KEY CHANGED for {where}: got {exc.key.get_name()} {fingerprint(exc.key)}, "
                f"{self.known_hosts} has {fingerprint(exc.expected_key)}; refusing to connect. If the "
                f"host was reinstalled, remove the old key with: ssh-keygen -f "
                f"{shlex.quote(str(self.known_hosts))} -R {shlex.quote(name)}"))
        if isinstance(exc, paramiko.AuthenticationException):
            how = [f"key file {self.key_file}" if self.key_file else "~/.ssh/id_* keys"]
            how.append("ssh-agent" if self.use_agent else "no agent")
            return HostError(self.host, f"authentication failed for {self.user}@{where} "
                                        f"({', '.join(how)}): {exc}")
        if isinstance(exc, paramiko.SSHException) and "authentication methods" in str(exc):
            return HostError(self.host, f"authentication failed for {self.user}@{where}: no key file, "
                                        f"no ~/.ssh/id_* key and no ssh-agent key to offer")
        if isinstance(exc, ConnectionRefusedError):
            return HostError(self.host, f"connection refused by {where} (is sshd running there?)")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return HostError(self.host, f"connection to {where} timed out after {self.connect_timeout_s:g} s")
        if isinstance(exc, socket.gaierror):
            return HostError(self.host, f"cannot resolve address {self.address!r}: {exc.strerror}")
        if isinstance(exc, paramiko.SSHException) and any(
                text in str(exc) for text in ("banner", "No existing session")):
            return HostError(self.host, f"{where} did not answer as an SSH server within "
                                        f"{self.connect_timeout_s:g} s")
        if isinstance(exc, OSError):
            return HostError(self.host, f"cannot connect to {where}: {exc.strerror or exc}")
        return HostError(self.host, f"ssh to {where} failed: {exc}")

    def _channel(self, window: Optional[int] = None, packet: Optional[int] = None) -> paramiko.Channel:
        transport = self.connect()
        try:
            return transport.open_session(window_size=window, max_packet_size=packet,
                                          timeout=self.connect_timeout_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.host, f"cannot open an SSH channel: {exc}") from exc

    # -- the one way to run something there

    def _launch(self, argv: Sequence[str], stdin: bytes, *, combine_stderr: bool = False,
                window: Optional[int] = None, packet: Optional[int] = None) -> paramiko.Channel:
        """A channel running `argv` (a host program command line) with `stdin` already sent.

        A command that ends before it has read all of `stdin` (no such Python there, say) still gives its
        channel: what it printed and its exit code say why, not the closed socket."""
        chan = self._channel(window, packet)
        try:
            chan.set_combine_stderr(combine_stderr)
            chan.exec_command(" ".join(shlex.quote(str(a)) for a in argv))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            raise HostError(self.host, f"cannot start {' '.join(argv[4:5]) or argv[0]}: {exc}") from exc
        _send(chan, stdin)
        return chan

    def _start(self, mode: str, *args: str, payload: bytes = b"", **channel) -> paramiko.Channel:
        """The host program's `mode` running with `args`; its sources and `payload` sent."""
        return self._launch(host_argv(self.python, mode, *args), host_stdin(payload), **channel)

    def _run(self, mode: str, *args: str, timeout: float = SHORT_TIMEOUT_S) -> Tuple[int, str, str]:
        """Run `mode` to its end with nothing more on stdin: (exit code, stdout, stderr)."""
        chan = self._start(mode, *args)
        try:
            chan.shutdown_write()
            out, err, code = _collect(chan, timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.host, f"{mode} failed: {exc}") from exc
        finally:
            chan.close()
        if code is None:
            raise HostError(self.host, f"{mode} did not finish within {timeout:g} s")
        if code < 0:
            raise HostError(self.host, f"the connection was lost while {mode} ran")
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def run_mode(self, mode: str, args: Sequence[str] = (), timeout: float = 60.0) -> Tuple[int, str, str]:
        return self._run(mode, *args, timeout=timeout)

    def program_command(self, mode: str, *args: str) -> Optional[List[str]]:
        """`mode` run through this machine's OpenSSH client (see the module's docstring); None without one."""
        ssh = shutil.which("ssh")
        if ssh is None:
            return None
        options = {
            "BatchMode": "yes", "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "accept-new" if self.host_key_policy == ACCEPT_NEW else "yes",
            "CheckHostIP": "no", "ConnectTimeout": str(max(1, round(self.connect_timeout_s))),
            "ServerAliveInterval": "15", "ServerAliveCountMax": "4", "LogLevel": "ERROR",
            "ControlMaster": "no", "ControlPath": "none", "Ciphers": OPENSSH_CIPHERS}
        if self.key_file is not None:
            options.update(IdentityFile=str(self.key_file), IdentitiesOnly="yes")
        if not self.use_agent:
            options["IdentityAgent"] = "none"
        argv = [ssh, "-F", "/dev/null", "-T", "-x", "-a", "-p", str(self.port), "-l", self.user]
        for name, value in options.items():
            argv += ["-o", f"{name}={value}"]
        remote = " ".join(shlex.quote(a) for a in host_argv(self.python, mode, *args))
        return [*argv, "--", self.address, remote]

    # -- commands -----------------------------------------------------------------------------

    def start_agent(self, argv: Sequence[str], stdin: bytes) -> _ChannelStream:
        return _ChannelStream(self._launch(argv, stdin, combine_stderr=True))

    def exec(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
             cwd: Optional[str] = None, timeout: float = 60.0) -> CommandResult:
        nonce = new_nonce()
        header = exec_header(argv, env, cwd, self.grace_s, nonce)
        chan = self._start("exec", payload=header)
        try:
            out, err, code = _collect(chan, timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.host, f"running {argv[0]} failed: {exc}") from exc
        finally:
            chan.close()
        if code is None:
            raise HostError(self.host, f"{argv[0]} did not finish within {timeout:g} s")
        err, status = split_exec_trailer(err, nonce)
        if status is None and code < 0:
            raise HostError(self.host, f"the connection was lost while {argv[0]} ran")
        if status is None:
            status = status_from_exit_code(code)
        return CommandResult(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def kill_group(self, pgid: int, sig: int = signal.SIGTERM, *,
                   verify_env: Optional[Tuple[str, str]] = None) -> bool:
        code, _, err = self._run("kill", *kill_args(pgid, sig, verify_env))
        return kill_outcome(self.host, pgid, code, err)

    def sweep_job(self, job_id: str, timeout_s: float = 5.0) -> SweepResult:
        code, out, err = self._run("sweep", *sweep_args(job_id, timeout_s),
                                   timeout=timeout_s + SHORT_TIMEOUT_S)
        return sweep_outcome(self.host, job_id, code, out, err)

    def probe(self, python: str = "python3") -> HostInfo:
        return parse_probe(self.host, python, self.exec(probe_argv(python)))

    # -- files --------------------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        return b"".join(self.read_chunks(path))

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        """The file streamed by the host program's `read` mode over a channel with a wide window."""
        chan = self._start("read", path, window=FILE_WINDOW, packet=FILE_PACKET)
        try:
            chan.shutdown_write()
            chan.settimeout(FILE_IDLE_S)
            while True:
                data = chan.recv(chunk)
                if not data:
                    break
                yield data
            err, code = _finish(chan, FILE_IDLE_S)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.host, f"reading {path} failed: {exc}") from exc
        finally:
            chan.close()
        if code is None or code < 0:
            raise HostError(self.host, f"the connection was lost while reading {path}")
        failure = read_failure(self.host, path, code, err)
        if failure is not None:
            raise failure

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.write_chunks(path, [data], mode, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644, *,
                     size: Optional[int] = None, sha256: Optional[str] = None) -> int:
        """Stream `chunks` to the host program's `write` mode (atomic there, checked there). If `chunks`
        fails, the channel closes without the end marker, and the host discards what it got."""
        chan = self._start("write", *write_args(path, mode, size, sha256), window=FILE_WINDOW,
                           packet=FILE_PACKET)
        written = 0
        try:
            chan.settimeout(FILE_IDLE_S)
            for data in chunks:
                if not _send(chan, data):
                    break
                written += len(data)
            else:
                if size is None:
                    _send(chan, end_marker(written))
            try:
                chan.shutdown_write()
                out, err, code = _collect(chan, FILE_IDLE_S)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostError(self.host, f"writing {path} failed: {exc}") from exc
        finally:
            chan.close()
        if code is None or code < 0:
            raise HostError(self.host, f"the connection was lost while writing {path}")
        return write_outcome(self.host, path, code, out.decode("utf-8", "replace"),
                             err.decode("utf-8", "replace"), written).size

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection: every command still running here loses its guard's channel and dies."""
        with self._lock:
            self._close_client()

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _ChannelStream:
    """An agent's SSH channel (see `launcher.agent.session.AgentStream`); closing it is EOF there."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def read(self, n: int) -> bytes:
        return self.chan.recv(n)

    def write(self, data: bytes) -> None:
        self.chan.sendall(data)

    def close(self) -> None:
        try:
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def exit_code(self, timeout: float) -> Optional[int]:
        if self.chan.status_event.wait(timeout):
            code = self.chan.recv_exit_status()
            self.chan.close()
            return code
        self.chan.close()
        return None


def _collect(chan: paramiko.Channel, timeout: float) -> Tuple[bytes, bytes, Optional[int]]:
    """All of a channel's stdout and stderr and its exit code; code None when `timeout` ran out.

    One loop reads both streams (the channel's fileno wakes `select` for either), so a short command
    costs no thread of its own."""
    deadline = time.monotonic() + timeout
    out: List[bytes] = []
    err: List[bytes] = []
    while True:
        progressed = False
        while chan.recv_ready():
            out.append(chan.recv(CHUNK))
            progressed = True
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(CHUNK))
            progressed = True
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            if chan.eof_received or chan.closed:
                break
        if progressed:
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(out), b"".join(err), None
        select.select([chan], [], [], min(left, 0.5))
    return b"".join(out), b"".join(err), chan.recv_exit_status()


def _send(chan: paramiko.Channel, data: bytes) -> bool:
    """Send `data`; False when the host stopped reading (its exit code and message then say why)."""
    try:
        chan.sendall(data)
        return True
    except OSError:
        return False


def _finish(chan: paramiko.Channel, timeout: float) -> Tuple[str, Optional[int]]:
    """After stdout's end: the channel's stderr and exit code (None when `timeout` ran out)."""
    err: List[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(CHUNK))
        if chan.exit_status_ready() and not chan.recv_stderr_ready():
            return b"".join(err).decode("utf-8", "replace"), chan.recv_exit_status()
        if time.monotonic() > deadline:
            return b"".join(err).decode("utf-8", "replace"), None
        chan.status_event.wait(0.1)
