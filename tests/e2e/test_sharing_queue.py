"""Leases and the wait queue through whole launches on real sshd hosts (docs/sharing.md).

Three simulated hosts with four Ascend devices each (backend rank_table, device IPs given) and their own
state directories; two launcher machines (their own HOME, SSH key and runs folder). Every rank records
when it holds which device (tests/harness/occupant.py).

- many launchers at once, all with --wait: no device is ever held by two jobs, every job finishes, and
  among jobs wanting a device in common the one that was in the queues first is served first;
- without --wait, held devices end the launch with exit 2 naming host, devices, holder, user and since
  when, with nothing started and nothing held;
- a waiting launch says its place and whom it waits for once, then only on a change; Ctrl-C or the end
  of `--wait SECONDS` leaves the queues with nothing held and exit 2 naming what it waited for.
"""
from __future__ import annotations

import itertools
import random
import re
import signal
import socket
import time

import pytest

from tests.harness.procs import tagged
from tests.harness.sharing import SharedHosts, overlaps, shared_hosts

pytestmark = pytest.mark.e2e

HOSTS = ("host-1", "host-2", "host-3")


@pytest.fixture(scope="module")
def shared():
    with shared_hosts("sharing-queue-", "127.0.5.") as hosts:
        yield hosts


def held_by(shared: SharedHosts, job_id: str):
    """(host, kind) of every lease or ticket of `job_id` live on the hosts now."""
    found = []
    for name in shared.names:
        snap = shared.snapshot(name)
        found += [(name, "lease") for h in snap["leases"] if h["job"] == job_id]
        found += [(name, "ticket") for t in snap["queue"] if t["job"] == job_id]
    return found


def running(shared: SharedHosts, job, count: int, timeout: float = 60) -> float:
    """Wait until `count` ranks of `job` have started; the time (epoch seconds) the last of them did."""
    def started():
        times = [r["t"] for r in shared.read_records() if r["job"] == job.job_id and r["event"] == "start"]
        return len(times) >= count and max(times)

    return job.wait_for(f"{count} ranks of {job.job_id} running", started, timeout)


def test_without_wait_held_devices_end_the_launch_naming_holder_and_nothing_starts(shared):
    laptop, desktop = shared.machines
    holder = shared.launch(laptop, "nw-holder", {"host-1": [0, 1], "host-2": [2]}, 60)
    running(shared, holder, 3)
    began = time.time()
    late = shared.launch(desktop, "nw-late", {"host-2": [2, 3]}, 1)
    assert late.wait(60) == 2, late.stderr
    err = late.stderr
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.started_wall))
    assert re.search(r"devices 2, 3 on host-2 are not free: devices 2 held by job nw-holder of root since "
                     + re.escape(since), err), err
    assert "give --wait" in err
    assert not (desktop.runs / "nw-late").exists()
    assert [r for r in shared.read_records() if r["job"] == "nw-late"] == []
    assert held_by(shared, "nw-late") == [] and tagged("nw-late") == []
    assert held_by(shared, "nw-holder") == [("host-1", "lease"), ("host-2", "lease")]
    assert time.time() - began < 30
    holder.close()


def holder_since(shared: SharedHosts, host: str, job_id: str) -> str:
    lease = next(h for h in shared.snapshot(host)["leases"] if h["job"] == job_id)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease["since"]))


def launcher_of(job) -> str:
    return f"{socket.gethostname()} pid {job.proc.pid}"


def waiting_lines(job) -> list:
    return [line for _, line in job.stderr_lines if "waiting for" in line]


def test_a_waiting_launch_says_its_place_on_change_only_and_leaves_the_queue_on_ctrl_c_or_timeout(shared):
    laptop, desktop = shared.machines
    holder = shared.launch(laptop, "q-holder", {"host-1": [0, 1]}, 60)
    running(shared, holder, 2)
    first = shared.launch(desktop, "q-first", {"host-1": [1]}, 1, "--wait")
    first.wait_for("q-first in line", lambda: waiting_lines(first), 60)
    second = shared.launch(laptop, "q-second", {"host-1": [1, 2], "host-2": [0]}, 1, "--wait")
    second.wait_for("q-second in line", lambda: waiting_lines(second), 60)
    time.sleep(2.0)  # several looks at the queue: nothing changed, nothing more is said
    assert waiting_lines(first) == [
        f"refinenet-launch: waiting for host-1 (place 1 in its queue): devices 0, 1 held by job q-holder of "
        f"root since {holder_since(shared, 'host-1', 'q-holder')} (launched from {launcher_of(holder)})"], \
        first.stderr
    said = waiting_lines(second)
    assert len(said) == 1 and "place 2 in its queue" in said[0] and said[0].endswith(
        "queued before it: job q-first of root"), said
    assert sorted(held_by(shared, "q-second")) == [("host-1", "ticket"), ("host-2", "ticket")]

    first.kill(signal.SIGINT)
    assert first.wait(30) == 2, first.stderr
    assert "interrupted while waiting for devices 1 on host-1; nothing is held" in first.stderr
    assert held_by(shared, "q-first") == [] and not (desktop.runs / "q-first").exists()
    second.wait_for("q-second's new place", lambda: len(waiting_lines(second)) == 2, 30)
    now = waiting_lines(second)[1]
    assert "place 1 in its queue" in now and "queued before" not in now

    began = time.monotonic()
    timed = shared.launch(desktop, "q-timed", {"host-1": [0]}, 1, "--wait", "2")
    assert timed.wait(60) == 2, timed.stderr
    assert time.monotonic() - began < 30
    assert re.search(r"waited 2 s for devices 0 on host-1 \(devices 0, 1 held by job q-holder of root since "
                     r"[^)]+\).*; nothing is held", timed.stderr), timed.stderr
    assert held_by(shared, "q-timed") == [] and not (desktop.runs / "q-timed").exists()

    holder.close()
    assert second.wait(60) == 0, second.stderr
    assert len(waiting_lines(second)) == 2, second.stderr
    assert held_by(shared, "q-second") == []


def test_many_launchers_from_two_machines_never_share_a_device_and_are_served_in_queue_order(shared):
    rng = random.Random(22)
    wanted = {}
    for i in range(22):
        hosts = [h for h in HOSTS if rng.random() < 0.5] or [rng.choice(HOSTS)]
        wanted[f"stress-{i:02d}"] = {h: sorted(rng.sample(range(shared.devices), rng.randint(1, 3)))
                                     for h in hosts}
    began = time.monotonic()
    jobs = {}
    for i, (job_id, devices) in enumerate(wanted.items()):
        machine = shared.machines[i % 2]
        jobs[job_id] = shared.launch(machine, job_id, devices, round(rng.uniform(0.3, 1.2), 2), "--wait")
        time.sleep(rng.uniform(0.0, 0.3))
    codes = {job_id: job.wait(240) for job_id, job in jobs.items()}
    elapsed = time.monotonic() - began
    assert codes == {job_id: 0 for job_id in jobs}, {j: jobs[j].stderr[-2000:] for j, c in codes.items() if c}

    records = [r for r in shared.read_records() if r["job"] in jobs]
    assert overlaps(records) == []
    for job_id, devices in wanted.items():
        ends = {(r["host"], r["device"]) for r in records if r["job"] == job_id and r["event"] == "end"}
        assert ends == {(h, d) for h, ds in devices.items() for d in ds}, job_id
    leases = {job_id: job.record()["leases"] for job_id, job in jobs.items()}
    assert all(leases[j]["hosts"] == {h: {"devices": d} for h, d in wanted[j].items()} for j in jobs)
    served_late, ordered = [], 0
    for a, b in itertools.permutations(jobs, 2):
        shared_devices = {(h, d) for h, ds in wanted[a].items() for d in ds} & \
            {(h, d) for h, ds in wanted[b].items() for d in ds}
        # a was in every queue before b began to wait: a is served first
        if shared_devices and leases[a]["queued"] < leases[b]["key"]:
            ordered += 1
            if not leases[a]["granted"] < leases[b]["granted"]:
                served_late.append((a, b, sorted(shared_devices)))
    assert served_late == []
    waited = [job_id for job_id in jobs if waiting_lines(jobs[job_id])]
    assert len(waited) >= 5 and ordered >= 20, f"too little contention to prove the queue: {len(waited)} " \
                                               f"launches waited, {ordered} pairs ordered"
    assert all(held_by(shared, job_id) == [] for job_id in jobs)
    assert elapsed < 180, f"{elapsed:.0f} s"
