"""Bring a job's hosts up before anything of it starts: agents, checks, the hosts' shared state, leases.

Every step runs on all hosts at once (bounded fan-out) and any problem ends the launch with exit 2 and
nothing started anywhere:

1. one agent per host and spare (launcher/agent): one login per host, everything else over its stream;
2. the hosts' shared state (launcher/hostside/hoststate.py): a cordoned host, or one still cooling down
   after a job excluded it, is replaced by a spare, or the launch ends naming it;
3. the host check and preflight (python, modules, inputs, other jobs' checkpoints where this job writes,
   the workload's own input check on the first host, disk, port, devices and processes outside any
   lease);
4. the job's leases, all or nothing, in line when `--wait` asks.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence

from launcher.agent.pool import AgentPool
from launcher.console import say
from launcher.errors import BadInput, HostError
from launcher.exclusion import HostPool, NoSpareLeft
from launcher.fanout import fan_out
from launcher.health.preflight import LaunchInputs, PreflightReport, launch_check
from launcher.sharing.leases import JobLeases
from launcher.sharing.policy import BadHostSettings, ExclusionRecord, judge_host
from launcher.spec.model import ClusterSpec, HostSpec
from launcher.transport.base import Transport
from launcher.transport.factory import open_transport
from launcher.workload import Workload


@dataclass
class JobHosts:
    """The hosts of a running job: their agents and transports, leases, and the pool of spares."""

    spec: ClusterSpec
    pool: AgentPool
    host_pool: Optional[HostPool]
    leases: Optional[JobLeases]
    states: Dict[str, Mapping] = field(default_factory=dict)

    @property
    def transports(self) -> Mapping[str, Transport]:
        return _Transports(self.pool)

    def agent(self, name: str):
        """`name`'s agent, started again (after a sweep, with the lease taken again) if it was lost."""
        return self.pool.agent(name)

    def transport(self, name: str) -> Transport:
        return self.pool.transport(name)

    def sweep(self, name: str):
        return self.pool.sweep(name)

    def warm(self, processes: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """A restart comes: each host's agent starts warm interpreters for `processes[host]` (the last
        attempt's process entries there). A host whose agent was lost gets a new one now (after a sweep of
        the job there), so that its ranks too start warm; one that cannot be reached is left to the next
        attempt, which says why."""
        def warm_up(name: str) -> None:
            self.pool.agent(name).send("warm", processes=list(processes[name]))

        fan_out(warm_up, list(processes), key=str, width=self.spec.launch.fanout, catch=(HostError,))

    def take(self, host: HostSpec) -> None:
        """A host joins the job (a spare taking over): its lease first; `HostError` when it cannot."""
        if self.leases is not None:
            self.leases.take(host)

    def leave(self, name: str) -> None:
        """A host leaves the job (excluded): its agent goes, and with it the lease there."""
        self.pool.close([name])

    def record_exclusion(self, name: str, reason: str, job_id: str, out: IO[str]) -> None:
        """Remember on the host that this job excluded it; cordon it when the policy says so."""
        if not self.spec.sharing.leases and self.spec.slurm is not None:
            return
        host = self.spec.host(name)
        try:
            answer = state_command(self.pool.transport(name), host, self.spec.state_dir(host),
                                   "record-exclusion", {"reason": reason[:1900], "job": job_id})
            records = [ExclusionRecord.from_json(r) for r in answer.get("exclusions") or ()]
            verdict = judge_host(name, records, time.time(), bad_host_settings(self.spec))
            if verdict.cordon:
                state_command(self.pool.transport(name), host, self.spec.state_dir(host), "cordon",
                              {"why": verdict.reason})
                say(out, f"host {name} cordoned: {verdict.reason}")
        except HostError as exc:
            say(out, f"cannot record the exclusion on {name}: {exc.cause}")

    def close(self) -> None:
        self.pool.close()


class _Transports(Mapping):
    """Host name -> transport, short commands through the host's agent (a view of the pool)."""

    def __init__(self, pool: AgentPool):
        self.pool = pool

    def __getitem__(self, name: str) -> Transport:
        if name not in self.pool.base:
            raise KeyError(name)
        return self.pool.transport(name)

    def __iter__(self):
        return iter(self.pool.base)

    def __len__(self) -> int:
        return len(self.pool.base)


def bad_host_settings(spec: ClusterSpec) -> BadHostSettings:
    return BadHostSettings.of(spec.sharing)


def state_command(transport: Transport, host: HostSpec, state_dir: str, command: str,
                  payload: Mapping) -> Dict:
    """A command on the host's shared state (launcher/hostside/hoststate.py `COMMANDS`): through the host's
    agent when it has one, else as a short program; `HostError` naming the host and the state's problem."""
    agent = getattr(transport, "agent", None)
    if agent is not None and agent.alive:
        answer = agent.request("state", 60.0, command=command, state_dir=state_dir, payload=dict(payload))
        error, result = answer.get("error"), answer.get("result")
    else:
        code, out, err = transport.run_mode("state", [command, state_dir, json.dumps(dict(payload))])
        try:
            data = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise HostError(host.name, f"the host's state ({state_dir}) gave no answer (exit {code}): "
                                       f"{(err.strip() or out.strip())[-300:]}") from None
        error, result = data.get("error"), data
    if error:
        raise HostError(host.name, f"{error.get('message')}")
    return dict(result or {})


def modules_of(workloads: Sequence[Workload]) -> List[str]:
    return list(dict.fromkeys(m for w in workloads for m in w.required_modules)) or ["mindspore"]


def inputs_of(spec: ClusterSpec, host: HostSpec, workloads: Sequence[Workload], job_id: str,
              leased: Optional[frozenset], first: bool) -> LaunchInputs:
    ckpt = [w.checkpoint_dir(spec, host) for w in workloads if w.resumable]
    checks = [tuple(a) for w in workloads if first
              for a in [w.input_check_argv(spec, host, spec.world_size)] if a]
    return LaunchInputs(modules=tuple(modules_of(workloads)),
                        files=tuple(dict.fromkeys(f for w in workloads for f in w.data_files(spec, host))),
                        job_id=job_id, ckpt_dirs=tuple(d for d in ckpt if d), input_checks=tuple(checks),
                        leased=leased)


def bring_up(spec: ClusterSpec, job_id: str, workloads: Sequence[Workload], host_pool: Optional[HostPool],
             err: IO[str], wait_s: Optional[float] = None, sharing: bool = True) -> JobHosts:
    """The job's hosts up and checked, their leases held (see the module docstring); `BadInput` naming
    every host that is wrong, with nothing started and nothing held anywhere."""
    everyone = list(spec.hosts) + list(spec.spares)
    base = {h.name: open_transport(h) for h in everyone}
    pool = AgentPool(job_id, everyone, base, fanout=spec.launch.fanout)
    hosts = JobHosts(spec, pool, host_pool, None)
    try:
        _start_agents(hosts, err)
        leasing = sharing and spec.sharing.leases and spec.slurm is None
        if spec.slurm is None:
            hosts.states = _read_states(hosts)
            hosts.spec, hosts.host_pool = _replace_unavailable(hosts, err)
        _check(hosts, workloads, job_id, err, leasing)
        if leasing:
            hosts.leases = JobLeases(hosts.spec, job_id, pool.agent, err, wait_s=wait_s)
            hosts.leases.acquire(hosts.spec.hosts)
            pool.on_restart = lambda name, agent: hosts.leases.take(hosts.spec.host(name), again=True)
        return hosts
    except BaseException:
        hosts.close()
        raise


def _start_agents(hosts: JobHosts, err: IO[str]) -> None:
    spec = hosts.spec
    started = hosts.pool.start([h.name for h in list(spec.hosts) + list(spec.spares)])
    active = {h.name for h in spec.hosts}
    problems = [f"{name} ({spec.host(name).address}): {exc.cause}"
                for name, exc in sorted(started.failed.items()) if name in active]
    if problems:
        raise BadInput("host check failed, nothing was started:\n  " + "\n  ".join(problems))
    for name, exc in sorted(started.failed.items()):
        say(err, f"spare {name} left out: {exc.cause}")
        _drop_spare(hosts, name)


def _drop_spare(hosts: JobHosts, name: str) -> None:
    if hosts.host_pool is not None:
        hosts.host_pool.spares = [h for h in hosts.host_pool.spares if h.name != name]
    hosts.pool.close([name])


def _read_states(hosts: JobHosts) -> Dict[str, Mapping]:
    spec = hosts.spec
    names = [h.name for h in spec.hosts] + [h.name for h in spec.spares if hosts.pool.live(h.name)]

    def read(name: str) -> Mapping:
        host = spec.host(name)
        return state_command(hosts.pool.transport(name), host, spec.state_dir(host), "snapshot", {})

    done = fan_out(read, names, key=str, width=spec.launch.fanout, catch=(HostError,))
    if done.failed:
        problems = [f"{name}: {exc.cause}" for name, exc in sorted(done.failed.items())]
        raise BadInput("cannot read the hosts' shared state, nothing was started:\n  "
                       + "\n  ".join(problems))
    return dict(done.succeeded)


def unavailable(spec: ClusterSpec, name: str, state: Mapping) -> Optional[str]:
    """Why a host takes no new job now (cordoned, or cooling down after an exclusion), else None."""
    cordon = state.get("cordon") or {}
    if cordon.get("cordoned"):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cordon["since"])) \
            if cordon.get("since") else "?"
        return f"cordoned by {cordon.get('by')} since {since}: {cordon.get('why')}"
    records = [ExclusionRecord.from_json(r) for r in state.get("exclusions") or ()]
    verdict = judge_host(name, records, float(state.get("now") or time.time()), bad_host_settings(spec))
    if verdict.skipped:
        return verdict.reason
    return None


def _replace_unavailable(hosts: JobHosts, err: IO[str]):
    """Hosts that take no new job are replaced by spares (or the launch ends naming them)."""
    spec, pool = hosts.spec, hosts.host_pool
    for spare in list(spec.spares):
        why = unavailable(spec, spare.name, hosts.states.get(spare.name) or {})
        if why and pool is not None:
            say(err, f"spare {spare.name} left out: {why}")
            _drop_spare(hosts, spare.name)
    for host in list(spec.hosts):
        why = unavailable(spec, host.name, hosts.states.get(host.name) or {})
        if why is None:
            continue
        if pool is None or not pool.spares:
            raise BadInput(f"host {host.name} takes no new job: {why}; nothing was started "
                           f"(uncordon it, wait, or give the cluster file a spare)")
        try:
            spare = pool.exclude(host.name, why)
        except NoSpareLeft as exc:
            raise BadInput(f"{exc}; nothing was started") from None
        say(err, f"host {host.name} takes no new job ({why}); its ranks run on spare {spare.name}")
        spec = pool.spec
    return spec, pool


def _check(hosts: JobHosts, workloads: Sequence[Workload], job_id: str, err: IO[str], leasing: bool) -> None:
    spec = hosts.spec
    first = spec.hosts[0].name

    def leased(name: str) -> Optional[frozenset]:
        if not leasing:
            return None
        state = hosts.states.get(name) or {}
        return frozenset(d for lease in state.get("leases") or () for d in lease.get("devices") or ())

    def check(host: HostSpec):
        try:
            inputs = inputs_of(spec, host, workloads, job_id, leased(host.name), host.name == first)
            return launch_check(spec, host, hosts.pool.transport(host.name), inputs)
        except HostError as exc:
            raise HostError(host.name, f"{host.name} ({host.address}): {exc.cause}") from None

    result = fan_out(check, spec.hosts, key=lambda h: h.name, width=spec.launch.fanout, catch=(HostError,))
    if result.failed:
        problems = [result.failed[h.name].cause for h in spec.hosts if h.name in result.failed]
        raise BadInput("host check failed, nothing was started:\n  " + "\n  ".join(problems))
    if spec.health.preflight:
        report = PreflightReport(tuple(c for h in spec.hosts for c in result.succeeded[h.name]))
        err.write(report.render() + "\n")
        if not report.ok:
            report.raise_for_failures()
    _check_spares(hosts, workloads, job_id, err)


def _check_spares(hosts: JobHosts, workloads: Sequence[Workload], job_id: str, err: IO[str]) -> None:
    """Spares are checked like the hosts (without the preflight); one that fails is left out."""
    pool = hosts.host_pool
    if pool is None or not pool.spares:
        return
    quiet = dataclasses.replace(hosts.spec, health=dataclasses.replace(hosts.spec.health, preflight=False))

    def check(host: HostSpec):
        launch_check(quiet, host, hosts.pool.transport(host.name),
                     inputs_of(quiet, host, workloads, job_id, None, False))

    done = fan_out(check, pool.spares, key=lambda h: h.name, width=hosts.spec.launch.fanout,
                   catch=(HostError,))
    for name, exc in sorted(done.failed.items()):
        say(err, f"spare {name} left out: {exc.cause}")
        _drop_spare(hosts, name)


def wait_seconds(text: Optional[str]) -> Optional[float]:
    """`--wait [SECONDS]`: None (not given), math.inf (given without a time), or the seconds."""
    if text is None:
        return None
    return math.inf if text == "" else float(text)


__all__ = ["JobHosts", "bring_up", "state_command", "unavailable", "wait_seconds"]
