"""Leases through failures, on real sshd hosts (docs/sharing.md): what a holder's crash, restart or
exclusion does to the jobs waiting behind it.

- SIGKILL of a launcher, or of one host agent, while its job holds devices and another job waits for
  them: the devices are free within 2 s of the kill (the waiting job holds its lease) and the waiting job
  runs;
- a job that restarts (a rank fails once) keeps its devices: the waiting job starts only after it ended;
- a host a job excluded (its rank failing there twice, a spare in the cluster file) keeps the record, and
  the next launch puts its ranks on a spare, or without a spare exits 2 naming the host and why.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from launcher.hostside import hoststate
from tests.harness.procs import alive, gone_within
from tests.harness.sharing import SharedHosts, overlaps, shared_hosts

pytestmark = pytest.mark.e2e

#: How soon the devices of a killed holder must be free for the job waiting for them.
FREE_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def shared():
    with shared_hosts("sharing-faults-", "127.0.6.") as hosts:
        yield hosts


def records_of(shared: SharedHosts, job_id: str, event: str = "start"):
    return [r for r in shared.read_records() if r["job"] == job_id and r["event"] == event]


def running(shared: SharedHosts, job, count: int, timeout: float = 60):
    """The `start` records of `job` once `count` of its ranks run."""
    def started():
        found = records_of(shared, job.job_id)
        return len(found) >= count and found

    return job.wait_for(f"{count} ranks of {job.job_id} running", started, timeout)


def in_line(job, timeout: float = 60) -> None:
    job.wait_for(f"{job.job_id} waiting in line",
                 lambda: any("waiting for" in line for _, line in job.stderr_lines), timeout)


def leases_of(shared: SharedHosts, job_id: str):
    return [(name, h["devices"]) for name in shared.names for h in shared.snapshot(name)["leases"]
            if h["job"] == job_id]


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def freed_for(shared: SharedHosts, waiter, killed: float):
    """(seconds from the kill to the waiter's leases, to its first rank's start)."""
    first = running(shared, waiter, 1)[0]["t"]
    granted = waiter.wait_for(f"{waiter.job_id}'s job.json", lambda: (waiter.job_dir / "job.json").exists()
                              and waiter.record()["leases"].get("granted"), 30)
    return granted - killed, first - killed


@pytest.mark.parametrize("victim", ["launcher", "agent"])
def test_a_killed_holder_frees_its_devices_for_the_waiting_job_within_2_s(shared, victim):
    laptop, desktop = shared.machines
    holder_id, waiter_id = f"kill-{victim}-holder", f"kill-{victim}-waiter"
    holder = shared.launch(laptop, holder_id, {"host-1": [0, 1], "host-2": [0]}, 300)
    starts = running(shared, holder, 3)
    waiter = shared.launch(desktop, waiter_id, {"host-1": [1]}, 0.5, "--wait")
    in_line(waiter)
    time.sleep(0.5)
    assert leases_of(shared, waiter_id) == []
    if victim == "launcher":
        pid = holder.proc.pid
    else:
        rank = next(r for r in starts if r["host"] == "host-1")
        pid = parent(rank["pid"])
        assert " agent " in cmdline(pid), cmdline(pid)
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    lease_s, first_rank_s = freed_for(shared, waiter, killed)
    print(f"SIGKILL of the holder's {victim}: waiter's leases after {lease_s:.2f} s, first rank after "
          f"{first_rank_s:.2f} s")
    assert lease_s < FREE_WITHIN_S
    assert waiter.wait(60) == 0, waiter.stderr
    assert holder.wait(60) in ((-signal.SIGKILL,) if victim == "launcher" else (1,)), holder.stderr
    assert gone_within(holder_id, 10) == []
    assert leases_of(shared, holder_id) == [] and leases_of(shared, waiter_id) == []
    assert overlaps(shared.read_records()) == []
    assert not alive(pid)


def test_a_restarting_job_keeps_its_devices_and_the_waiting_job_starts_after_it_ended(shared, tmp_path):
    laptop, desktop = shared.machines
    flag = shared.root / "restart-failed-once"
    restart = {"max_restarts": 1, "backoff_s": 1.0, "backoff_max_s": 1.0}
    holder = shared.launch(laptop, "restart-holder", {"host-1": [2], "host-2": [2, 3]}, 3,
                           program=["--fail-once", str(flag), "--fail-rank", "2"], restart=restart)
    running(shared, holder, 3)
    waiter = shared.launch(desktop, "restart-waiter", {"host-2": [3]}, 0.5, "--wait")
    in_line(waiter)
    assert holder.wait(120) == 0, holder.stderr
    ended = time.time()
    assert waiter.wait(60) == 0, waiter.stderr
    record = holder.record()
    assert [a["state"] for a in record["attempts"]] == ["FAILED", "SUCCEEDED"]
    # attempt 1: rank 2 fails, the others are stopped; attempt 2: all three hold their devices to the end
    assert len(records_of(shared, "restart-holder")) == 6
    assert len(records_of(shared, "restart-holder", "fail")) == 1
    last_end = max(r["t"] for r in records_of(shared, "restart-holder", "end"))
    assert len(records_of(shared, "restart-holder", "end")) == 3
    waiter_start = min(r["t"] for r in records_of(shared, "restart-waiter"))
    assert waiter_start > last_end
    assert waiter.record()["leases"]["granted"] > last_end
    assert waiter.record()["leases"]["granted"] <= ended + FREE_WITHIN_S
    restarted = record["attempts"][1]["started"]
    assert waiter.record()["leases"]["granted"] > restarted
    assert overlaps(shared.read_records()) == []


def test_an_excluded_host_keeps_the_record_and_the_next_launch_uses_a_spare_or_names_it(shared):
    laptop, desktop = shared.machines
    restart = {"max_restarts": 3, "backoff_s": 0.5, "backoff_max_s": 0.5, "exclude_after": 2}
    try:
        failing = shared.launch(laptop, "exclude-first", {"host-1": [3], "host-2": [3]}, 0.5,
                                program=["--fail-host", "host-2"], spares={"host-3": [3]}, restart=restart)
        assert failing.wait(120) == 0, failing.stderr
        assert "host host-2 excluded" in failing.stderr
        assert [a["state"] for a in failing.record()["attempts"]] == ["FAILED", "FAILED", "SUCCEEDED"]
        records = shared.snapshot("host-2")["exclusions"]
        assert [(r["job"], r["by"]) for r in records] == [("exclude-first", "root")]
        assert "rank 1" in records[0]["reason"], records
        assert shared.snapshot("host-1")["exclusions"] == [] and shared.snapshot("host-3")["exclusions"] == []

        spared = shared.launch(desktop, "exclude-next", {"host-1": [3], "host-2": [3]}, 0.5,
                               spares={"host-3": [3]})
        assert spared.wait(60) == 0, spared.stderr
        assert "host host-2 takes no new job (excluded 1 time (last: job exclude-first: " in spared.stderr
        assert "its ranks run on spare host-3" in spared.stderr
        assert sorted(r["host"] for r in records_of(shared, "exclude-next")) == ["host-1", "host-3"]
        assert spared.record()["hosts"]["host-2"]["state"] == "excluded"

        alone = shared.launch(desktop, "exclude-alone", {"host-2": [0]}, 0.5)
        assert alone.wait(60) == 2, alone.stderr
        assert "host host-2 takes no new job: excluded 1 time (last: job exclude-first: " in alone.stderr
        assert "nothing was started" in alone.stderr
        assert records_of(shared, "exclude-alone") == [] and leases_of(shared, "exclude-alone") == []
    finally:
        hoststate.clear_exclusions(str(shared.state_dir("host-2")), "test over")


@pytest.mark.parametrize("waiter_can_run", [False, True])
def test_a_job_that_lost_an_agent_takes_its_lease_again_and_keeps_its_place(shared, waiter_can_run):
    """The holder restarts after losing an agent: it takes its lease there again with its own place in
    line, before a launch that began to wait later; one that took the devices in passing (the waiter
    free to run once they were) delays the restart, never shares them."""
    laptop, desktop = shared.machines
    tag = "free" if waiter_can_run else "blocked"
    restart = {"max_restarts": 1, "backoff_s": 0.5, "backoff_max_s": 0.5}
    blocker = None
    if not waiter_can_run:
        blocker = shared.launch(desktop, f"lost-{tag}-blocker", {"host-3": [0]}, 300)
        running(shared, blocker, 1)
    holder = shared.launch(laptop, f"lost-{tag}-holder", {"host-1": [0], "host-2": [1]}, 4, restart=restart)
    starts = running(shared, holder, 2)
    waiter_devices = {"host-1": [0]} if waiter_can_run else {"host-1": [0], "host-3": [0]}
    waiter = shared.launch(desktop, f"lost-{tag}-waiter", waiter_devices, 2, "--wait")
    in_line(waiter)
    agent = parent(next(r for r in starts if r["host"] == "host-1")["pid"])
    os.kill(agent, signal.SIGKILL)
    assert holder.wait(120) == 0, holder.stderr
    assert [a["state"] for a in holder.record()["attempts"]] == ["FAILED", "SUCCEEDED"]
    if blocker is not None:
        assert records_of(shared, waiter.job_id) == []
        blocker.close()
    assert waiter.wait(60) == 0, waiter.stderr
    assert overlaps(shared.read_records()) == []
    assert leases_of(shared, holder.job_id) == [] and leases_of(shared, waiter.job_id) == []
