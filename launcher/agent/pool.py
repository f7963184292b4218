"""The job's host agents: one per host (and spare) for the whole job, started all at once.

`AgentPool` starts the agents (bounded fan-out), hands out the hosts' transports with short commands
run through their agents (`AgentTransport`), starts an agent again on a host whose agent was lost (after
sweeping what was left of the job there), keeps the job's leases (`launcher.sharing.leases`) and closes
everything at the end. The launcher's threads and connections grow with hosts: one stream and one
reader thread per host.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, Iterable, List, Mapping, Optional

from launcher.agent.session import AgentTransport, HostAgent, start_agent
from launcher.errors import HostError
from launcher.fanout import DEFAULT_WIDTH, GroupResult, fan_out
from launcher.spec.model import HostSpec
from launcher.transport.base import SweepResult, Transport

#: How long a sweep of a host whose agent was lost waits for the job's processes there to go.
SWEEP_TIMEOUT_S = 10.0


class AgentPool:
    """The host agents of job `job_id` over the hosts' base transports."""

    def __init__(self, job_id: str, hosts: Iterable[HostSpec], base: Mapping[str, Transport],
                 fanout: int = DEFAULT_WIDTH):
        self.job_id = job_id
        self.hosts: Dict[str, HostSpec] = {h.name: h for h in hosts}
        self.base: Dict[str, Transport] = dict(base)
        self.fanout = fanout
        self.agents: Dict[str, HostAgent] = {}
        self.transports: Dict[str, AgentTransport] = {}
        #: Called with (host, agent) after an agent started again on a host whose agent was lost (the
        #: job's lease is taken there again before anything else runs); raises HostError to refuse it.
        self.on_restart: Optional[Callable[[str, HostAgent], None]] = None
        self._lock = threading.Lock()
        #: Hosts swept since their agent was lost (no second sweep before it starts again).
        self._swept: set = set()

    def add(self, host: HostSpec, base: Transport) -> None:
        """A host that joins the job later (a spare)."""
        with self._lock:
            self.hosts[host.name] = host
            self.base[host.name] = base

    def start(self, names: Iterable[str]) -> GroupResult:
        """Start the agents of `names` at once; the hosts whose agent could not start, with the cause."""
        names = [n for n in names if not self.live(n)]
        return fan_out(self._start, names, key=str, width=self.fanout, catch=(HostError,))

    def _start(self, name: str) -> HostAgent:
        host = self.hosts[name]
        agent = start_agent(self.base[name], host.python, {"job_id": self.job_id, "host": name})
        with self._lock:
            self.agents[name] = agent
            self.transports[name] = AgentTransport(self.base[name], agent)
        return agent

    def live(self, name: str) -> bool:
        agent = self.agents.get(name)
        return agent is not None and agent.alive

    def agent(self, name: str) -> HostAgent:
        """The live agent of `name`: started again if it was lost (after a sweep of the job there, and
        `on_restart`); `HostError` when that fails."""
        agent = self.agents.get(name)
        if agent is not None and agent.alive:
            return agent
        if agent is not None and name not in self._swept:
            self.sweep(name)
        self._swept.discard(name)
        agent = self._start(name)
        if self.on_restart is not None:
            try:
                self.on_restart(name, agent)
            except BaseException:
                # refused (e.g. the job's lease there is held by another job): no process of the job may
                # start through this agent; the next call starts one again
                self._drop(name)
                raise
        return agent

    def _drop(self, name: str) -> None:
        with self._lock:
            agent = self.agents.pop(name, None)
            self.transports.pop(name, None)
        if agent is not None:
            agent.close()
            agent.wait(5.0)

    def transport(self, name: str) -> Transport:
        """`name`'s transport: short commands through its agent while it lives."""
        return self.transports.get(name) or self.base[name]

    def sweep(self, name: str) -> SweepResult:
        """End whatever is left of the job on `name` over a new connection; `HostError` if it cannot."""
        result = self.base[name].sweep_job(self.job_id, SWEEP_TIMEOUT_S)
        if not self.live(name):
            self._swept.add(name)
        return result

    def close(self, names: Optional[Iterable[str]] = None) -> None:
        """Hang up on the agents of `names` (default: all) and close their transports, all at once."""
        chosen: List[str] = list(self.base) if names is None else list(names)

        def close_one(name: str) -> None:
            agent = self.agents.pop(name, None)
            if agent is not None:
                agent.close()
                agent.wait(5.0)
            self.transports.pop(name, None)
            base = self.base.get(name)
            if base is not None:
                base.close()

        fan_out(close_one, chosen, key=str, width=self.fanout)


__all__ = ["AgentPool", "SWEEP_TIMEOUT_S"]
