"""Two users sharing hosts through the launcher (docs/sharing.md): root and an unprivileged user (made with
useradd when missing), each with their own HOME (SSH key, known_hosts) and runs folder, on real sshd
hosts that take both logins.

The other user can neither take nor break root's lease: a launch of theirs (even with root's job id) is
refused naming root's job, removing or renaming the lease file is refused by the kernel, `stop` of
root's job does nothing to it. Their waiting launches and root's queue behind each other in the order
they began to wait, on every host, and the state records who holds what by the file owner.
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.harness.sharing import SharedHosts, overlaps, shared_hosts
from tests.harness.users import login_user

pytestmark = pytest.mark.e2e

USER = "rnl-carol"


@pytest.fixture(scope="module")
def shared():
    machines = (("root-laptop", None), ("carol-laptop", login_user(USER)))
    with shared_hosts("sharing-users-", "127.0.7.", machines) as hosts:
        yield hosts


def starts_of(shared: SharedHosts, job_id: str):
    return [r for r in shared.read_records() if r["job"] == job_id and r["event"] == "start"]


def running(shared: SharedHosts, job, count: int, timeout: float = 60):
    def started():
        found = starts_of(shared, job.job_id)
        return len(found) >= count and found

    return job.wait_for(f"{count} ranks of {job.job_id} running", started, timeout)


def waiting_lines(job):
    return [line for _, line in job.stderr_lines if "waiting for" in line]


def in_line(job, timeout: float = 60) -> str:
    """The launch's latest line about its place in line, once it said one."""
    return job.wait_for(f"{job.job_id} in line", lambda: (waiting_lines(job) or [""])[-1], timeout)


def test_the_other_user_can_neither_take_nor_break_a_lease(shared):
    mine, theirs = shared.machines
    holder = shared.launch(mine, "u-held", {"host-1": [0, 1], "host-2": [0]}, 300)
    running(shared, holder, 3)
    lease = next(h for h in shared.snapshot("host-1")["leases"] if h["job"] == "u-held")
    assert lease["user"] == "root"

    for job_id in ("u-theirs", "u-held"):  # root's job id too: a job is its id and its user
        late = shared.launch(theirs, job_id, {"host-1": [1]}, 1)
        assert late.wait(60) == 2, late.stderr
        assert re.search(r"devices 1 on host-1 are not free: devices 0, 1 held by job u-held of root since ",
                         late.stderr), late.stderr
        assert not (theirs.runs / job_id).exists()

    state = shared.state_dir("host-1")
    path = state / lease["file"]
    for argv in (["rm", "-f", str(path)], ["mv", str(path), str(state / "moved")],
                 ["sh", "-c", f": > {path}"]):
        done = subprocess.run(theirs.user.argv(argv), capture_output=True, text=True, cwd="/", timeout=30)
        assert done.returncode != 0 and ("Operation not permitted" in done.stderr
                                         or "Permission denied" in done.stderr), (argv, done.stderr)
    stop = subprocess.run(theirs.user.argv([theirs.python, "-m", "launcher.cli", "stop", str(holder.job_dir),
                                            "--timeout", "2", "--grace", "1"]),
                          env=theirs.env(), capture_output=True, text=True, cwd="/", timeout=120)
    assert stop.returncode == 2 and f"cannot read {holder.job_dir / 'job.json'}: Permission denied" \
        in stop.stderr, stop.stdout + stop.stderr
    time.sleep(1.0)
    assert holder.proc.poll() is None and holder.record()["state"] == "RUNNING"
    assert [h["job"] for h in shared.snapshot("host-1")["leases"]] == ["u-held"]
    assert path.exists() and len(starts_of(shared, "u-held")) == 3
    assert not [r for r in shared.read_records() if r["job"] == "u-held" and r["event"] != "start"]
    holder.close()


def test_the_two_users_queue_behind_each_other_in_the_order_they_began_to_wait(shared):
    mine, theirs = shared.machines
    holder = shared.launch(mine, "q-holder", {"host-1": [2, 3], "host-3": [0]}, 300)
    running(shared, holder, 3)
    first = shared.launch(theirs, "q-carol-1", {"host-1": [3], "host-2": [1]}, 1.5, "--wait")
    assert "devices 2, 3 held by job q-holder of root since " in in_line(first)
    second = shared.launch(mine, "q-root-2", {"host-1": [3]}, 1, "--wait")
    assert in_line(second).endswith(f"queued before it: job q-carol-1 of {USER}")
    disjoint = shared.launch(theirs, "q-carol-3", {"host-3": [1]}, 0.5, "--wait")
    assert disjoint.wait(60) == 0, disjoint.stderr  # wants nothing anyone holds or waits for
    queue = shared.snapshot("host-1")["queue"]
    assert [(t["job"], t["user"]) for t in queue] == [("q-carol-1", USER), ("q-root-2", "root")]
    assert [(t["job"], t["user"]) for t in shared.snapshot("host-2")["queue"]] == [("q-carol-1", USER)]

    holder.close()
    assert first.wait(60) == 0, first.stderr
    assert second.wait(60) == 0, second.stderr
    theirs_granted = first.record()["leases"]["granted"]
    mine_granted = second.record()["leases"]["granted"]
    assert theirs_granted < mine_granted
    carol_end = max(r["t"] for r in shared.read_records() if r["job"] == "q-carol-1" and r["event"] == "end")
    assert min(r["t"] for r in starts_of(shared, "q-root-2")) > carol_end
    assert {(h["job"], h["user"]) for n in shared.names for h in shared.snapshot(n)["leases"]} == set()
    assert overlaps(shared.read_records()) == []
    owners = {r["job"]: r for r in shared.read_records() if r["event"] == "end"}
    assert owners["q-carol-1"]["pid"] and owners["q-root-2"]["pid"]
