"""Which failures count against a host, when it is excluded, and which spare takes its ranks. No processes."""
from __future__ import annotations

from functools import partial

import pytest

from launcher.errors import BadInput, ClusterFileError
from launcher.exclusion import HostPool, HostTracker, NoSpareLeft, replace_host
from launcher.failures import FailureKind
from launcher.placement import place
from launcher.spec.load import parse_cluster
from tests.harness.specs import failure, spec_of

#: SSH hosts a and b (10.0.0.1, .2) and spare c (10.0.0.3), each in /w/<name>, the master on b.
spec = partial(spec_of, spares=("c",), workdir="/w/{name}", master={"host": "b", "port": 9000}, job=None)


def fail(host, code=1, kind=FailureKind.EXIT, rank=1):
    return failure(rank, host, code, kind=FailureKind(kind), reason=f"exit code {code}")


def test_a_host_is_excluded_after_being_the_root_cause_that_many_times_in_a_row():
    tracker = HostTracker(exclude_after=2)
    assert tracker.observe(fail("b")) is None
    assert tracker.observe(fail("a")) is None        # another host: b's streak is over
    assert tracker.observe(fail("b")) is None
    exclusion = tracker.observe(fail("b"))
    assert exclusion.host == "b" and "2 failed attempts in a row" in exclusion.reason
    assert "rank 1: exit code 1" in exclusion.reason


def test_bad_input_never_counts_and_a_clean_attempt_resets():
    tracker = HostTracker(exclude_after=1)
    assert tracker.observe(fail("b", code=2)) is None
    assert tracker.observe(None) is None
    assert HostTracker(exclude_after=0).observe(fail("b")) is None
    assert tracker.observe(fail("b", code=3)).host == "b"


def test_a_lease_held_by_another_job_never_counts_against_the_host():
    tracker = HostTracker(exclude_after=1)
    assert tracker.observe(fail("b", kind=FailureKind.LEASE)) is None
    assert tracker.observe(fail("b", kind=FailureKind.LEASE)) is None
    assert tracker.streak == {}


@pytest.mark.parametrize("kind", ["device", "unreachable"])
def test_a_broken_host_is_excluded_at_once(kind):
    exclusion = HostTracker(exclude_after=5).observe(fail("a", kind=kind))
    assert exclusion.host == "a" and exclusion.reason.startswith(("unhealthy device", "unreachable"))


def test_a_spare_takes_the_hosts_place_ranks_and_master():
    s = spec()
    new, spare = replace_host(s, "b", list(s.spares))
    assert [h.name for h in new.hosts] == ["a", "c"] and spare.name == "c"
    assert (new.master.host, new.master.addr) == ("c", "10.0.0.3")
    assert [(slot.rank, slot.host) for slot in place(new)] == [(0, "a"), (1, "c")]


def test_the_pool_records_states_and_ends_with_no_spare_left():
    s = spec()
    pool = HostPool(s, list(s.spares))
    assert pool.states()["c"]["state"] == "spare"
    pool.exclude("b", "root cause of 2 failed attempts in a row")
    states = pool.states()
    assert states["b"] == {"state": "excluded", "reason": "root cause of 2 failed attempts in a row",
                           "replaced_by": "c"}
    assert states["c"]["state"] == "active" and states["a"]["state"] == "active"
    with pytest.raises(NoSpareLeft) as err:
        pool.exclude("a", "unreachable: connection refused")
    assert "b: root cause" in str(err.value) and "a: unreachable" in str(err.value)


def test_a_spare_needs_as_many_ranks():
    s = spec(ranks=2)
    small = parse_cluster({"name": "t", "backend": "dynamic", "device": "cpu",
                           "hosts": [{"name": "a", "ranks": 2, "workdir": "/w"}],
                           "spares": [{"name": "c", "address": "10.0.0.9", "ranks": 1, "ssh": {},
                                       "workdir": "/c"}]}, "t.yaml")
    with pytest.raises(NoSpareLeft):
        HostPool(small, list(small.spares)).exclude("a", "x")
    assert HostPool(s, list(s.spares)).exclude("a", "x").name == "c"


def test_spares_are_validated_like_hosts():
    with pytest.raises(ClusterFileError, match=r"spares\[0\].name.*also a host"):
        parse_cluster({"name": "t", "backend": "dynamic", "device": "cpu",
                       "hosts": [{"name": "a", "ranks": 1}], "spares": [{"name": "a", "ranks": 1}]}, "t.yaml")
    with pytest.raises(ClusterFileError, match=r"spares\[1\].name: duplicate host 'b' \(also spares\[0\]\)"):
        parse_cluster({"name": "t", "backend": "dynamic", "device": "cpu",
                       "hosts": [{"name": "a", "ranks": 1}],
                       "spares": [{"name": "b", "ranks": 1}, {"name": "b", "ranks": 1}]}, "t.yaml")
    with pytest.raises(ClusterFileError, match=r"spares\[0\].workdir: backend mpirun"):
        parse_cluster({"name": "t", "backend": "mpirun", "device": "cpu",
                       "hosts": [{"name": "a", "ranks": 1, "workdir": "/w"}],
                       "spares": [{"name": "b", "address": "10.0.0.9", "ranks": 1, "workdir": "/x"}]},
                      "t.yaml")
    with pytest.raises(ClusterFileError, match=r"restart.exclude_after"):
        spec(restart={"exclude_after": -1})
    with pytest.raises(ClusterFileError, match=r"spares: expected a list"):
        parse_cluster({"name": "t", "backend": "dynamic", "device": "cpu",
                       "hosts": [{"name": "a", "ranks": 1}], "spares": {"name": "b"}}, "t.yaml")


def test_exclude_host_on_the_command_line(tmp_path):

    from launcher.planning.prepare import prepare
    from launcher.planning.request import LaunchRequest

    path = tmp_path / "c.yaml"
    path.write_text("name: c\nbackend: dynamic\ndevice: cpu\nhosts:\n  - {name: a, ranks: 1}\n"
                    "  - {name: b, address: 127.0.0.3, ranks: 1, ssh: {}, workdir: /b}\n"
                    "spares:\n  - {name: s, address: 127.0.0.4, ranks: 1, ssh: {}, workdir: /s}\n")

    def args(*exclude):
        return LaunchRequest(cluster=str(path), stages=("r1",), settings=("data=d.txt",), job_id="j",
                             runs_dir=str(tmp_path), exclude_hosts=tuple(exclude))

    prepared = prepare(args("b"))
    assert [s.host for s in prepared.factory.slots] == ["a", "s"]
    assert prepared.pool.excluded == {"b": "excluded by --exclude-host"}
    with pytest.raises(BadInput, match="not a host"):
        prepare(args("zz"))
    with pytest.raises(BadInput, match="no spare is left"):
        prepare(args("a", "b"))
