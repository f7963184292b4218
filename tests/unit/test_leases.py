"""The lease driver (launcher/sharing/leases.py) against fake host agents that keep real host state.

Each `FakeAgent` answers `ticket`, `lease`, `wait` and `release` as launcher/hostside/agent.py does, with
the real host-state library on its own state directory (files and flock()s in a temporary folder), so
the driver's decisions meet the real grant rule without processes or SSH. Another job's lease is taken
directly with the library.
"""
from __future__ import annotations

import io
import math
import threading
import time
from typing import Any, Callable, Dict, Optional

import pytest

from launcher.agent.pool import AgentPool
from launcher.errors import HostError, LeaseRefused
from launcher.hostside import hoststate as hs
from launcher.sharing.leases import JobLeases, LeaseUnavailable
from tests.harness.specs import spec_of


class FakeAgent:
    """One host's agent for one job: its ticket and lease on the host's state directory."""

    def __init__(self, host: str):
        self.host = host
        self.ticket: Optional[hs.Ticket] = None
        self.lease: Optional[hs.Lease] = None
        self.args = None
        self.ops = []
        self.closed = False

    def request(self, op: str, wait_s: float, on_event: Optional[Callable[[Dict[str, Any]], bool]] = None,
                **fields: Any) -> Dict[str, Any]:
        self.ops.append(op)
        if op in ("ticket", "lease"):
            self.args = (fields["state_dir"], fields["request"])
            request = hs.Request.from_json(fields["request"])
        if op == "ticket":
            if self.ticket is None:
                self.ticket = hs.register(fields["state_dir"], request)
            return {"ok": True}
        if op == "lease":
            if self.lease is None:
                allow = fields["request"].get("allow_cordoned") is True
                try:
                    self.lease = hs.try_acquire(fields["state_dir"], request, ticket=self.ticket,
                                                allow_cordoned=allow)
                except hs.Refused as refused:
                    return {"granted": False, "report": refused.report}
            return {"granted": True}
        if op == "wait":
            return self._wait(wait_s, on_event)
        if op == "release":
            what = fields["what"]
            if what in ("lease", "all") and self.lease is not None:
                self.lease.release()
                self.lease = None
            if what in ("ticket", "all") and self.ticket is not None:
                self.ticket.release()
                self.ticket = None
            return {}
        raise AssertionError(op)

    def _wait(self, wait_s, on_event):
        state_dir, doc = self.args
        request = hs.Request.from_json(dict(doc, key=self.ticket.key))
        deadline, last = time.monotonic() + wait_s, None
        while time.monotonic() < deadline:
            report = hs.check(state_dir, request)
            if report["granted"]:
                return {"granted": True, "report": report}
            signature = (report["place"], [h["job"] for h in report["holders"]],
                         [t["job"] for t in report["waiting_for"]])
            if signature != last:
                last = signature
                on_event({"granted": False, "report": report, "changed": True})
            time.sleep(0.01)
        raise HostError(self.host, f"the agent did not answer wait within {wait_s:g} s")

    def close(self):
        self.closed = True
        for held in (self.lease, self.ticket):
            if held is not None:
                held.release()

    def wait(self, timeout=None):
        return True


class FakeTransport:
    def __init__(self, host):
        self.host = host


@pytest.fixture
def cluster(tmp_path):
    """Hosts a, b, c with devices 0..3, each with its own state directory; an agent per host."""
    hosts = [{"name": n, "address": f"10.0.0.{i + 1}", "ssh": {}, "workdir": "/w", "devices": [0, 1, 2, 3],
              "device_ips": [f"10.1.{i}.{d}" for d in range(4)], "state_dir": str(tmp_path / n)}
             for i, n in enumerate("abc")]
    spec = spec_of(backend="rank_table", device="ascend", hosts=hosts, port=None)
    return spec


def leases_for(spec, job_id, wait_s=None, out=None):
    agents: Dict[str, FakeAgent] = {}

    def agent(name):
        return agents.setdefault(name, FakeAgent(name))

    driver = JobLeases(spec, job_id, agent, out if out is not None else io.StringIO(), wait_s=wait_s)
    driver.fake_agents = agents
    return driver


def held(spec, job_id):
    """(host, kind) of `job_id`'s live leases and tickets on every host."""
    found = []
    for h in spec.hosts:
        snap = hs.snapshot(spec.state_dir(h))
        found += [(h.name, "lease") for x in snap["leases"] if x["job"] == job_id]
        found += [(h.name, "ticket") for x in snap["queue"] if x["job"] == job_id]
    return sorted(found)


def other_lease(spec, host, job, devices, key=None):
    return hs.try_acquire(spec.state_dir(spec.host(host)), hs.Request(job, devices=devices, key=key))


def test_without_wait_a_busy_host_releases_what_was_taken_and_names_the_holder(cluster):
    other = other_lease(cluster, "b", "other", [2])
    try:
        driver = leases_for(cluster, "mine")
        with pytest.raises(LeaseUnavailable) as failed:
            driver.acquire(cluster.hosts)
        text = str(failed.value)
        assert text.startswith("devices 0, 1, 2, 3 on b are not free: devices 2 held by job other of ")
        assert text.endswith("(give --wait to queue for them)")
        assert held(cluster, "mine") == [] and driver.held == []
        # a ticket everywhere, then every host tried at once: a and c were taken, then given back
        assert [agent.ops[:2] for agent in driver.fake_agents.values()] == [["ticket", "lease"]] * 3
    finally:
        other.release()


def test_waiting_takes_every_host_once_the_holder_is_gone_and_says_its_place_once_per_change(cluster):
    other = other_lease(cluster, "c", "other", [0])
    out = io.StringIO()
    driver = leases_for(cluster, "mine", wait_s=math.inf, out=out)
    threading.Timer(0.4, other.release).start()
    driver.acquire(cluster.hosts)
    assert held(cluster, "mine") == [("a", "lease"), ("b", "lease"), ("c", "lease")]
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("refinenet-launch: waiting for c (place 1 in its queue): devices 0 held by "
                               "job other of ")
    assert lines[1] == "refinenet-launch: leases taken on 3 host(s) after 0 s in line"
    summary = driver.summary()
    assert summary["key"] <= summary["queued"] < summary["granted"]
    assert summary["hosts"] == {n: {"devices": [0, 1, 2, 3]} for n in "abc"}
    for agent in driver.fake_agents.values():
        agent.close()


def test_a_wait_that_runs_out_leaves_nothing_held_and_names_what_it_waited_for(cluster):
    other = other_lease(cluster, "a", "other", [3])
    try:
        driver = leases_for(cluster, "mine", wait_s=0.3)
        began = time.monotonic()
        with pytest.raises(LeaseUnavailable) as failed:
            driver.acquire(cluster.hosts)
        assert time.monotonic() - began < 5
        assert str(failed.value).startswith("waited 0.3 s for devices 0, 1, 2, 3 on a (devices 3 held by job "
                                            "other of ")
        assert str(failed.value).endswith("; nothing is held")
        assert held(cluster, "mine") == []
    finally:
        other.release()


def test_taking_a_host_again_keeps_the_jobs_place_before_a_later_waiter(cluster):
    driver = leases_for(cluster, "mine")
    driver.acquire([cluster.host("a")])
    first_key = driver.key
    driver.fake_agents["a"].close()  # the agent is lost: its lease goes with it
    later = hs.register(cluster.state_dir(cluster.host("a")), hs.Request("later", devices=[1],
                                                                           key=first_key + 5))
    try:
        driver.fake_agents.clear()
        driver.take(cluster.host("a"), again=True, wait_s=0.5)
        assert held(cluster, "mine") == [("a", "lease")]
        lease = next(x for x in hs.snapshot(cluster.state_dir(cluster.host("a")))["leases"])
        assert lease["key"] == first_key
    finally:
        later.release()
        driver.fake_agents["a"].close()


def test_taking_a_host_again_waits_for_the_previous_lease_to_end(cluster):
    driver = leases_for(cluster, "mine")
    driver.key = 100.0
    previous = other_lease(cluster, "b", "mine", [0, 1, 2, 3], key=100.0)  # its last process is ending
    threading.Timer(0.3, previous.release).start()
    began = time.monotonic()
    driver.take(cluster.host("b"), again=True, wait_s=5)
    assert 0.25 < time.monotonic() - began < 4
    assert held(cluster, "mine") == [("b", "lease")]
    driver.fake_agents["b"].close()


def test_a_host_held_by_another_job_refuses_the_take_after_the_wait_naming_it(cluster):
    driver = leases_for(cluster, "mine")
    driver.key = time.time()
    other = other_lease(cluster, "c", "other", [1])
    try:
        with pytest.raises(LeaseRefused) as refused:
            driver.take(cluster.host("c"), again=True, wait_s=0.3)
        assert refused.value.host == "c"
        assert "cannot take the job's lease there: devices 1 held by job other of " in refused.value.cause
        assert held(cluster, "mine") == []
    finally:
        other.release()


def test_a_cordoned_host_is_taken_again_by_its_job_but_not_by_a_spare(cluster):
    hs.cordon(cluster.state_dir(cluster.host("a")), "fan swap")
    driver = leases_for(cluster, "mine")
    driver.key = time.time()
    with pytest.raises(LeaseRefused) as refused:
        driver.take(cluster.host("a"), wait_s=5)
    assert "fan swap" in refused.value.cause
    driver.take(cluster.host("a"), again=True, wait_s=0.5)
    assert held(cluster, "mine") == [("a", "lease")]
    driver.fake_agents["a"].close()


def test_an_agent_started_again_whose_lease_is_refused_is_not_kept(monkeypatch, cluster):
    started = []

    def start_agent(transport, python, job):
        agent = FakeAgent(job["host"])
        agent.alive = True
        started.append(agent)
        return agent

    monkeypatch.setattr("launcher.agent.pool.start_agent", start_agent)
    pool = AgentPool("mine", cluster.hosts, {h.name: FakeTransport(h.name) for h in cluster.hosts})

    def refuse(name, agent):
        raise LeaseRefused(name, "cannot take the job's lease there: devices 0 held by job other")

    pool.on_restart = refuse
    with pytest.raises(LeaseRefused):
        pool.agent("a")
    assert started[0].closed and not pool.live("a") and "a" not in pool.transports
    with pytest.raises(LeaseRefused):
        pool.agent("a")  # tried again, never handed out without its lease
    assert len(started) == 2 and started[1].closed
