"""Commands and files on a host reached over SSH (paramiko), one connection per host.

The connection opens on first use and is shared by every command channel and by SFTP. Host keys
are checked against a known_hosts file; an unknown key is refused with the command that trusts
it, unless `host_key_policy='accept-new'`, which records a new key (a changed key is always
refused). Authentication uses the key file, the ssh-agent and, without a key file, ~/.ssh/id_*.

Closing a channel without a pty leaves the remote command running, so every command runs under
the guard (`launcher.transport.guard`, sent as `python -c SOURCE`): in its own session, killed
with its whole process group when the channel or the connection goes away. The host needs a
POSIX login shell and a python 3.6+ (`python`, default `python3`) for the guard.
"""
from __future__ import annotations

import contextlib
import errno
import getpass
import logging
import os
import posixpath
import secrets
import select
import shlex
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import paramiko

from launcher.transport.base import CommandResult, HostError, HostInfo, Transport
from launcher.transport.guarded import (
    CHUNK,
    guard_argv,
    guard_header,
    guard_stdin,
    kill_argv,
    kill_outcome,
    new_nonce,
    split_exec_trailer,
    status_from_exit_code,
)
from launcher.transport.local import DEFAULT_GRACE_S
from launcher.transport.probe import parse_probe, probe_argv

STRICT = "strict"
ACCEPT_NEW = "accept-new"
HOST_KEY_POLICIES = (STRICT, ACCEPT_NEW)
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_CONNECT_TIMEOUT_S = 10.0

_known_hosts_lock = threading.Lock()

# Connection failures become `HostError`s with their cause; paramiko's own tracebacks would only
# repeat them on stderr through logging's last-resort handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._lock = threading.Lock()
        self._sftp_lock = threading.Lock()

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
                           channel_timeout=timeout)
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

    def _channel(self) -> paramiko.Channel:
        transport = self.connect()
        try:
            return transport.open_session(timeout=self.connect_timeout_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.host, f"cannot open an SSH channel: {exc}") from exc

    def _guard_command(self, mode: str) -> str:
        return " ".join(shlex.quote(w) for w in guard_argv(self.python, mode))

    # -- commands -----------------------------------------------------------------------------

    def start_agent(self, argv: Sequence[str], stdin: bytes) -> _ChannelStream:
        chan = self._channel()
        try:
            chan.set_combine_stderr(True)
            chan.exec_command(" ".join(shlex.quote(str(a)) for a in argv))
            chan.sendall(stdin)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            raise HostError(self.host, f"cannot start the host agent: {exc}") from exc
        return _ChannelStream(chan)

    def exec(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
             cwd: Optional[str] = None, timeout: float = 60.0) -> CommandResult:
        nonce = new_nonce()
        header = guard_header(argv, env, cwd, self.grace_s, nonce)
        chan = self._channel()
        try:
            chan.exec_command(self._guard_command("exec"))
            chan.sendall(guard_stdin(header))
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

    def _exec_plain(self, argv: Sequence[str], timeout: float = 30.0) -> Tuple[int, str]:
        """Run a command that cannot hang without a guard: exit code and stderr."""
        chan = self._channel()
        try:
            chan.exec_command(" ".join(shlex.quote(str(a)) for a in argv))
            chan.shutdown_write()
            _, err, code = _collect(chan, timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.host, f"running {argv[0]} failed: {exc}") from exc
        finally:
            chan.close()
        if code is None:
            raise HostError(self.host, f"{argv[0]} did not finish within {timeout:g} s")
        if code < 0:
            raise HostError(self.host, f"the connection was lost while {argv[0]} ran")
        return code, err.decode("utf-8", "replace")

    def kill_group(self, pgid: int, sig: int = signal.SIGTERM, *,
                   verify_env: Optional[Tuple[str, str]] = None) -> bool:
        code, err = self._exec_plain(kill_argv(self.python, pgid, sig, verify_env))
        return kill_outcome(self.host, pgid, code, err)

    def probe(self, python: str = "python3") -> HostInfo:
        return parse_probe(self.host, python, self.exec(probe_argv(python)))

    # -- files --------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None or self._sftp.get_channel().closed:
            transport = self.connect()
            try:
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostError(self.host, f"cannot open SFTP: {exc}") from exc
        return self._sftp

    def read_file(self, path: str) -> bytes:
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                with sftp.open(path, "rb") as f:
                    f.prefetch()
                    return f.read()
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, f"no such file on {self.host}", path) from None
            except (paramiko.SSHException, EOFError) as exc:
                raise HostError(self.host, f"reading {path} failed: {exc}") from exc

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        directory, name = posixpath.split(path)
        tmp = posixpath.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                self._makedirs(sftp, directory)
                try:
                    with sftp.open(tmp, "wb") as f:
                        f.set_pipelined(True)
                        f.write(data)
                    sftp.chmod(tmp, mode)
                    sftp.posix_rename(tmp, path)
                except BaseException:
                    try:
                        sftp.remove(tmp)
                    except (OSError, paramiko.SSHException, EOFError):
                        pass
                    raise
            except (paramiko.SSHException, EOFError) as exc:
                raise HostError(self.host, f"writing {path} failed: {exc}") from exc

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        """Read over a connection of its own SFTP session, so other file operations are not held up."""
        sftp = self._new_sftp()
        try:
            with sftp.open(path, "rb") as f:
                f.prefetch()
                while True:
                    data = f.read(chunk)
                    if not data:
                        return
                    yield data
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"no such file on {self.host}", path) from None
        except (paramiko.SSHException, EOFError) as exc:
            raise HostError(self.host, f"reading {path} failed: {exc}") from exc
        finally:
            sftp.close()

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644) -> int:
        directory, name = posixpath.split(path)
        tmp = posixpath.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        sftp = self._new_sftp()
        written = 0
        try:
            self._makedirs(sftp, directory)
            try:
                with sftp.open(tmp, "wb") as f:
                    f.set_pipelined(True)
                    for data in chunks:
                        f.write(data)
                        written += len(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                    sftp.remove(tmp)
                raise
        except (paramiko.SSHException, EOFError) as exc:
            raise HostError(self.host, f"writing {path} failed: {exc}") from exc
        finally:
            sftp.close()
        return written

    def _new_sftp(self) -> paramiko.SFTPClient:
        try:
            return paramiko.SFTPClient.from_transport(self.connect())
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostError(self.host, f"cannot open SFTP: {exc}") from exc

    @staticmethod
    def _makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
        missing = []
        while directory not in ("", "/"):
            try:
                sftp.stat(directory)
                break
            except FileNotFoundError:
                missing.append(directory)
                directory = posixpath.dirname(directory)
        for folder in reversed(missing):
            try:
                sftp.mkdir(folder)
            except OSError:
                sftp.stat(folder)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection: every command still running here loses its guard's channel and dies."""
        with self._lock:
            self._close_client()

    def _close_client(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
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
