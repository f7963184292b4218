"""The launcher's side of a host agent (launcher/hostside/agent.py): one per host for the whole job.

`start_agent` starts the agent through the host's transport (one SSH channel, pipe or srun step); one
reader thread per host reads its stream. Output frames (length-prefixed runs of whole lines) go straight
to the sinks of the current attempt's processes, a line at a time, in order; attempt events (started,
exit, hang, ready, done, note) go to the current attempt's queue, which the supervisor reads; answers
to requests (`run`, `lease`, `stacks`, ...) wake their caller. When the stream ends without the agent's
`bye`, the attempt's queue gets a `lost` event and every waiting request fails with a `HostError`.

`AgentTransport` is the host's transport with its short commands (`exec`) run by the agent: over the
stream it already has, without a new login on the host.
"""
from __future__ import annotations

import itertools
import json
import queue
import signal
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from launcher.errors import HostError
from launcher.transport.base import CommandResult, HostInfo, SweepResult, Transport, WriteResult
from launcher.transport.hostprog import host_argv, host_stdin

Sink = Callable[[str], None]
CHUNK = 1 << 16
#: How long a request waits for the agent's answer beyond the command's own timeout.
ANSWER_SLACK_S = 30.0
#: How long the agent may take to say hello once started.
HELLO_TIMEOUT_S = 60.0


def agent_argv(python: str) -> List[str]:
    """The command that starts an agent (the host program's `agent` mode); feed it `agent_stdin(job)`."""
    return host_argv(python, "agent")


def agent_stdin(job: Mapping[str, Any]) -> bytes:
    """The host program's sources, then the job document as one JSON line."""
    return host_stdin((json.dumps(job, separators=(",", ":")) + "\n").encode("utf-8"))


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
    """Something an agent reported about an attempt: `kind` is started/exit/error/hang/ready/done/note,
    or `lost` when its stream ended without the agent's goodbye."""

    host: str
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def index(self) -> Optional[int]:
        value = self.data.get("i")
        return None if value is None else int(value)


class _Answer:
    """A request waiting for the agent's answer (or, for `watch`, a stream of them)."""

    def __init__(self, on_event: Optional[Callable[[Dict[str, Any]], bool]] = None):
        self.done = threading.Event()
        self.value: Optional[Dict[str, Any]] = None
        self.error: Optional[str] = None
        self.on_event = on_event

    def deliver(self, event: Dict[str, Any]) -> bool:
        """Hand over one answer; True when the request is complete."""
        if self.on_event is not None and not self.on_event(event):
            return False
        self.value = event
        self.done.set()
        return True

    def fail(self, why: str) -> None:
        self.error = why
        self.done.set()


class HostAgent:
    """The agent of one host for one job: requests, attempts, and the end of its stream."""

    def __init__(self, host: str, stream: AgentStream):
        self.host = host
        self.stream = stream
        self.diagnostics: Deque[str] = deque(maxlen=50)
        self.ended = threading.Event()
        self.hello = threading.Event()
        self.hello_data: Dict[str, Any] = {}
        self.lost_detail = ""
        self._said_bye = False
        self._ids = itertools.count(1)
        self._answers: Dict[int, _Answer] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._attempt: Optional[int] = None
        self._sinks: List[Sink] = []
        self._tail_sinks: List[Sink] = []
        self._events: Optional[queue.Queue] = None
        self._done_attempts: Dict[int, threading.Event] = {}
        self._thread = threading.Thread(target=self._read_loop, name=f"agent {host}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self.ended.is_set()

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
        if not self._said_bye:
            code = self.stream.exit_code(2.0)
            self.lost_detail = "; ".join(self.diagnostics) or (
                f"agent exit code {code}" if code is not None else "the connection closed")
            with self._lock:
                events = self._events
            if events is not None:
                events.put(AgentEvent(self.host, "lost", {"detail": self.lost_detail, "code": code}))
        with self._lock:
            answers, self._answers = self._answers, {}
            done = list(self._done_attempts.values())
        for answer in answers.values():
            answer.fail(self.lost_detail or "the agent ended")
        for event in done:
            event.set()
        self.hello.set()
        self.ended.set()

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
            sink = (self._tail_sinks if kind == b"t " else self._sinks)[index]
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
        if line[:2] != b"! ":
            text = line.decode("utf-8", "replace").strip()
            if text:
                self.diagnostics.append(text)
            return
        try:
            event = json.loads(line[2:].decode("utf-8"))
        except ValueError:
            self.diagnostics.append(line.decode("utf-8", "replace"))
            return
        name = str(event.pop("event", ""))
        if name == "hello":
            self.hello_data = event
            self.hello.set()
        elif name == "bye":
            self._said_bye = True
        elif "a" in event:
            self._attempt_event(name, event)
        elif event.get("id") is not None:
            with self._lock:
                answer = self._answers.get(int(event["id"]))
            if answer is not None and answer.deliver(dict(event, event=name)):
                with self._lock:
                    self._answers.pop(int(event["id"]), None)
        elif name == "note":
            self.diagnostics.append(str(event.get("message", "")))

    def _attempt_event(self, name: str, event: Dict[str, Any]) -> None:
        number = event.pop("a")
        with self._lock:
            events = self._events if number == self._attempt else None
            done = self._done_attempts.get(number) if name == "done" else None
        if events is not None:
            events.put(AgentEvent(self.host, name, event))
        if done is not None:
            done.set()

    # -- requests

    def _send(self, op: Mapping[str, Any]) -> None:
        data = (json.dumps(op, separators=(",", ":")) + "\n").encode("utf-8")
        with self._write_lock:
            try:
                self.stream.write(data)
            except Exception as exc:
                raise HostError(self.host, f"the agent does not take requests any more: {exc}") from None

    def request(self, op: str, wait_s: float, on_event: Optional[Callable[[Dict[str, Any]], bool]] = None,
                **fields: Any) -> Dict[str, Any]:
        """Send operation `op` and wait for its answer (`on_event` sees every answer with its id and says
        when the request is complete); `HostError` when the agent is gone or does not answer in time."""
        if self.ended.is_set():
            raise HostError(self.host, f"the agent is gone: {self.lost_detail or 'it ended'}")
        answer = _Answer(on_event)
        number = next(self._ids)
        with self._lock:
            self._answers[number] = answer
        try:
            self._send(dict(fields, op=op, id=number))
            if not answer.done.wait(wait_s):
                raise HostError(self.host, f"the agent did not answer {op} within {wait_s:g} s")
        finally:
            with self._lock:
                self._answers.pop(number, None)
        if answer.error is not None:
            raise HostError(self.host, f"the agent is gone: {answer.error}")
        value = answer.value or {}
        if value.get("event") == "failed":
            raise HostError(self.host, f"{op} failed on the host: {value.get('message')}")
        return value

    def run(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
            timeout: float = 60.0) -> CommandResult:
        """A short command run to completion by the agent (see `Transport.exec`)."""
        answer = self.request("run", timeout + ANSWER_SLACK_S, argv=[str(a) for a in argv],
                              env={str(k): str(v) for k, v in (env or {}).items()},
                              cwd=None if cwd is None else str(cwd), timeout=timeout)
        if answer.get("timed_out"):
            raise HostError(self.host, f"{argv[0]} did not finish within {timeout:g} s")
        return CommandResult(int(answer["rc"]), str(answer.get("out", "")), str(answer.get("err", "")))

    def send(self, op: str, **fields: Any) -> bool:
        """An operation without an answer (attempt control); False when the agent is gone."""
        try:
            self._send(dict(fields, op=op))
            return True
        except HostError:
            return False

    # -- attempts

    def begin_attempt(self, number: int, document: Mapping[str, Any], sinks: Sequence[Sink],
                      tail_sinks: Sequence[Sink], events: queue.Queue) -> None:
        """Start attempt `number`'s processes on the host; their lines go to `sinks`/`tail_sinks` and
        their events to `events`. `HostError` when the agent is gone."""
        with self._lock:
            self._attempt, self._sinks, self._tail_sinks = number, list(sinks), list(tail_sinks)
            self._events = events
            self._done_attempts[number] = threading.Event()
        if self.ended.is_set():
            raise HostError(self.host, f"the agent is gone: {self.lost_detail or 'it ended'}")
        self._send({"op": "attempt", "doc": dict(document, attempt=number)})

    def attempt_done(self, number: int) -> threading.Event:
        """Set once attempt `number`'s processes are all gone on the host (or the agent ended)."""
        with self._lock:
            event = self._done_attempts.setdefault(number, threading.Event())
        if self.ended.is_set():
            event.set()
        return event

    def stop(self, first: int = signal.SIGTERM) -> bool:
        """Stop the current attempt's processes (`first` signal, then SIGTERM, grace, SIGKILL); the agent
        stays for the next attempt."""
        return self.send("stop", sig=int(first))

    def signal(self, sig: int) -> bool:
        return self.send("signal", sig=int(sig))

    def save(self, path: str) -> bool:
        """Ask the workload to save and stop: its save request file is created on the host."""
        return self.send("save", path=path)

    def stacks(self, pids: Iterable[int], timeout: float = 10.0) -> List[Dict[str, Any]]:
        """The Python stacks of `pids` on the host (launcher/hostside/stacks.py records)."""
        answer = self.request("stacks", timeout + ANSWER_SLACK_S, pids=[int(p) for p in pids],
                              timeout=timeout)
        return list(answer.get("records") or [])

    # -- the end

    def close(self) -> None:
        """Hang up: the agent tears everything down on EOF, releases the lease and exits."""
        with self._write_lock:
            try:
                self.stream.close()
            except Exception:
                pass

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the agent's stream ended; True if it did."""
        return self.ended.wait(timeout)


def start_agent(transport: Transport, python: str, job: Mapping[str, Any]) -> HostAgent:
    """Start the host agent of `job` ({"job_id", "host"}) on the transport's host and wait for its hello;
    `HostError` if it cannot be started."""
    stream = transport.start_agent(agent_argv(python), agent_stdin(job))
    agent = HostAgent(transport.host, stream)
    if not agent.hello.wait(HELLO_TIMEOUT_S) or agent.ended.is_set():
        silent = not agent.ended.is_set()
        agent.close()
        agent.wait(2.0)  # what it printed, if anything, is in lost_detail once its stream has ended
        detail = agent.lost_detail or "it ended"
        if silent:
            detail = f"no answer within {HELLO_TIMEOUT_S:g} s ({detail})"
        raise HostError(transport.host, f"cannot start the host agent: {detail}")
    return agent


class AgentTransport(Transport):
    """A host's transport whose short commands run through the host's agent while it lives (else the
    transport's own way); everything else is the transport's."""

    def __init__(self, base: Transport, agent: HostAgent):
        self.base, self.agent, self.host = base, agent, base.host

    def exec(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
             cwd: Optional[str] = None, timeout: float = 60.0) -> CommandResult:
        if self.agent.alive:
            return self.agent.run(argv, env, cwd, timeout)
        return self.base.exec(argv, env=env, cwd=cwd, timeout=timeout)

    def start_agent(self, argv: Sequence[str], stdin: bytes):
        return self.base.start_agent(argv, stdin)

    def read_file(self, path: str) -> bytes:
        return self.base.read_file(path)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.base.write_file(path, data, mode)

    def read_chunks(self, path: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        return self.base.read_chunks(path, chunk)

    def write_chunks(self, path: str, chunks: Iterable[bytes], mode: int = 0o644, **kw: Any) -> Any:
        return self.base.write_chunks(path, chunks, mode, **kw)

    def kill_group(self, pgid: int, sig: int = signal.SIGTERM, *,
                   verify_env: Optional[Tuple[str, str]] = None) -> bool:
        return self.base.kill_group(pgid, sig, verify_env=verify_env)

    def sweep_job(self, job_id: str, timeout_s: float = 5.0) -> SweepResult:
        return self.base.sweep_job(job_id, timeout_s)

    def run_mode(self, mode: str, args: Sequence[str] = (), timeout: float = 60.0) -> Tuple[int, str, str]:
        return self.base.run_mode(mode, args, timeout)

    def program_command(self, mode: str, *args: str) -> Optional[List[str]]:
        return self.base.program_command(mode, *args)

    def probe(self, python: str = "python3") -> HostInfo:
        return self.base.probe(python)

    def close(self) -> None:
        self.agent.close()
        self.base.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


__all__ = ["AgentEvent", "AgentStream", "HostAgent", "AgentTransport", "agent_argv", "agent_stdin",
           "start_agent", "WriteResult"]
