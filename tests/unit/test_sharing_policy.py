"""Sharing policies without processes: queue order, all-or-nothing over hosts, bad-host cooldown, cordon."""
import random

import pytest

from launcher.sharing.policy import (
    Action,
    BadHostSettings,
    ExclusionRecord,
    HostAnswer,
    InvalidTransition,
    MultiHostAcquisition,
    Outcome,
    Phase,
    cooldown_s,
    host_order,
    judge_host,
    queue_key,
)

HOUR = 3600.0


# -- queue order

def test_queue_orders_by_wait_start_then_job_id():
    keys = [queue_key(20.0, "b"), queue_key(10.0, "z"), queue_key(20.0, "a")]
    assert [(k.wait_start, k.job) for k in sorted(keys)] == [(10.0, "z"), (20.0, "a"), (20.0, "b")]


def test_a_launch_without_wait_comes_after_everyone_waiting():
    waiting = [queue_key(100.0, "j1"), queue_key(105.0, "j2")]
    now = queue_key(110.0, "j0")
    assert all(w < now for w in waiting)


def test_queue_key_rejects_nonsense():
    with pytest.raises(ValueError):
        queue_key(float("nan"), "j")
    with pytest.raises(ValueError):
        queue_key(1.0, "")


def test_host_order_is_one_global_order():
    assert host_order(["n3", "n1", "n2", "n1"]) == ("n1", "n2", "n3")
    assert host_order(["n2", "n1"]) == host_order(["n1", "n2"])


# -- all or nothing

def granted(host):
    return HostAnswer(host, Outcome.GRANTED)


def refused(host, why="busy"):
    return HostAnswer(host, Outcome.REFUSED, why)


def answers(step, refusals=()):
    """Every host of a TRY step granted, but those in `refusals` (host -> HostAnswer)."""
    found = dict(refusals)
    return [found.get(host, granted(host)) for host in step.hosts]


def test_acquisition_registers_then_tries_every_host_at_once_in_global_order():
    acq = MultiHostAcquisition(["b", "c", "a"], wait=True)
    step = acq.start()
    assert (step.action, step.hosts) == (Action.REGISTER, ("a", "b", "c"))
    step = acq.registered()
    assert (step.action, step.hosts) == (Action.TRY, ("a", "b", "c"))
    step = acq.answers(answers(step))
    assert (step.action, step.hosts, acq.phase) == (Action.DONE, ("a", "b", "c"), Phase.GRANTED)


def test_refusal_releases_what_was_taken_waits_there_then_tries_all_again():
    acq = MultiHostAcquisition(["a", "b", "c"], wait=True)
    acq.start()
    step = acq.registered()
    step = acq.answers(answers(step, {"b": refused("b", "held by job x")}))
    assert (step.action, step.hosts, step.release) == (Action.WAIT, ("b",), ("a", "c"))
    assert acq.phase == Phase.WAITING and acq.taken == [] and acq.blocker.reason == "held by job x"
    step = acq.ready("b")
    assert (step.action, step.hosts, acq.rounds) == (Action.TRY, ("a", "b", "c"), 2)
    step = acq.answers(answers(step))
    assert step.action == Action.DONE and acq.taken == ["a", "b", "c"]


def test_the_first_refusing_host_in_order_is_waited_on():
    acq = MultiHostAcquisition(["a", "b", "c"], wait=True)
    acq.start()
    step = acq.registered()
    step = acq.answers(answers(step, {"c": refused("c"), "b": refused("b")}))
    assert (step.action, step.hosts, step.release) == (Action.WAIT, ("b",), ("a",))


def test_refusal_everywhere_releases_nothing():
    acq = MultiHostAcquisition(["a", "b"], wait=True)
    acq.start()
    step = acq.registered()
    step = acq.answers([refused("a"), refused("b")])
    assert (step.action, step.hosts, step.release) == (Action.WAIT, ("a",), ())


def test_without_wait_tickets_too_and_a_refusal_fails_releasing_all():
    acq = MultiHostAcquisition(["a", "b", "c"], wait=False)
    step = acq.start()
    assert (step.action, step.hosts) == (Action.REGISTER, ("a", "b", "c"))
    step = acq.registered()
    step = acq.answers(answers(step, {"c": refused("c", "waiting behind job y")}))
    assert (step.action, step.release, acq.phase) == (Action.FAIL, ("a", "b"), Phase.FAILED)
    assert step.reason == "c: waiting behind job y"


@pytest.mark.parametrize("outcome", [Outcome.CORDONED, Outcome.ERROR])
def test_cordoned_or_broken_host_fails_even_when_waiting(outcome):
    acq = MultiHostAcquisition(["a", "b", "c"], wait=True)
    acq.start()
    step = acq.registered()
    broken = HostAnswer("c", outcome, "host cordoned: fan")
    step = acq.answers(answers(step, {"a": refused("a"), "c": broken}))
    assert (step.action, step.release, acq.phase) == (Action.FAIL, ("b",), Phase.FAILED)
    assert step.reason == "c: host cordoned: fan" and acq.blocker.host == "c"


def test_failed_registration_fails_the_launch():
    acq = MultiHostAcquisition(["a", "b"], wait=True)
    acq.start()
    step = acq.registered({"b": "unreachable"})
    assert (step.action, step.release, step.reason) == (Action.FAIL, (), "b: unreachable")


def test_cancel_releases_what_is_held():
    acq = MultiHostAcquisition(["a", "b", "c"], wait=True)
    acq.start()
    step = acq.registered()
    acq.answers(answers(step, {"b": refused("b")}))
    acq.ready("b")
    step = acq.cancel("Ctrl-C")
    assert (step.action, step.release, step.reason, acq.phase) == (Action.FAIL, (), "Ctrl-C", Phase.CANCELLED)
    with pytest.raises(InvalidTransition):
        acq.cancel()


def test_events_out_of_turn_are_driver_bugs():
    acq = MultiHostAcquisition(["a", "b"], wait=True)
    with pytest.raises(InvalidTransition):
        acq.answers([granted("a"), granted("b")])
    acq.start()
    with pytest.raises(InvalidTransition):
        acq.ready("a")
    step = acq.registered()
    with pytest.raises(InvalidTransition):
        acq.answers([granted("a")])  # one answer missing
    acq.answers(answers(step, {"b": refused("b")}))
    with pytest.raises(InvalidTransition):
        acq.ready("a")  # it waits on b
    with pytest.raises(ValueError):
        MultiHostAcquisition([], wait=False)


def test_answer_from_a_host_report():
    assert HostAnswer.from_report("a", {"state": "granted", "reason": "granted"}).outcome == Outcome.GRANTED
    assert HostAnswer.from_report("a", {"state": "queued", "reason": "behind j"}).outcome == Outcome.REFUSED
    assert HostAnswer.from_report("a", {"state": "ending", "reason": "r"}).outcome == Outcome.REFUSED
    assert HostAnswer.from_report("a", {"state": "cordoned", "reason": "c"}).outcome == Outcome.CORDONED


@pytest.mark.parametrize("seed", range(40))
def test_jobs_driven_against_shared_hosts_in_any_interleaving_all_finish(seed):
    """Three launches over overlapping hosts, steps interleaved at random, hosts granting by the queue
    rule (free and no earlier ticket there) to a launch trying all its hosts at once: every launch gets
    all its hosts, none is ever half-held while waiting."""
    rng = random.Random(seed)
    needs = {"x": ["h1", "h2"], "y": ["h2", "h1", "h3"], "z": ["h3", "h1"]}
    keys = {"x": 1.0, "y": 2.0, "z": 3.0}
    tickets = {h: set() for h in ("h1", "h2", "h3")}
    holder, running, finished = {}, {}, []
    acqs = {job: MultiHostAcquisition(hosts, wait=True) for job, hosts in needs.items()}
    steps = {job: acq.start() for job, acq in acqs.items()}
    for _ in range(2000):
        active = [j for j in acqs if j not in finished]
        if not active:
            break
        job = rng.choice(active)
        if job in running:  # holding everything: run a few turns, then finish
            running[job] -= 1
            if not running[job]:
                for host in needs[job]:
                    del holder[host]
                    tickets[host].discard(job)
                finished.append(job)
            continue
        step, acq = steps[job], acqs[job]
        for host in step.release:
            assert holder.pop(host) == job
        if step.action == Action.REGISTER:
            for host in step.hosts:
                tickets[host].add(job)
            steps[job] = acq.registered()
        elif step.action == Action.TRY:
            got = []
            for host in rng.sample(step.hosts, len(step.hosts)):  # the hosts answer in any order
                earlier = [o for o in tickets[host] if keys[o] < keys[job] and holder.get(host) != o]
                if host not in holder and not earlier:
                    holder[host] = job
                    got.append(granted(host))
                else:
                    got.append(refused(host))
            steps[job] = acq.answers(got)
        elif step.action == Action.WAIT:
            assert job not in holder.values()  # never holds a host while it waits
            steps[job] = acq.ready(step.hosts[0])
        else:
            assert step.action == Action.DONE and all(holder[h] == job for h in needs[job])
            running[job] = rng.randint(1, 5)
    assert sorted(finished) == ["x", "y", "z"]


# -- bad hosts

def rec(t, job="j", reason="rank 0 hung"):
    return ExclusionRecord(time=t, reason=reason, job=job)


def test_cooldown_grows_exponentially_and_is_capped():
    s = BadHostSettings(cooldown_base_s=60, cooldown_factor=3, cooldown_cap_s=1000)
    assert [cooldown_s(n, s) for n in (1, 2, 3, 4, 5)] == [60, 180, 540, 1000, 1000]
    assert cooldown_s(10_000, s) == 1000
    with pytest.raises(ValueError):
        cooldown_s(0, s)


def test_a_host_is_skipped_during_its_cooldown_then_used_again():
    s = BadHostSettings()
    v = judge_host("n1", [rec(1000.0)], now=1000.0 + 60, settings=s)
    assert v.skipped and v.skip_until == 1000.0 + 600 and v.remaining_s == 540 and not v.cordon
    assert not judge_host("n1", [rec(1000.0)], now=1000.0 + 601, settings=s).skipped
    assert not judge_host("n1", [], now=5.0, settings=s).skipped


def test_repeated_exclusions_in_the_window_double_the_cooldown():
    s = BadHostSettings(cordon_after=0)
    v = judge_host("n1", [rec(0.0), rec(HOUR)], now=HOUR, settings=s)
    assert v.skip_until == HOUR + 1200
    # the first one fell out of the window before the second: a fresh start
    v = judge_host("n1", [rec(0.0), rec(30 * HOUR)], now=30 * HOUR, settings=s)
    assert v.skip_until == 30 * HOUR + 600


def test_k_exclusions_within_the_window_cordon_the_host_with_the_reason():
    s = BadHostSettings(cordon_after=3, window_s=24 * HOUR)
    records = [rec(0.0, "j1"), rec(2 * HOUR, "j2"), rec(5 * HOUR, "j3", "device 4 unhealthy")]
    v = judge_host("n1", records[:2], now=2 * HOUR, settings=s)
    assert not v.cordon and v.recent == 2
    v = judge_host("n1", records, now=5 * HOUR, settings=s)
    assert v.cordon and v.recent == 3
    assert v.reason == "excluded 3 times in the last 24 h (last: job j3: device 4 unhealthy)"
    # the same records a day later no longer call for a cordon
    assert not judge_host("n1", records, now=26 * HOUR, settings=s).cordon


def test_cordon_after_zero_never_cordons():
    s = BadHostSettings(cordon_after=0)
    assert not judge_host("n1", [rec(float(t)) for t in range(10)], now=10.0, settings=s).cordon


def test_exclusion_records_read_from_a_host_snapshot():
    r = ExclusionRecord.from_json({"action": "record", "by": "alice", "uid": 1001, "time": 12.5, "seq": 3,
                                   "reason": "unreachable", "job": "j9"})
    assert r == ExclusionRecord(12.5, "unreachable", "j9", "alice")


@pytest.mark.parametrize("bad", [dict(cooldown_base_s=-1), dict(cooldown_factor=0.5),
                                 dict(cooldown_cap_s=1, cooldown_base_s=10), dict(cordon_after=-1),
                                 dict(cordon_after=True), dict(window_s=0)])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        BadHostSettings(**bad)
