"""The attempt model alone: scripted event sequences with times, no processes, threads or sleeps."""
from __future__ import annotations

import signal

from launcher.attempt import Attempt
from launcher.backends.registry import backend_for
from launcher.spec.load import parse_cluster
from launcher.states import JobState, RankState
from tests.harness.specs import factory_of, failure, plan_of, spec_of


def attempt(backend: str = "dynamic", ranks: int = 1) -> Attempt:
    plan = plan_of(spec_of(backend=backend, ranks=ranks, port=8118), "r1", attempt=1)
    a = Attempt(1, plan, backend_for(backend))
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


# --- the restart loop with scripted attempt results: no agents, threads or sleeps ---------------


def scripted_supervisor(tmp_path, results, max_restarts=2, spares=()):
    from unittest import mock

    from launcher.exclusion import HostPool
    from launcher.jobs import JobDir
    from launcher.supervisor import AttemptResult, Supervisor

    data = {"name": "s", "backend": "dynamic", "device": "cpu",
            "hosts": [{"name": h, "address": f"10.0.0.{i + 1}", "ranks": 1, "ssh": {}, "workdir": "/w"}
                      for i, h in enumerate("ab")],
            "spares": [{"name": s, "address": f"10.0.1.{i + 1}", "ranks": 1, "ssh": {}, "workdir": "/w"}
                       for i, s in enumerate(spares)],
            "master": {"port": 9000}, "job": {"data": "d.txt"},
            "restart": {"max_restarts": max_restarts, "backoff_s": 1, "backoff_max_s": 3}}
    spec = parse_cluster(data, "s.yaml")
    job = JobDir.create(tmp_path / "runs", cluster="s", stage="r1", spec=data)
    factory = factory_of(spec, "r1", str(job.path), job.job_id)
    waits = []
    logs = mock.Mock()
    pool = HostPool(spec, list(spec.spares)) if spares else None
    sup = Supervisor(factory, job, mock.Mock(), logs, out=mock.Mock(), wait=lambda s: waits.append(s),
                     pool=pool)

    def run_attempt(number):
        state, failure = results[number - 1]
        job.begin_attempt(None)
        job.set_state(JobState.RUNNING)
        return AttemptResult(number, state, failure, None, 0.0, {"failed": 0.0})

    sup.run_attempt = mock.Mock(side_effect=run_attempt)
    return sup, job, waits


def test_restarts_are_counted_with_backoff_until_success(tmp_path):

    boom = failure(1, "b", 1, time=1.0)
    sup, job, waits = scripted_supervisor(tmp_path, [(JobState.FAILED, boom), (JobState.FAILED, boom),
                                                     (JobState.SUCCEEDED, None)])
    assert sup.run() == JobState.SUCCEEDED
    assert sup.run_attempt.call_count == 3 and waits == [1, 2] and sup.restarts_used == 2
    assert [a.state for a in job.read().attempts] == [JobState.FAILED, JobState.FAILED, JobState.SUCCEEDED]


def test_the_restart_limit_and_bad_input_end_the_job(tmp_path):

    sup, job, waits = scripted_supervisor(tmp_path, [(JobState.FAILED, failure(0, "a", 1))] * 2,
                                          max_restarts=1)
    assert sup.run() == JobState.FAILED and waits == [1] and "1 of 1 used" in job.read().message
    bad_input = failure(0, "a", 2)
    sup, job, waits = scripted_supervisor(tmp_path / "2", [(JobState.FAILED, bad_input)])
    assert sup.run() == JobState.FAILED and waits == [] and "not restarted" in job.read().message


def test_a_host_without_a_spare_to_replace_it_ends_the_job_naming_it(tmp_path):

    boom = failure(1, "b", 1, time=1.0)
    sup, job, _ = scripted_supervisor(tmp_path, [(JobState.FAILED, boom)] * 2 + [(JobState.SUCCEEDED, None)],
                                      max_restarts=5, spares=("c",))
    assert sup.run() == JobState.SUCCEEDED
    assert [h.name for h in sup.spec.hosts] == ["a", "c"] and job.read().hosts["b"]["state"] == "excluded"
    other = failure(1, "c", 1, time=2.0)
    failures = [(JobState.FAILED, f) for f in (boom, boom, other, other)]
    sup, job, _ = scripted_supervisor(tmp_path / "2", failures, max_restarts=5, spares=("c",))
    assert sup.run() == JobState.FAILED and sup.run_attempt.call_count == 4
    message = job.read().message
    assert "no spare is left" in message and "b: root cause" in message and "c: root cause" in message
