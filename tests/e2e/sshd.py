"""Real OpenSSH servers that tests own: each one a simulated host on its own loopback address.

Every `SshServer` has its own address (127.0.0.2, 127.0.0.3, ...), port, host key, authorized_keys
(holding the test client key), a known_hosts file for the client that trusts exactly its key, and
its own working directory: loopback hosts share one disk, so separate directories keep a test from
passing only because two "hosts" see the same files. sshd runs in the foreground (`-D`) with a
generated config (public keys only, no PAM, `PermitRootLogin prohibit-password`, this interpreter's
bin directory first on PATH) and is stopped, with every session it started, by `stop()`.

Sessions run no rc files: `PermitUserRC no`, and `SHLVL=1` in the session environment, so the
user's bash (started by sshd for every command) counts as nested and skips ~/.bashrc. A test host
then costs what the command costs, not what the machine's login scripts cost.

With `login_home` (a folder made by `login_home(...)`), sessions run as on a stock server instead:
HOME is that folder, whose ~/.bashrc appends `bashrc PID PPID` to ~/startup-trace each time it runs
and (by default) runs `pyenv init` with the machine's real pyenv (~/.pyenv, as /root/.bashrc here
does); no `SHLVL` set, no `PATH` set, user rc allowed. So bash, started by sshd for every command,
reads ~/.bashrc once per login, and so does any `bash -c` a login starts that does not opt out.

`logins` ({user: [public key files]}) adds keys that may log in as a user: the server's own user (more
client machines) or other users, each with their own keys. Every user's authorized keys are
`authorized_keys.<user>`, read by sshd as that user: give a server with other users a root folder
they can traverse.

`max_sessions` is the channels one connection may open (200 unless given; None keeps OpenSSH's
defaults, `MaxSessions 10` and `MaxStartups 10:30:100`, as on a stock server). `sftp=False` leaves the
SFTP subsystem out, as on servers that disable it.
`start_servers` starts many servers at once on consecutive addresses (127.0.1.1, 127.0.1.2, ...).

Usage outside pytest (e.g. a benchmark)::

    key = ClientKey.create(root / "client")
    with SshServer(root / "host-a", "host-a", "127.0.0.2", key) as server:
        host = server.host()          # name, address, ssh settings, workdir, python

    servers = start_servers(root, key, 16)  # host-001 on 127.0.1.1 ... host-016 on 127.0.1.16
    try:
        ...
    finally:
        stop_servers(servers)

    home = login_home(root / "home")           # sessions as on a stock server with pyenv
    servers = start_servers(root, key, 64, login_home=home)
"""
from __future__ import annotations

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

SSHD = "/usr/sbin/sshd"
SETUP_HINT = "run `make test` (its setup step installs openssh-server), or `make system`"
START_TIMEOUT_S = 15.0
DEFAULT_MAX_SESSIONS = 200
#: The file a login home's ~/.bashrc (and ~/.bash_env) appends one line to each time it runs.
STARTUP_TRACE = "startup-trace"
PYENV_ROOT = Path("~/.pyenv").expanduser()

BASHRC = """\
# ~/.bashrc of a user on a stock server
echo "bashrc $$ $PPID" >> "$HOME/{trace}"
"""

PYENV_LINES = """\
# who uses pyenv (as /root/.bashrc here)
export PYENV_ROOT={pyenv}
export PATH="$PYENV_ROOT/bin:$PATH"
eval "$(pyenv init -)"
"""

BASH_ENV_LINES = """\
# read by every non-interactive bash that inherits BASH_ENV
export BASH_ENV="$HOME/.bash_env"
"""


class OpenSshMissing(RuntimeError):
    """An OpenSSH program the tests need is not installed."""


def require(program: str) -> str:
    """Absolute path of an OpenSSH program, or `OpenSshMissing` saying how to install it."""
    path = program if os.path.isabs(program) else shutil.which(program)
    if not path or not os.access(path, os.X_OK):
        raise OpenSshMissing(f"{program} is not installed; {SETUP_HINT}")
    return path


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def login_home(folder: Path, *, pyenv: Optional[Path] = PYENV_ROOT, bash_env: bool = False) -> Path:
    """A user's HOME for `SshServer(login_home=...)`: a ~/.bashrc that leaves a trace and runs the real
    `pyenv init` from `pyenv` (None: no pyenv); with `bash_env`, it also exports BASH_ENV naming
    ~/.bash_env, which leaves its own trace (`bash_env PID PPID`). `startup_trace(folder)` reads them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = BASHRC.format(trace=STARTUP_TRACE)
    if pyenv is not None:
        if not (Path(pyenv) / "bin" / "pyenv").exists():
            raise FileNotFoundError(f"a login home runs the real pyenv: {pyenv}/bin/pyenv does not exist")
        text += PYENV_LINES.format(pyenv=shlex.quote(str(pyenv)))
    if bash_env:
        text += BASH_ENV_LINES
        (folder / ".bash_env").write_text(f'echo "bash_env $$ $PPID" >> "$HOME/{STARTUP_TRACE}"\n')
    (folder / ".bashrc").write_text(text)
    return folder


def startup_trace(home: Path) -> List[Tuple[str, int, int]]:
    """(file, pid, parent pid) of every run of a login home's startup files, in order."""
    path = Path(home) / STARTUP_TRACE
    if not path.exists():
        return []
    lines = (line.split() for line in path.read_text().splitlines())
    return [(name, int(pid), int(ppid)) for name, pid, ppid in lines]


@dataclass(frozen=True)
class ClientKey:
    """An ed25519 key pair for the test client (no passphrase)."""

    private: Path
    public: Path

    @classmethod
    def create(cls, folder: Path, name: str = "id_ed25519") -> ClientKey:
        folder.mkdir(parents=True, exist_ok=True)
        private = folder / name
        if not private.exists():
            subprocess.run([require("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "refinenet-test",
                            "-f", str(private)], check=True, stdout=subprocess.DEVNULL)
        return cls(private, folder / f"{name}.pub")


@dataclass(frozen=True)
class SshSettings:
    """The `ssh` section of a host, with the attribute names `launcher.transport.factory` reads."""

    user: str
    port: int
    key_file: Optional[str]
    known_hosts: str
    host_key_policy: str = "strict"
    connect_timeout_s: float = 5.0
    use_agent: bool = False


@dataclass(frozen=True)
class SshHost:
    """A simulated host as a cluster spec would describe it (duck-types `HostSpec` for the factory)."""

    name: str
    address: str
    ssh: SshSettings
    workdir: str
    python: str = sys.executable
    host_key: str = ""

    @property
    def port(self) -> int:
        return self.ssh.port

    def spec_dict(self) -> dict:
        """The host as a cluster-file entry (YAML/JSON-ready)."""
        ssh = {k: getattr(self.ssh, k) for k in ("user", "port", "key_file", "known_hosts", "host_key_policy",
                                                  "connect_timeout_s", "use_agent")}
        return {"name": self.name, "address": self.address, "ssh": ssh, "workdir": self.workdir,
                "python": self.python}


class SshServer:
    """One sshd on `address` with its own host key, authorized_keys, known_hosts and working directory."""

    def __init__(self, root: Path, name: str, address: str, client: ClientKey, port: Optional[int] = None,
                 max_sessions: Optional[int] = DEFAULT_MAX_SESSIONS, login_home: Optional[Path] = None,
                 sftp: bool = True, logins: Optional[Mapping[str, Sequence[Path]]] = None):
        self.root = Path(root)
        self.logins = {user: [Path(k) for k in keys] for user, keys in (logins or {}).items()}
        self.max_sessions = max_sessions
        self.login_home = None if login_home is None else Path(login_home)
        self.sftp = sftp
        self.name = name
        self.address = address
        self.client = client
        self.port = port
        self.user = getpass.getuser()
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.config = self.root / "sshd_config"
        self.authorized_keys = self.root / f"authorized_keys.{self.user}"
        self.known_hosts = self.root / "known_hosts"
        self.workdir = self.root / "work"
        self.log = self.root / "sshd.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> SshServer:
        sshd = require(SSHD)
        self.root.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        if not self.host_key.exists():
            subprocess.run([require("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", self.name,
                            "-f", str(self.host_key)], check=True, stdout=subprocess.DEVNULL)
        for user in {self.user, *self.logins}:
            keys = [self.client.public] if user == self.user else []
            keys += self.logins.get(user, [])
            path = self.root / f"authorized_keys.{user}"
            path.write_text("".join(k.read_text().rstrip("\n") + "\n" for k in keys))
            path.chmod(0o644)
        last_error, fixed_port = "", self.port
        for _ in range(3):
            port = fixed_port or free_port(self.address)
            self.config.write_text(self._config_text(port))
            check = subprocess.run([sshd, "-t", "-f", str(self.config)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"generated sshd config {self.config} is invalid: {check.stderr.strip()}")
            log = open(self.log, "wb")
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
            log.close()
            if self._wait_ready(port):
                self.port = port
                self.known_hosts.write_text(f"{self.known_hosts_name} {self.host_public_key()}\n")
                return self
            last_error = self.log.read_text(errors="replace").strip()
            self.stop()
            if fixed_port or "in use" not in last_error:
                break
        raise RuntimeError(f"sshd for {self.name} on {self.address} did not start: {last_error}")

    def _config_text(self, port: int) -> str:
        bin_dir = Path(sys.executable).parent
        path = os.pathsep.join([str(bin_dir), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                                "/sbin", "/bin"])
        return "\n".join([
            f"ListenAddress {self.address}:{port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys.%u'}",
            f"AllowUsers {' '.join(sorted({self.user, *self.logins}))}",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            *self._limits(),
            "PrintMotd no",
            "LogLevel ERROR",
            *(["Subsystem sftp internal-sftp"] if self.sftp else []),
            *self._session(path),
            "",
        ])

    def _session(self, path: str) -> List[str]:
        if self.login_home is None:
            return ["PermitUserRC no", f"SetEnv PATH={path} REFINENET_SIMULATED_HOST={self.name} SHLVL=1"]
        return [f"SetEnv HOME={self.login_home} REFINENET_SIMULATED_HOST={self.name}"]

    def _limits(self) -> List[str]:
        if self.max_sessions is None:
            return []
        return [f"MaxSessions {self.max_sessions}", f"MaxStartups {max(100, self.max_sessions // 2)}:30:"
                                                    f"{max(200, self.max_sessions)}"]

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.address, port), timeout=1.0) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def host_public_key(self) -> str:
        """`TYPE BASE64` of this server's host key."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def host(self, name: Optional[str] = None, **ssh_overrides) -> SshHost:
        """This server as a cluster host; `ssh_overrides` replace SSH settings (e.g. `known_hosts`)."""
        settings = dict(user=self.user, port=self.port, key_file=str(self.client.private),
                        known_hosts=str(self.known_hosts))
        settings.update(ssh_overrides)
        return SshHost(name=name or self.name, address=self.address, ssh=SshSettings(**settings),
                       workdir=str(self.workdir), host_key=self.host_public_key())

    def sessions(self) -> list:
        """Live processes of the sessions this sshd started (psutil processes; empty when none is open)."""
        import psutil

        if self.proc is None:
            return []
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        live = []
        for proc in tree:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    live.append(proc)
            except psutil.NoSuchProcess:
                pass
        return live

    def stop(self) -> None:
        """Stop sshd and every session process it started."""
        if self.proc is None:
            return
        import psutil

        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        self.proc.terminate()
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        psutil.wait_procs(tree, timeout=5)
        self.proc = None

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_servers(root: Path, client: ClientKey, count: int, base: str = "127.0.1.", first: int = 1,
                  name: str = "host-{:03d}", max_sessions: Optional[int] = DEFAULT_MAX_SESSIONS,
                  workers: int = 16, login_home: Optional[Path] = None,
                  logins: Optional[Mapping[str, Sequence[Path]]] = None) -> List[SshServer]:
    """`count` servers on `base + first` ... (`host-001` on 127.0.1.1, ...), started concurrently,
    each under `root/<name>` (sessions as on a stock server with `login_home`, more logins with
    `logins`, see `SshServer`); if any fails to start, the ones already up are stopped and the error
    raised."""
    if first < 1 or first + count - 1 > 254:
        raise ValueError(f"{count} addresses from {base}{first} do not fit in {base}1..{base}254")
    servers = [SshServer(Path(root) / name.format(i), name.format(i), f"{base}{first + i - 1}", client,
                         max_sessions=max_sessions, login_home=login_home, logins=logins)
               for i in range(1, count + 1)]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, count))) as pool:
        outcomes = list(pool.map(_try_start, servers))
    errors = [o for o in outcomes if isinstance(o, Exception)]
    if errors:
        stop_servers(servers)
        raise errors[0]
    return servers


def _try_start(server: SshServer):
    try:
        return server.start()
    except Exception as exc:
        return exc


def stop_servers(servers: List[SshServer], workers: int = 16) -> None:
    """Stop every server (and its sessions), concurrently; servers never started are skipped."""
    if not servers:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(servers)))) as pool:
        list(pool.map(lambda s: s.stop(), servers))


class SshAgent:
    """A real ssh-agent on a private socket, holding the given keys; `socket` goes into SSH_AUTH_SOCK."""

    def __init__(self, folder: Path, *keys: Path):
        self.folder = Path(folder)
        self.keys = keys
        self.socket = str(self.folder / "agent.sock")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> SshAgent:
        self.folder.mkdir(parents=True, exist_ok=True)
        agent = require("ssh-agent")
        self.proc = subprocess.Popen([agent, "-D", "-a", self.socket], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"ssh-agent did not start: {err.strip()}")
            time.sleep(0.02)
        env = dict(os.environ, SSH_AUTH_SOCK=self.socket)
        for key in self.keys:
            subprocess.run([require("ssh-add"), "-q", str(key)], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc.stderr.close()
            self.proc = None

    def __enter__(self) -> SshAgent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
