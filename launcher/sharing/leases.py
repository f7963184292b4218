"""The job's leases on its hosts, taken through the hosts' agents: all or nothing, waiting in line if asked.

What a job asks of each host (`host_request`): on ascend/gpu the devices of its ranks there, on a cpu
host that declares `slots: N` one slot per rank (a cpu host without `slots` is not leased). The agents
hold the leases (launcher/hostside/agent.py), so a lease lives exactly as long as the job's processes on
its host. `JobLeases.acquire` drives `launcher.sharing.policy.MultiHostAcquisition`: a ticket on every
host, then every host tried at once; without `--wait` a refusal ends the launch (`LeaseUnavailable`, exit
2, naming host, devices, holder, user and since when); with it, the launch keeps its tickets, waits in the
hosts' queues (first come, first served, by its wait start) and says its place and whom it waits for
when that changes. A host joining
the job later (a spare) or an agent started again after it was lost takes its lease with the job's own
queue key (`JobLeases.take`).
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence

from launcher.console import say
from launcher.errors import BadInput, HostError, LeaseRefused
from launcher.fanout import fan_out
from launcher.sharing.policy import Action, HostAnswer, MultiHostAcquisition, Outcome
from launcher.spec.model import ClusterSpec, HostSpec

#: How long taking one host's lease during the job may wait (`JobLeases.take`): for the job's previous
#: lease there to end with its last process, or for a launch that took the devices in passing (one that
#: cannot have all its hosts gives them back at once).
TAKE_WAIT_S = 10.0
TAKE_POLL_S = 0.1


class LeaseUnavailable(BadInput):
    """The job cannot have its hosts (held, cordoned, waited too long, interrupted); nothing started."""


def host_request(spec: ClusterSpec, host: HostSpec, job_id: str, key: Optional[float]) -> Optional[dict]:
    """What the job asks of `host` (hoststate.Request as JSON); None when the host is not leased."""
    base: Dict[str, Any] = {"job": job_id, "key": key, "launcher": socket.gethostname(),
                            "launcher_pid": os.getpid()}
    if spec.device != "cpu":
        return dict(base, devices=sorted(host.devices))
    if host.slots is None:
        return None
    return dict(base, slots=len(host.devices), capacity=host.slots)


def describe_holders(report: Mapping[str, Any]) -> str:
    """Who is in the way, from a host's report: holders (job, user, since) and earlier waiters."""
    parts = []
    for h in report.get("holders") or ():
        what = f"devices {', '.join(map(str, h.get('devices') or []))}" if h.get("devices") else \
            f"{h.get('slots')} slot(s)"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"])) if h.get("since") else "?"
        origin = f" (launched from {h['launcher']} pid {h.get('launcher_pid')})" if h.get("launcher") else ""
        parts.append(f"{what} held by job {h.get('job')} of {h.get('user')} since {since}{origin}")
    waiting = report.get("waiting_for") or ()
    if waiting:
        parts.append("queued before it: " + ", ".join(f"job {t.get('job')} of {t.get('user')}"
                                                      for t in waiting))
    if not parts:
        parts.append(str(report.get("reason", report.get("state", "refused"))))
    return "; ".join(parts)


class JobLeases:
    """The leases of job `job_id` on the hosts of `agents` (host name -> HostAgent)."""

    def __init__(self, spec: ClusterSpec, job_id: str, agents: Callable[[str], Any], out: IO[str],
                 wait_s: Optional[float] = None, clock: Callable[[], float] = time.time):
        self.spec, self.job_id, self.agents, self.out = spec, job_id, agents, out
        #: None: do not wait; math.inf: wait for ever; else at most that many seconds.
        self.wait_s = wait_s
        self.clock = clock
        #: The launch's queue key: when it began to take its leases (this machine's clock).
        self.key: Optional[float] = None
        #: When its tickets were in every host's queue (None: it did not wait in line).
        self.queued: Optional[float] = None
        #: When it held every lease.
        self.granted: Optional[float] = None
        self.held: List[str] = []
        self.taken: Dict[str, dict] = {}
        self.cancel = threading.Event()
        self._said = ""

    def requests(self, hosts: Sequence[HostSpec]) -> Dict[str, dict]:
        return {h.name: r for h in hosts
                for r in [host_request(self.spec, h, self.job_id, self.key)] if r is not None}

    def _op(self, host: HostSpec, op: str, request: dict, timeout: float = 60.0, **kw: Any) -> Dict[str, Any]:
        return self.agents(host.name).request(op, timeout, state_dir=self.spec.state_dir(host),
                                              request=request, **kw)

    def acquire(self, hosts: Sequence[HostSpec]) -> None:
        """Take the job's lease on every one of `hosts` (those that need one), all or nothing; with a wait
        time, in line. `LeaseUnavailable` (nothing held) when that cannot be."""
        waiting = self.wait_s is not None
        started = self.clock()
        self.key = started
        requests = self.requests(hosts)
        if not requests:
            return
        by_name = {h.name: h for h in hosts}
        acquisition = MultiHostAcquisition(list(requests), wait=waiting)
        step = acquisition.start()
        try:
            while True:
                if step.release:
                    self._release(step.release, "lease")
                if step.action == Action.REGISTER:
                    failures = self._register(by_name, requests, step.hosts)
                    self.queued = self.clock()
                    step = acquisition.registered(failures)
                elif step.action == Action.TRY:
                    step = acquisition.answers(self._try_all(by_name, requests, step.hosts))
                elif step.action == Action.WAIT:
                    name = step.hosts[0]
                    self._wait(by_name[name], requests[name], started, acquisition.blocker)
                    step = acquisition.ready(name)
                elif step.action == Action.DONE:
                    self.held = list(step.hosts)
                    self.granted = self.clock()
                    self.taken = {name: _what(requests[name]) for name in step.hosts}
                    self._release(list(requests), "ticket")
                    if self._said:
                        say(self.out, f"leases taken on {len(self.held)} host(s) after "
                                      f"{self.clock() - started:.0f} s in line")
                    return
                else:
                    raise LeaseUnavailable(self._failure(step.reason, acquisition.blocker, started))
        except KeyboardInterrupt:
            self._release(list(requests), "all")
            raise LeaseUnavailable(f"interrupted while waiting for {self._what(acquisition.blocker)}; "
                                   f"nothing is held") from None
        except BaseException:
            # whatever ends the attempt (refused, waited too long, a host lost), nothing stays held
            self._release(list(requests), "all")
            raise

    def _register(self, hosts: Mapping[str, HostSpec], requests: Mapping[str, dict],
                  names: Sequence[str]) -> Dict[str, str]:
        def one(name: str) -> None:
            answer = self._op(hosts[name], "ticket", requests[name])
            if not answer.get("ok"):
                raise HostError(name, str((answer.get("error") or {}).get("message", "refused")))

        done = fan_out(one, names, key=str, width=self.spec.launch.fanout, catch=(HostError,))
        return {name: exc.cause for name, exc in done.failed.items()}

    def _try_all(self, hosts: Mapping[str, HostSpec], requests: Mapping[str, dict],
                 names: Sequence[str]) -> List[HostAnswer]:
        done = fan_out(lambda name: self._try(hosts[name], requests[name]), names, key=str,
                       width=self.spec.launch.fanout)
        return [done.succeeded[name] if name in done.succeeded else
                HostAnswer(name, Outcome.ERROR, f"{type(done.failed[name]).__name__}: {done.failed[name]}")
                for name in names]

    def _try(self, host: HostSpec, request: dict) -> HostAnswer:
        try:
            answer = self._op(host, "lease", request)
        except HostError as exc:
            return HostAnswer(host.name, Outcome.ERROR, exc.cause)
        if answer.get("granted"):
            return HostAnswer(host.name, Outcome.GRANTED, "granted")
        if answer.get("error"):
            return HostAnswer(host.name, Outcome.ERROR, str(answer["error"].get("message")))
        return HostAnswer.from_report(host.name, answer.get("report") or {})

    def _wait(self, host: HostSpec, request: dict, started: float, blocker: Optional[HostAnswer]) -> None:
        """Wait in `host`'s queue until it would grant; say the place and whom it waits for on change."""
        if blocker is not None:
            self._tell(host.name, blocker.report)
        remaining = math.inf if self.wait_s is None or math.isinf(self.wait_s) else \
            max(0.0, started + self.wait_s - self.clock())

        def on_event(event: Dict[str, Any]) -> bool:
            if event.get("changed") and event.get("report") is not None:
                self._tell(host.name, event["report"])
            return not event.get("changed")

        timeout = 1e9 if math.isinf(remaining) else remaining
        try:
            answer = self.agents(host.name).request("wait", timeout, on_event=on_event)
        except HostError as exc:
            if "did not answer" in exc.cause:
                raise LeaseUnavailable(f"waited {self.wait_s:g} s for {self._what(blocker)} "
                                       f"({describe_holders(blocker.report if blocker else {})}); "
                                       f"nothing is held") from None
            raise LeaseUnavailable(f"{host.name}: {exc.cause}") from None
        if answer.get("error"):
            raise LeaseUnavailable(f"{host.name}: {answer['error'].get('message')}")

    def _tell(self, host: str, report: Mapping[str, Any]) -> None:
        text = (f"waiting for {host} (place {report.get('place', '?')} in its queue): "
                f"{describe_holders(report)}")
        if text != self._said:
            self._said = text
            say(self.out, text)

    def _what(self, blocker: Optional[HostAnswer]) -> str:
        if blocker is None:
            return "the hosts"
        host = self.spec.host(blocker.host)
        request = host_request(self.spec, host, self.job_id, self.key) or {}
        what = f"devices {', '.join(map(str, request['devices']))}" if request.get("devices") else \
            f"{request.get('slots')} slot(s)"
        return f"{what} on {blocker.host}"

    def _failure(self, reason: str, blocker: Optional[HostAnswer], started: float) -> str:
        if blocker is None:
            return f"cannot take the hosts: {reason}"
        if blocker.outcome == Outcome.CORDONED:
            return f"{blocker.host}: {blocker.reason}"
        hint = "" if self.wait_s is not None else " (give --wait to queue for them)"
        return f"{self._what(blocker)} are not free: {describe_holders(blocker.report)}{hint}"

    def _release(self, names: Sequence[str], what: str) -> None:
        def one(name: str) -> None:
            try:
                self.agents(name).request("release", 30.0, what=what)
            except HostError:
                pass

        fan_out(one, list(names), key=str, width=self.spec.launch.fanout)
        if what in ("lease", "all"):
            self.held = [h for h in self.held if h not in names]

    def summary(self) -> Dict[str, Any]:
        """What job.json keeps of the leases: the queue key, when the tickets were in every queue and when
        every lease was held (epoch seconds), the seconds waited, and what is held on each host."""
        waited = None if self.granted is None or self.key is None else round(self.granted - self.key, 3)
        return {"key": self.key, "queued": self.queued, "granted": self.granted, "waited_s": waited,
                "hosts": {name: dict(what) for name, what in self.taken.items() if name in self.held}}

    def take(self, host: HostSpec, again: bool = False, wait_s: float = TAKE_WAIT_S) -> None:
        """Take the lease on one more host during the job: a spare taking over, or (`again`) a host whose
        agent was lost and started again. The job keeps its place in line: the request carries the job's
        own queue key, with a ticket on the host while it tries, so launches that began to wait later
        come after it. It waits up to `wait_s` for its previous lease there to end (`again`: its last
        processes are going) or for another launch holding the devices in passing; `again` also takes
        a host cordoned meanwhile (the job ran there already). `LeaseRefused` naming who holds them (or
        the cordon); `HostError` when the host's state cannot be used."""
        request = host_request(self.spec, host, self.job_id, self.key)
        if request is None:
            return
        if again:
            request["allow_cordoned"] = True
        answer = self._op(host, "ticket", request)
        if not answer.get("ok"):
            raise LeaseRefused(host.name, str((answer.get("error") or {}).get("message", "refused")))
        deadline = time.monotonic() + wait_s
        try:
            while True:
                answer = self._try(host, request)
                if answer.outcome == Outcome.GRANTED:
                    break
                if answer.outcome == Outcome.ERROR:
                    raise HostError(host.name, f"cannot take the job's lease there: {answer.reason}")
                if answer.outcome == Outcome.CORDONED or time.monotonic() >= deadline:
                    why = describe_holders(answer.report) if answer.report else answer.reason
                    raise LeaseRefused(host.name, f"cannot take the job's lease there: {why}")
                time.sleep(TAKE_POLL_S)
        finally:
            self._release([host.name], "ticket")
        if host.name not in self.held:
            self.held.append(host.name)
        self.taken[host.name] = _what(request)


def _what(request: Mapping[str, Any]) -> Dict[str, Any]:
    """What a host's request asks for: its devices, or its number of slots."""
    if request.get("devices"):
        return {"devices": list(request["devices"])}
    return {"slots": request.get("slots")}


__all__ = ["JobLeases", "LeaseUnavailable", "LeaseRefused", "host_request", "describe_holders",
           "TAKE_WAIT_S"]
