"""The launcher's side of a host agent: start it through a transport, read its frames, stop it.

One `AgentSession` per host per attempt: one stream (an SSH channel or a local pipe) and one reader
thread. Output frames (length-prefixed runs of whole lines) go straight to the sinks of their
processes, a line at a time, in order; events
(started, exit, hang, ready, done, and `lost` when the stream ends without `done`) go to one queue
shared by every host, which the supervisor reads.
"""
from __future__ import annotations

import json
import queue
import signal
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence

from launcher.transport.hostprog import host_argv, host_stdin

Sink = Callable[[str], None]
CHUNK = 1 << 16


def agent_argv(python: str) -> List[str]:
    """The command that starts an agent (the host program's `agent` mode, launcher/hostside/agent.py);
    feed it `agent_stdin(document)`."""
    return host_argv(python, "agent")


def agent_stdin(document: Mapping[str, Any]) -> bytes:
    """The host program's sources, then the host document as one JSON line."""
    return host_stdin((json.dumps(document, separators=(",", ":")) + "\n").encode("utf-8"))


class AgentStream:
    """A started agent's byte stream, as a transport provides it."""

    def read(self, n: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def write(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        """Drop the launcher's end: the agent sees EOF and tears everything down."""
        raise NotImplementedError

    def exit_code(self, timeout: float) -> Optional[int]:  # pragma: no cover - interface
        return None


@dataclass(frozen=True)
class AgentEvent:
    """Something an agent reported: `kind` is started/exit/error/hang/ready/done/note/lost."""

    host: str
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def index(self) -> Optional[int]:
        value = self.data.get("i")
        return None if value is None else int(value)


class AgentSession:
    """One host's agent for one attempt."""

    def __init__(self, host: str, stream: AgentStream, sinks: Sequence[Sink], tail_sinks: Sequence[Sink],
                 events: queue.Queue[AgentEvent]):
        self.host = host
        self.stream = stream
        self.sinks = list(sinks)
        self.tail_sinks = list(tail_sinks)
        self.events = events
        self.diagnostics: Deque[str] = deque(maxlen=50)
        self.done = threading.Event()
        self._saw_done = False
        self._decoders: Dict[bytes, Any] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read_loop, name=f"agent {host}", daemon=True)
        self._thread.start()

    # -- reading

    def _read_loop(self) -> None:
        buffer = b""
        try:
            while True:
                data = self.stream.read(CHUNK)
                if not data:
                    break
                buffer = self._frames(buffer + data)
        except (OSError, EOFError, ValueError):
            pass
        if buffer.strip():
            self.diagnostics.append(buffer.decode("utf-8", "replace").strip())
        if not self._saw_done:
            code = self.stream.exit_code(2.0)
            detail = "; ".join(self.diagnostics) or (
                f"agent exit code {code}" if code is not None else "the connection closed")
            self.events.put(AgentEvent(self.host, "lost", {"detail": detail, "code": code}))
        self.done.set()

    def _frames(self, buffer: bytes) -> bytes:
        """Handle every complete frame at the start of `buffer`; return what is left."""
        at = 0
        while True:
            end = buffer.find(b"\n", at)
            if end < 0:
                return buffer[at:]
            kind = buffer[at:at + 2]
            if kind in (b"o ", b"e ", b"t "):
                try:
                    index, size = (int(x) for x in buffer[at + 2:end].split())
                except ValueError:
                    self._other(buffer[at:end])
                    at = end + 1
                    continue
                if len(buffer) < end + 1 + size:
                    return buffer[at:]
                payload = buffer[end + 1:end + 1 + size]
                at = end + 1 + size
                self._lines(kind, index, payload)
            else:
                self._other(buffer[at:end])
                at = end + 1

    def _lines(self, kind: bytes, index: int, payload: bytes) -> None:
        try:
            sink = (self.tail_sinks if kind == b"t " else self.sinks)[index]
        except IndexError:
            self.diagnostics.append(f"frame for unknown output {kind.decode()}{index}")
            return
        lines = payload.decode("utf-8", "replace").split("\n")
        lines.pop()
        for line in lines:
            try:
                sink(line)
            except Exception as exc:  # a consumer's bug must not stop the drain
                self.diagnostics.append(f"output callback failed: {exc!r}")

    def _other(self, line: bytes) -> None:
        if line[:2] == b"! ":
            try:
                event = json.loads(line[2:].decode("utf-8"))
            except ValueError:
                self.diagnostics.append(line.decode("utf-8", "replace"))
                return
            name = str(event.pop("event", ""))
            if name == "done":
                self._saw_done = True
            self.events.put(AgentEvent(self.host, name, event))
            return
        text = line.decode("utf-8", "replace").strip()
        if text:
            self.diagnostics.append(text)

    # -- control

    def send(self, line: str) -> bool:
        with self._lock:
            try:
                self.stream.write((line + "\n").encode("ascii"))
                return True
            except Exception:
                return False

    def stop(self, first: int = signal.SIGTERM) -> bool:
        """Ask the agent to stop its processes (`first` signal, then SIGTERM, grace, SIGKILL)."""
        return self.send(f"stop {int(first)}")

    def signal(self, sig: int) -> bool:
        return self.send(f"signal {int(sig)}")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the agent's stream ended; True if it did."""
        return self.done.wait(timeout)

    def close(self) -> None:
        """Hang up: the agent (if still there) tears its processes down on EOF."""
        with self._lock:
            try:
                self.stream.close()
            except Exception:
                pass


def start_session(transport, python: str, document: Mapping[str, Any], sinks: Sequence[Sink],
                  tail_sinks: Sequence[Sink], events: queue.Queue[AgentEvent]) -> AgentSession:
    """Start the agent for `document` on the transport's host; `HostError` if it cannot be started."""
    stream = transport.start_agent(agent_argv(python), agent_stdin(document))
    return AgentSession(transport.host, stream, sinks, tail_sinks, events)


__all__ = ["AgentEvent", "AgentSession", "AgentStream", "agent_argv", "agent_stdin", "start_session"]
