"""The attempt model alone: scripted event sequences with times, no processes, threads or sleeps."""
from __future__ import annotations

import signal

from launcher.attempt import Attempt
from launcher.backends import backend_for
from launcher.placement import place
from launcher.render import render_plan
from launcher.spec import parse_cluster
from launcher.states import JobState, RankState


def attempt(backend: str = "dynamic", ranks: int = 1) -> Attempt:
    spec = parse_cluster({"name": "t", "backend": backend, "device": "cpu", "master": {"port": 8118},
                          "hosts": [{"name": h, "address": f"10.0.0.{i + 1}", "ranks": ranks, "ssh": {},
                                     "workdir": "/w"} for i, h in enumerate("ab")],
                          "job": {"data": "d.txt"}}, "t.yaml")
    plan = render_plan(spec, place(spec), "r1", "/jobs/j", job_id="j", attempt=1)
    a = Attempt(1, plan, backend_for(backend).carries_ranks)
    for i, name in enumerate(a.members):
        a.started(name, 100 + i, 100 + i, 0.0)
    return a


def test_all_ranks_succeeding_ends_the_attempt_while_the_scheduler_still_runs():
    a = attempt()
    a.exited("r0", 0, 5.0)
    assert a.outcome is None
    a.exited("r1", 0, 6.0)
    assert a.outcome == JobState.SUCCEEDED and a.root_cause is None
    a.close_decision()
    a.exited("scheduler", -signal.SIGTERM, 7.0)
    assert a.members["scheduler"].state == RankState.STOPPED


def test_the_earliest_failure_is_the_root_cause_and_later_exits_are_the_teardowns():
    a = attempt()
    a.exited("r1", -9, 1.0)
    assert a.outcome == JobState.FAILED
    a.close_decision()
    a.exited("scheduler", 1, 1.3)
    a.exited("r0", 1, 1.4)
    cause = a.root_cause
    assert (cause.rank, cause.host, cause.signal, cause.time) == (1, "b", 9, 1.0)
    assert a.members["r0"].state == RankState.STOPPED and a.members["r1"].state == RankState.FAILED


def test_among_failures_that_arrived_together_a_signalled_rank_wins():
    a = attempt()
    a.exited("scheduler", 1, 1.0)
    a.exited("r0", 3, 1.05)
    a.exited("r1", -9, 1.1)
    cause = a.root_cause
    assert (cause.rank, cause.signal) == (1, 9)


def test_a_scheduler_failing_alone_is_named_as_the_scheduler():
    a = attempt()
    a.exited("scheduler", 7, 2.0)
    cause = a.root_cause
    assert cause.rank is None and str(cause) == "the scheduler on a: exit code 7"


def test_a_hang_and_a_lost_host_fail_the_attempt_with_their_rank():
    a = attempt()
    a.hung("r1", 31.0, 30.0, 40.0)
    assert a.outcome == JobState.FAILED
    assert "no progress for 31 s" in a.root_cause.reason and a.root_cause.rank == 1
    b = attempt()
    b.host_lost("b", "the connection closed", 3.0)
    assert b.root_cause.rank == 1 and "lost the connection to b" in b.root_cause.reason
    assert b.members["r1"].state == RankState.FAILED


def test_msrun_blames_its_hosts_first_rank_and_a_stop_ends_stopped():
    a = attempt("msrun", ranks=2)
    a.exited("msrun-b", 1, 2.0)
    assert a.root_cause.rank == 2
    s = attempt()
    s.stop()
    s.exited("r0", -15, 1.0)
    assert s.outcome == JobState.STOPPED and s.root_cause is None
    assert {m.name for m in [x.spec for x in s.mark_stopped(2.0)]} == {"scheduler", "r1"}
