"""The host state in one process, on real files and real flock()s: the grant rule, the queue, slots,
cordon and exclusion records, malformed or unsafe state, the short commands."""
import fcntl
import json
import os
import stat
import threading
import time

import pytest

from launcher.hostside import hoststate as hs
from launcher.hostside.hoststate import Request


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "state")


def req(job, devices=(), key=None, **kw):
    return Request(job, devices=list(devices), key=key, **kw)


def names(state, prefix):
    return sorted(n for n in os.listdir(state) if n.startswith(prefix))


def hold_file(path, content):
    """A file in the state directory whose lock this test holds: a live record written by hand."""
    with open(path, "w") as f:
        f.write(content)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_state_dir_is_created_sticky_and_world_writable(tmp_path):
    state = tmp_path / "a" / "b" / "state"
    with hs.acquire(str(state), req("j1", [0])):
        assert stat.S_IMODE(state.stat().st_mode) == 0o1777
        lease_file, = names(state, "lease.")
        assert stat.S_IMODE((state / lease_file).stat().st_mode) == 0o644


def test_reading_a_missing_state_dir_creates_nothing(state):
    snap = hs.snapshot(state)
    assert snap["state_dir"]["exists"] is False and snap["leases"] == [] and snap["queue"] == []
    assert hs.check(state, req("j1", [0]))["granted"]
    assert not os.path.exists(state)


def test_unsafe_state_dirs_are_refused_naming_the_path(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(hs.StateError, match="not sticky") as e:
        hs.acquire(str(loose), req("j1", [0]))
    assert e.value.path == str(loose)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir(mode=0o1777)
    with pytest.raises(hs.StateError, match="symbolic link"):
        hs.snapshot(str(link))
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(hs.StateError, match="not a directory"):
        hs.cordon(str(plain), "why")


# -- the grant rule

def test_devices_are_exclusive_and_disjoint_requests_share_the_host(state):
    with hs.acquire(state, req("j1", [0, 1], launcher="laptop", launcher_pid=42)) as lease:
        with pytest.raises(hs.Refused) as e:
            hs.acquire(state, req("j2", [1, 2]))
        report = e.value.report
        assert report["state"] == "busy" and report["place"] == 1
        holder, = report["holders"]
        assert (holder["job"], holder["devices"], holder["pid"], holder["launcher"]) == (
            "j1", [0, 1], os.getpid(), "laptop")
        assert holder["since"] == lease.record["since"]
        with hs.acquire(state, req("j3", [2, 3])):
            assert sorted(x["job"] for x in hs.snapshot(state)["leases"]) == ["j1", "j3"]
    assert hs.snapshot(state)["leases"] == [] and names(state, "lease.") == []


def test_an_earlier_ticket_blocks_overlapping_later_requests_only(state):
    with hs.acquire(state, req("holder", [0])), hs.register(state, req("early", [0, 1], key=10.0)):
        later = hs.check(state, req("late", [1], key=20.0))
        assert (later["state"], later["place"]) == ("queued", 2)
        assert [t["job"] for t in later["waiting_for"]] == ["early"]
        assert hs.check(state, req("late", [2], key=20.0))["granted"]   # disjoint: may go first
        assert hs.check(state, req("earlier", [1], key=5.0))["granted"]  # ahead of the ticket
        # without a key (no --wait) a request counts as taken now: behind every ticket
        assert hs.check(state, req("now", [1]))["state"] == "queued"
        with pytest.raises(hs.Refused):
            hs.acquire(state, req("now", [1]))


def test_the_queue_is_ordered_by_key_then_job_not_by_arrival(state):
    tickets = [hs.register(state, req(job, [0], key=key)) for job, key in
               (("c", 30.0), ("b", 10.0), ("a", 10.0), ("d", 20.0))]
    try:
        assert [t["job"] for t in hs.snapshot(state)["queue"]] == ["a", "b", "d", "c"]
        report = hs.check(state, req("d", [0], key=20.0))
        assert [t["job"] for t in report["waiting_for"]] == ["a", "b"] and report["place"] == 3
    finally:
        for t in tickets:
            t.release()
    assert names(state, "ticket.") == []


def test_own_ticket_does_not_block_and_a_job_holding_here_reserves_nothing(state):
    with hs.register(state, req("j1", [0, 1], key=1.0)) as ticket:
        lease = hs.acquire(state, req("j1", [0, 1]), ticket=ticket)
        # j1 now holds its lease here while (say) waiting elsewhere: its ticket reserves nothing more
        assert hs.check(state, req("j2", [2], key=2.0))["granted"]
        lease.release()


def test_slots_fit_the_capacity_and_earlier_tickets_keep_theirs(state):
    def slots(job, n, key=None):
        return Request(job, slots=n, capacity=8, key=key)

    with hs.acquire(state, slots("a", 4)):
        assert hs.check(state, slots("b", 4))["granted"]
        assert hs.check(state, slots("b", 5))["state"] == "busy"
        with hs.register(state, slots("w", 3, key=1.0)):
            assert hs.check(state, slots("late", 1, key=2.0))["granted"]       # 4 + 3 + 1 <= 8
            late = hs.check(state, slots("late", 2, key=2.0))                  # 4 + 3 + 2 > 8
            assert late["state"] == "queued" and [t["job"] for t in late["waiting_for"]] == ["w"]
            assert hs.check(state, slots("early", 2, key=0.5))["granted"]       # ahead of w


def test_cordon_refuses_new_leases_until_cleared_by_anyone(state):
    with pytest.raises(hs.RequestError, match="why"):
        hs.cordon(state, "")
    cordon = hs.cordon(state, "PSU replaced, burn-in first")
    assert cordon["cordoned"] and cordon["by"] == "root" and cordon["why"].startswith("PSU")
    with pytest.raises(hs.Refused) as e:
        hs.acquire(state, req("j1", [0]), wait=True)  # waiting does not help: refused at once
    assert e.value.report["state"] == "cordoned" and "PSU replaced" in str(e.value)
    assert names(state, "ticket.") == []
    with hs.acquire(state, req("j1", [0]), allow_cordoned=True):
        pass
    assert hs.uncordon(state, "burn-in passed")["cordoned"] is False
    with hs.acquire(state, req("j1", [0])):
        pass
    assert len(names(state, "cordon.")) == 1  # superseded records are tidied away


def test_exclusion_records_are_kept_until_cleared(state):
    hs.record_exclusion(state, "rank 3: exit code 1", "job-a")
    records = hs.record_exclusion(state, "device 2 unhealthy", "job-b")
    assert [(r["job"], r["reason"], r["by"]) for r in records] == [
        ("job-a", "rank 3: exit code 1", "root"), ("job-b", "device 2 unhealthy", "root")]
    assert records[0]["time"] <= records[1]["time"] <= time.time()
    assert hs.clear_exclusions(state, "repaired") == 2
    assert hs.exclusions(state) == [] and hs.snapshot(state)["exclusions"] == []
    hs.record_exclusion(state, "unreachable", "job-c")
    assert [r["job"] for r in hs.exclusions(state)] == ["job-c"]
    assert len(names(state, "exclusion.")) == 2  # the last clear and the new record


def test_a_job_whose_previous_lease_is_still_held_waits_for_it_then_reacquires(state):
    old = hs.acquire(state, req("j1", [0, 1]))
    report = hs.check(state, req("j1", [0, 1]))
    assert report["state"] == "ending" and "already holds a lease here" in report["reason"]
    got = {}
    waiter = threading.Thread(target=lambda: got.update(lease=hs.acquire(state, req("j1", [0, 1], key=1.0),
                                                                         wait=True, poll_s=0.02)))
    waiter.start()
    time.sleep(0.2)
    assert "lease" not in got
    old.release()
    waiter.join(5)
    assert got["lease"].devices == [0, 1]
    got["lease"].release()


def test_waiting_reports_place_changes_and_can_be_cancelled(state):
    reports, cancel = [], threading.Event()
    holder = hs.acquire(state, req("holder", [0]))
    early = hs.register(state, req("early", [0], key=1.0))
    outcome = {}

    def wait():
        try:
            hs.acquire(state, req("me", [0], key=2.0), wait=True, on_report=reports.append, cancel=cancel,
                       poll_s=0.02)
        except hs.Cancelled as e:
            outcome["cancelled"] = e

    thread = threading.Thread(target=wait)
    thread.start()
    deadline = time.time() + 5
    while not reports and time.time() < deadline:
        time.sleep(0.01)
    early.release()
    while len(reports) < 2 and time.time() < deadline:
        time.sleep(0.01)
    cancel.set()
    thread.join(5)
    assert [(r["state"], r["place"]) for r in reports] == [("busy", 2), ("busy", 1)]
    assert [t["job"] for t in reports[0]["waiting_for"]] == ["early"] and reports[1]["waiting_for"] == []
    assert [h["job"] for r in reports for h in r["holders"]] == ["holder", "holder"]
    assert "cancelled" in outcome and names(state, "ticket.") == []
    holder.release()


def test_a_waiter_gets_the_lease_as_soon_as_it_is_released(state):
    holder = hs.acquire(state, req("holder", [0, 1]))
    got = {}
    thread = threading.Thread(target=lambda: got.update(
        lease=hs.acquire(state, req("next", [1]), wait=True, poll_s=0.02), at=time.monotonic()))
    thread.start()
    time.sleep(0.2)
    released = time.monotonic()
    holder.release()
    thread.join(5)
    assert got["at"] - released < 0.5
    got["lease"].release()


# -- malformed and unsafe state

def test_a_malformed_live_lease_is_an_error_naming_the_file(state):
    hs.snapshot(state)  # nothing yet
    with hs.acquire(state, req("j0", [7])):
        pass
    path = os.path.join(state, "lease.j1." + "0" * 16)
    fd = hold_file(path, "{not json")
    try:
        with pytest.raises(hs.StateError) as e:
            hs.check(state, req("j2", [0]))
        assert e.value.path == path and path in str(e.value)
        with pytest.raises(hs.StateError, match="lease.j1"):
            hs.acquire(state, req("j2", [0]))
    finally:
        os.close(fd)
    # the same file with nobody holding it is a leftover, not state: ignored, then tidied away
    assert hs.check(state, req("j2", [0]))["granted"]
    with hs.acquire(state, req("j2", [0])):
        assert not os.path.exists(path)


@pytest.mark.parametrize("content, problem", [
    ('{"version": 99, "kind": "lease"}', "record version 99"),
    ('{"version": 1, "kind": "ticket", "job": "j1"}', "'ticket' record where a 'lease'"),
    ('{"version": 1, "kind": "lease", "job": "other", "devices": [], "slots": 0, "key": 1, "pid": 1, '
     '"since": 1}', "field 'job'"),
    ('{"version": 1, "kind": "lease", "job": "j1", "devices": ["x"], "slots": 0, "key": 1, "pid": 1, '
     '"since": 1}', "field 'devices'"),
    ("[1, 2]", "not a JSON object"),
])
def test_live_lease_records_are_checked_field_by_field(state, content, problem):
    hs.snapshot(state)
    os.makedirs(state, mode=0o1777)
    path = os.path.join(state, "lease.j1." + "a" * 16)
    fd = hold_file(path, content)
    try:
        with pytest.raises(hs.StateError, match=problem):
            hs.snapshot(state)
    finally:
        os.close(fd)


def test_malformed_records_and_foreign_entries_are_errors_naming_them(state):
    hs.cordon(state, "why")
    cordon_file, = names(state, "cordon.")
    path = os.path.join(state, cordon_file)
    os.chmod(path, 0o644)
    with open(path, "w") as f:
        f.write('{"version": 1, "kind": "cordon", "action": "maybe", "time": 1}')
    with pytest.raises(hs.StateError, match="field 'action'") as e:
        hs.snapshot(state)
    assert e.value.path == path
    os.unlink(path)
    os.symlink("/etc/passwd", os.path.join(state, "ticket.j1." + "b" * 16))
    with pytest.raises(hs.StateError, match="symbolic link"):
        hs.check(state, req("j1", [0]))
    os.unlink(os.path.join(state, "ticket.j1." + "b" * 16))
    os.mkfifo(os.path.join(state, "lease.j1." + "c" * 16))
    with pytest.raises(hs.StateError, match="not a regular file"):
        hs.snapshot(state)
    os.unlink(os.path.join(state, "lease.j1." + "c" * 16))
    open(os.path.join(state, "cordon.latest"), "w").close()
    with pytest.raises(hs.StateError, match="not a name this program writes"):
        hs.snapshot(state)
    os.unlink(os.path.join(state, "cordon.latest"))
    open(os.path.join(state, "README"), "w").close()  # not ours: left alone
    assert hs.snapshot(state)["cordon"] == {"cordoned": False}


# -- requests and short commands

@pytest.mark.parametrize("doc, field", [
    ({"devices": [0]}, "job"),
    ({"job": "a b", "devices": [0]}, "job"),
    ({"job": "j", "devices": [0, 0]}, "devices"),
    ({"job": "j", "devices": [-1]}, "devices"),
    ({"job": "j", "devices": "0,1"}, "devices"),
    ({"job": "j"}, "devices"),
    ({"job": "j", "devices": [0], "slots": 2, "capacity": 4}, "devices"),
    ({"job": "j", "slots": 2}, "capacity"),
    ({"job": "j", "slots": 5, "capacity": 4}, "capacity"),
    ({"job": "j", "devices": [0], "capacity": 4}, "capacity"),
    ({"job": "j", "devices": [0], "key": "soon"}, "key"),
    ({"job": "j", "devices": [0], "colour": "red"}, "colour"),
])
def test_bad_requests_name_the_field(doc, field):
    with pytest.raises(hs.RequestError) as e:
        Request.from_json(doc)
    assert e.value.field == field


def run_main(capsys, *argv):
    code = hs.main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_short_commands_speak_json(state, capsys, tmp_path):
    code, out = run_main(capsys, "cordon", state, '{"why": "fan"}')
    assert code == 0 and out["cordoned"] and out["why"] == "fan"
    code, out = run_main(capsys, "check", state, '{"job": "j1", "devices": [0]}')
    assert code == 0 and out["state"] == "cordoned" and not out["granted"]
    code, out = run_main(capsys, "check", state, '{"job": "j1", "devices": [0], "allow_cordoned": true}')
    assert out["granted"]
    assert run_main(capsys, "uncordon", state)[1]["cordoned"] is False
    code, out = run_main(capsys, "record-exclusion", state, '{"reason": "hung", "job": "j1"}')
    assert [r["reason"] for r in out["exclusions"]] == ["hung"]
    code, out = run_main(capsys, "snapshot", state, json.dumps({"paths": [str(tmp_path)]}))
    assert code == 0 and [d["path"] for d in out["disk"]] == [os.path.abspath(state), str(tmp_path)]
    assert out["disk"][1]["available_bytes"] > 0 and len(out["load"]) == 3
    assert out["memory"]["total_bytes"] > 0 and out["exclusions"][0]["job"] == "j1"
    assert run_main(capsys, "clear-exclusions", state)[1] == {"cleared": 1}
    assert run_main(capsys, "exclusions", state)[1] == {"exclusions": []}


@pytest.mark.parametrize("argv, field", [
    (["fly", "/tmp/x"], "command"),
    (["check"], "command"),
    (["check", "/tmp/x", "{"], "argument"),
    (["check", "/tmp/x", "[]"], "argument"),
    (["check", "/tmp/x", '{"job": "j"}'], "devices"),
    (["cordon", "/tmp/x", "{}"], "why"),
    (["record-exclusion", "/tmp/x", '{"reason": "r", "job": ""}'], "job"),
])
def test_bad_short_commands_exit_2_naming_the_field(capsys, argv, field):
    code, out = run_main(capsys, *argv)
    assert code == 2 and out["error"]["type"] == "RequestError" and out["error"]["field"] == field


def test_bad_state_exits_2_naming_the_path(capsys, tmp_path):
    plain = tmp_path / "file"
    plain.write_text("")
    code, out = run_main(capsys, "snapshot", str(plain))
    assert code == 2 and out["error"]["type"] == "StateError" and out["error"]["path"] == str(plain)
