"""One attempt's processes run by a host agent, as one self-contained session (for transport tests and
benchmarks that look at the agent without a job around it): the agent starts, runs the document's
processes, and is closed once they are all gone, so its stream ends as a one-shot program's would."""
from __future__ import annotations

import queue
import signal
import threading
from typing import Any, Callable, Mapping, Optional, Sequence

from launcher.agent.session import HostAgent, start_agent

Sink = Callable[[str], None]


class OneAttempt:
    """A started attempt: `done` is set once the agent's stream ended (after the attempt, or lost)."""

    def __init__(self, agent: HostAgent, number: int):
        self.agent, self.number, self.host = agent, number, agent.host
        self.done = agent.ended
        threading.Thread(target=self._close_when_done, daemon=True).start()

    def _close_when_done(self) -> None:
        self.agent.attempt_done(self.number).wait()
        self.agent.close()

    def stop(self, first: int = signal.SIGTERM) -> bool:
        return self.agent.stop(first)

    def signal(self, sig: int) -> bool:
        return self.agent.signal(sig)

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self.agent.wait(timeout)

    def close(self) -> None:
        self.agent.close()

    @property
    def diagnostics(self):
        return self.agent.diagnostics


def start_attempt(transport, python: str, document: Mapping[str, Any], sinks: Sequence[Sink],
                  tail_sinks: Sequence[Sink], events: queue.Queue) -> OneAttempt:
    """Start an agent on the transport's host and the document's processes under it."""
    number = int(document.get("attempt") or 1)
    job = {"job_id": str(document.get("job_id", "test")), "host": transport.host}
    agent = start_agent(transport, python, job)
    agent.begin_attempt(number, document, sinks, tail_sinks, events)
    return OneAttempt(agent, number)
