"""The launcher's side of the guard protocol (see `launcher.transport.guard`), shared by all transports.

A transport starts the guard however it reaches its host (a local pipe, an SSH channel) and hands
the three byte streams to `GuardedProcess`, which streams output lines, learns the command's
host-side pid/pgid and exit status, and signals its group.
"""
from __future__ import annotations

import codecs
import json
import secrets
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Tuple

from launcher.transport import guard
from launcher.transport.base import HostError, LineCallback, RemoteProcess

CHUNK = 1 << 16
#: How long a finished command's output may stay silent before it counts as held open by a stray process.
OUTPUT_SETTLE_S = 2.0
START_TIMEOUT_S = 60.0

Reader = Callable[[int], bytes]


def guard_source() -> str:
    """The guard module's source, to run as `python -c SOURCE MODE` where the launcher is not installed."""
    return _GUARD_SOURCE


_GUARD_SOURCE = Path(guard.__file__).read_text(encoding="utf-8")
_GUARD_BYTES = _GUARD_SOURCE.encode("utf-8")

#: Reads the guard's source from stdin (its length is the last argument) and runs it, so the host
#: needs no copy of the launcher and `ps` there shows a short command line, not the whole guard.
BOOTSTRAP = (
    "import os, sys\n"
    "n, s = int(sys.argv[-1]), b''\n"
    "while len(s) < n:\n"
    "    c = os.read(0, n - len(s))\n"
    "    if not c:\n"
    "        sys.exit(127)\n"
    "    s += c\n"
    "exec(compile(s, 'refinenet-guard', 'exec'))\n"
)


def guard_argv(python: str, mode: str) -> list:
    """The command that starts a guard in `mode` (`run` or `exec`); feed it `guard_stdin(...)`.

    `-S` skips site-packages (the guard needs only the standard library; saves start-up time).
    """
    return [python, "-S", "-c", BOOTSTRAP, mode, str(len(_GUARD_BYTES))]


def guard_stdin(header: bytes) -> bytes:
    """What a guard started with `guard_argv` reads first: its own source, then the command header."""
    return _GUARD_BYTES + header


def guard_header(argv: Sequence[str], env: Optional[Mapping[str, str]], cwd: Optional[str],
                 grace: float, nonce: str = "") -> bytes:
    """The JSON line that tells a guard what to run."""
    if not argv:
        raise ValueError("empty command")
    header = {"argv": [str(a) for a in argv], "env": {str(k): str(v) for k, v in (env or {}).items()},
              "cwd": None if cwd is None else str(cwd), "grace": float(grace), "nonce": nonce}
    return (json.dumps(header) + "\n").encode("utf-8")


def new_nonce() -> str:
    return "refinenet-guard-" + secrets.token_hex(8)


def split_exec_trailer(stderr: bytes, nonce: str) -> Tuple[bytes, Optional[int]]:
    """Separate the guard's status trailer (exec mode) from the command's own stderr."""
    marker = ("\n" + nonce + " ").encode("ascii")
    at = stderr.rfind(marker)
    if at < 0 or not stderr.endswith(b"\n"):
        return stderr, None
    try:
        status = int(stderr[at + len(marker):-1])
    except ValueError:
        return stderr, None
    return stderr[:at], status


def status_from_exit_code(code: Optional[int]) -> Optional[int]:
    """A guard's exit code back to a status: 128 + n means killed by signal n."""
    if code is None or code < 0:
        return code
    return -(code - 128) if 128 < code < 128 + 65 else code


class LineSplitter:
    """Bytes in, whole decoded lines out (without the newline); a partial last line at `close`."""

    def __init__(self, on_line: LineCallback):
        self._on_line = on_line
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._rest = ""

    def feed(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if "\n" not in text:
            self._rest += text
            return
        lines = (self._rest + text).split("\n")
        self._rest = lines.pop()
        on_line = self._on_line
        for line in lines:
            on_line(line)

    def close(self) -> None:
        text = self._rest + self._decoder.decode(b"", final=True)
        self._rest = ""
        if text:
            for line in text.split("\n"):
                self._on_line(line)


class GuardedProcess(RemoteProcess):
    """A command running under a guard, seen through the guard's output, side channel and stdin."""

    def __init__(self, host: str, *, read_out: Reader, read_side: Reader,
                 write_control: Callable[[bytes], None], hangup: Callable[[], None],
                 guard_exit_code: Callable[[], Optional[int]],
                 signal_group: Callable[[int, int], bool], on_line: Optional[LineCallback],
                 release: Callable[[], None] = lambda: None, argv: Sequence[str] = ()):
        self.host = host
        self.pid = -1
        self.pgid = -1
        self.argv = tuple(argv)
        #: Lines the guard or the host's shell printed outside the protocol (e.g. "python3: not found").
        self.diagnostics: deque = deque(maxlen=50)
        #: True when the launcher lost its connection to the guard before learning the exit status.
        self.connection_lost = False
        self.callback_error: Optional[BaseException] = None
        self._read_out, self._read_side = read_out, read_side
        self._write_control, self._hangup = write_control, hangup
        self._guard_exit_code, self._signal_group, self._release = guard_exit_code, signal_group, release
        self._on_line = on_line
        self._status: Optional[int] = None
        self._start_error: Optional[str] = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self._out_eof = threading.Event()
        self._out_idle_since: Optional[float] = None
        self._lock = threading.Lock()

    def start(self, timeout: float = START_TIMEOUT_S) -> GuardedProcess:
        """Start the reader threads and wait for the guard to report the command's ids."""
        name = f"{self.host}:{Path(self.argv[0]).name if self.argv else 'command'}"
        self._out_thread = threading.Thread(target=self._pump_out, name=f"out {name}", daemon=True)
        self._side_thread = threading.Thread(target=self._pump_side, name=f"guard {name}", daemon=True)
        self._out_thread.start()
        self._side_thread.start()
        if not self._started.wait(timeout):
            self.hangup()
            raise HostError(self.host, f"the command guard did not report within {timeout:g} s")
        if self._start_error is not None:
            self._finished.wait(timeout)
            raise HostError(self.host, self._start_error)
        return self

    def _deliver(self, line: str) -> None:
        try:
            self._on_line(line)
        except Exception as exc:  # a consumer's bug must not stop the drain
            if self.callback_error is None:
                self.callback_error = exc
                print(f"refinenet-launch: output callback failed on {self.host}: {exc!r}", file=sys.stderr)

    def _pump_out(self) -> None:
        splitter = LineSplitter(self._deliver) if self._on_line is not None else None
        read = self._read_out
        try:
            while True:
                self._out_idle_since = time.monotonic()
                data = read(CHUNK)
                self._out_idle_since = None
                if not data:
                    break
                if splitter is not None:
                    splitter.feed(data)
        except (OSError, EOFError):
            pass
        finally:
            if splitter is not None:
                splitter.close()
            self._out_eof.set()

    def _pump_side(self) -> None:
        splitter = LineSplitter(self._on_side_line)
        try:
            while True:
                data = self._read_side(CHUNK)
                if not data:
                    break
                splitter.feed(data)
        except (OSError, EOFError):
            pass
        splitter.close()
        try:
            self._conclude()
        finally:
            self._started.set()
            self._finished.set()
            try:
                self._release()
            except Exception:  # the connection is already gone
                pass

    def _on_side_line(self, line: str) -> None:
        if not line.startswith(guard.PREFIX):
            if line.strip():
                self.diagnostics.append(line)
            return
        try:
            event = json.loads(line[len(guard.PREFIX):])
        except ValueError:
            self.diagnostics.append(line)
            return
        kind = event.get("event")
        if kind == "started":
            self.pid, self.pgid = int(event["pid"]), int(event["pgid"])
            self._started.set()
        elif kind == "error":
            self._start_error = str(event.get("message"))
        elif kind == "exit":
            self._status = int(event["status"])

    def _conclude(self) -> None:
        if self._status is None:
            code = self._guard_exit_code()
            if self.pid < 0 and self._start_error is None:
                detail = "; ".join(self.diagnostics) or f"guard exit code {code}"
                self._start_error = f"could not start the command guard: {detail}"
            if code is None or code < 0:
                self.connection_lost = True
                self._status = -signal.SIGHUP
            else:
                self._status = status_from_exit_code(code)
        self._wait_output()

    def _wait_output(self) -> None:
        """Let the output reader deliver everything; give up on a pipe a stray process keeps open."""
        while not self._out_eof.wait(0.1):
            idle = self._out_idle_since
            if idle is not None and time.monotonic() - idle > OUTPUT_SETTLE_S:
                return

    def poll(self) -> Optional[int]:
        return self._status if self._finished.is_set() else None

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self._finished.wait(timeout)
        return self.poll()

    def kill_group(self, sig: int = signal.SIGTERM) -> None:
        if self._finished.is_set() or self.pgid < 0:
            return
        try:
            self._write_control(f"signal {int(sig)}\n".encode("ascii"))
        except Exception:  # the channel is gone: signal the group by id instead
            self._signal_group(self.pgid, int(sig))

    def hangup(self) -> None:
        """Drop the launcher's end of the guard's stdin: the guard then tears the whole group down."""
        with self._lock:
            try:
                self._hangup()
            except Exception:
                pass
