"""The host state with real processes and real users: a lease lives exactly as long as the last process
holding its descriptor; another unprivileged user can neither remove, take over nor forge a lease or a
ticket, and queues correctly; 20 processes contending for 8 devices never overlap and are served first
come, first served.

Workers (tests/e2e/scripts/hoststate_worker.py) run with the system Python and `-S`, beside a copy of
hoststate.py, as they would on a host.
"""
import errno
import json
import os
import pwd
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from launcher.hostside import hoststate as hs
from tests.harness import waiting
from tests.harness.procs import alive

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
#: The system Python: every user can run it (a root-owned pyenv or virtualenv may not be).
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
USERS = ("rnl-alice", "rnl-bob")
# With fs.protected_hardlinks (the default) nobody can link another user's file; without it a second
# name of a lease is harmless: it is read once, and its owner stays the lease's owner.
LOCKED = errno.errorcode[errno.EWOULDBLOCK]
HARDLINK = "EPERM" if Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "1" else "done"


@pytest.fixture
def shared_dir():
    """A folder every user can read: the worker, hoststate.py, and tmp/ (mode 1777) for state directories."""
    root = Path(tempfile.mkdtemp(prefix="hoststate-"))
    root.chmod(0o755)
    shutil.copy(HERE / "scripts" / "hoststate_worker.py", root)
    shutil.copy(Path(hs.__file__), root / "hoststate.py")
    for f in root.iterdir():
        f.chmod(0o644)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)  # like /var/tmp: where any user may create the state directory
    yield root
    shutil.rmtree(root, ignore_errors=True)


def ensure_user(name):
    """An unprivileged login-less user `name` (created with useradd when missing; the tests run as root)."""
    if os.geteuid() != 0:
        pytest.fail("these tests create users and switch to them: run them as root")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="module")
def users():
    return {name: ensure_user(name) for name in USERS}


class Worker:
    """One worker process; a thread reads its events into a queue."""

    def __init__(self, shared, action, state, args, user=None):
        argv = [PYTHON, "-S", str(shared / "hoststate_worker.py"), action, str(state), json.dumps(args)]
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] + argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd="/")
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def expect(self, event, timeout=60.0):
        """The next event other than a place report (unless `event` is "report"); it must be `event`."""
        while True:
            try:
                got = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {event!r} from the worker within {timeout:.0f} s") from None
            assert got is not None, f"worker ended (exit {self.proc.wait()}) before {event!r}"
            if got["event"] != "report" or event == "report":
                assert got["event"] == event, got
                return got

    def report_where(self, predicate, timeout=60.0):
        """The first place report for which `predicate` holds."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.expect("report", timeout=max(0.0, deadline - time.monotonic()))
            if predicate(report):
                return report

    def say(self, line="go"):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout=30.0):
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def wait_until(predicate, timeout=10.0):
    return waiting.wait_until(predicate, timeout, 0.005)


# -- the lease goes with the last process holding it

def test_lease_outlives_a_sigkilled_holder_until_its_last_child_is_gone(shared_dir):
    state, pid_file = shared_dir / "tmp" / "state", shared_dir / "sleep.pid"
    request = {"job": "j1", "devices": [0, 1], "launcher": "laptop", "launcher_pid": 7}
    # the child is a shell whose own child (sleep) inherits the descriptor too
    shell = f"sleep 300 & echo $! > {pid_file}; wait"
    holder = Worker(shared_dir, "hold", state, {"request": request, "child": ["sh", "-c", shell]})
    child = grandchild = None
    try:
        granted = holder.expect("granted")
        child = holder.expect("child")["pid"]
        grandchild = wait_until(lambda: pid_file.exists() and pid_file.read_text().strip()
                                and int(pid_file.read_text()))
        holder.proc.kill()
        holder.proc.wait()
        # the holder is gone: its children still hold the lease
        for _ in range(3):
            report = hs.check(str(state), hs.Request("j2", devices=[1]))
            assert report["state"] == "busy" and report["holders"][0]["pid"] == granted["pid"]
            time.sleep(0.1)
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: not alive(child))
        assert hs.check(str(state), hs.Request("j2", devices=[1]))["state"] == "busy"  # sleep holds it
        os.kill(grandchild, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: hs.check(str(state), hs.Request("j2", devices=[1]))["granted"], timeout=5)
        assert time.monotonic() - killed < 0.5
        # the leftover file is not state; the next acquisition tidies it away
        with hs.acquire(str(state), hs.Request("j2", devices=[0, 1])):
            assert [n for n in os.listdir(state) if n.startswith("lease.j1")] == []
    finally:
        holder.kill()
        for pid in (child, grandchild):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_release_by_the_holder_keeps_the_lease_while_a_child_still_holds_it(shared_dir):
    state = shared_dir / "tmp" / "state"
    holder = Worker(shared_dir, "hold", state, {"request": {"job": "j1", "devices": [3]},
                                                "child": ["sleep", "300"]})
    try:
        holder.expect("granted")
        child = holder.expect("child")["pid"]
        holder.say("release")
        holder.expect("releasing")
        assert holder.expect("released")["removed"] is False
        assert hs.check(str(state), hs.Request("j2", devices=[3]))["state"] == "busy"
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: hs.check(str(state), hs.Request("j2", devices=[3]))["granted"], timeout=5)
    finally:
        holder.kill()


# -- two unprivileged users

def test_another_user_cannot_remove_take_over_or_forge_a_lease_or_ticket(shared_dir, users):
    alice, bob = users["rnl-alice"], users["rnl-bob"]
    state = shared_dir / "tmp" / "state"
    holder = Worker(shared_dir, "hold", state, {"request": {"job": "alice-job", "devices": [0, 1]}},
                    user="rnl-alice")
    waiter = forger = None
    try:
        lease_file = holder.expect("granted")["file"]
        waiter = Worker(shared_dir, "hold", state, {"request": {"job": "alice-next", "devices": [1],
                                                                "key": 5.0}, "wait": True}, user="rnl-alice")
        waiter.expect("report")
        assert (state.stat().st_uid, oct(state.stat().st_mode & 0o7777)) == (alice.pw_uid, "0o1777")
        ticket_file, = [n for n in os.listdir(state) if n.startswith("ticket.alice-next.")]
        for name in (lease_file, ticket_file):
            attack = Worker(shared_dir, "attack", state, {"name": name}, user="rnl-bob")
            results = attack.expect("attacked")["results"]
            assert attack.finish() == 0
            assert results == {"unlink": "EPERM", "rename": "EPERM", "replace": "EPERM", "write": "EACCES",
                               "truncate": "EACCES", "chmod": "EPERM", "lock": LOCKED, "hardlink": HARDLINK,
                               "create_same_name": "EEXIST"}, name
        # a lease written by hand in alice's name is bob's: the owner is the kernel's word
        forger = Worker(shared_dir, "forge", state, {"job": "alice-job", "claim_user": "rnl-alice",
                                                     "claim_uid": alice.pw_uid}, user="rnl-bob")
        forged = forger.expect("ready")["file"]
        snap = hs.snapshot(str(state))
        owners = {h["file"]: (h["user"], h["uid"]) for h in snap["leases"]}
        assert owners == {lease_file: ("rnl-alice", alice.pw_uid), forged: ("rnl-bob", bob.pw_uid)}
        assert [(t["job"], t["user"]) for t in snap["queue"]] == [("alice-next", "rnl-alice")]
        # bob's acquisitions are refused with alice named as the holder
        refused = Worker(shared_dir, "hold", state, {"request": {"job": "bob-job", "devices": [1]}},
                         user="rnl-bob")
        report = refused.expect("refused")["report"]
        assert refused.finish() == 3
        assert ("rnl-alice", "alice-job") in [(h["user"], h["job"]) for h in report["holders"]]
        # everything alice holds is intact
        assert {lease_file, ticket_file, forged} <= set(os.listdir(state))
    finally:
        for w in (holder, waiter, forger):
            if w:
                w.kill()


def test_two_users_queue_behind_each_other_in_key_order(shared_dir, users):
    state = shared_dir / "tmp" / "state"
    os.makedirs(state)
    os.chmod(state, 0o1777)  # as an administrator would create it: owned by root
    holder = Worker(shared_dir, "hold", state, {"request": {"job": "a-first", "devices": [0, 1]}},
                    user="rnl-alice")
    holder.expect("granted")
    # alice's second job arrives first and looks 20 times as often, but began to wait later (key 20)
    # than bob's (key 10): bob goes first
    a2 = Worker(shared_dir, "hold", state, {"request": {"job": "a-second", "devices": [1], "key": 20.0},
                                            "wait": True, "poll_s": 0.01}, user="rnl-alice")
    assert a2.expect("report")["place"] == 1
    b1 = Worker(shared_dir, "hold", state, {"request": {"job": "b-first", "devices": [0, 1], "key": 10.0},
                                            "wait": True, "poll_s": 0.2}, user="rnl-bob")
    b1.expect("report")
    b2 = Worker(shared_dir, "hold", state, {"request": {"job": "b-disjoint", "devices": [5], "key": 30.0},
                                            "wait": True}, user="rnl-bob")
    try:
        b2.expect("granted")  # disjoint from everything: goes first
        assert b2.finish() == 0
        assert a2.report_where(lambda r: r["place"] == 2)["waiting_for"] == [["b-first", "rnl-bob"]]
        queue = hs.snapshot(str(state))["queue"]
        assert [(t["job"], t["user"]) for t in queue] == [("b-first", "rnl-bob"), ("a-second", "rnl-alice")]
        holder.say("release")
        holder.expect("releasing")
        g_b1 = b1.expect("granted")
        assert g_b1["uid"] == users["rnl-bob"].pw_uid
        a2.report_where(lambda r: r["holders"] == [["b-first", "rnl-bob"]] and not r["waiting_for"])
        b1.say("release")
        released = b1.expect("releasing")
        g_a2 = a2.expect("granted")
        assert g_a2["uid"] == users["rnl-alice"].pw_uid and g_a2["t"] > released["t"]
        for w in (b1, a2, holder):
            assert w.finish() == 0
        assert hs.snapshot(str(state))["leases"] == []
        assert not [n for n in os.listdir(state) if n.startswith(("lease.", "ticket."))]
    finally:
        for w in (holder, a2, b1, b2):
            w.kill()


# -- many processes, 8 devices

def test_twenty_processes_on_eight_devices_never_overlap_and_are_served_in_key_order(shared_dir):
    state = shared_dir / "tmp" / "state"
    rng = random.Random(20)
    jobs = []
    for i, key in enumerate(rng.sample(range(1, 21), 20)):
        devices = sorted(rng.sample(range(8), rng.randint(1, 4)))
        jobs.append({"job": f"job-{i:02d}", "devices": devices, "key": float(key),
                     "hold_s": round(rng.uniform(0.02, 0.15), 3)})
    workers = []
    try:
        for j in jobs:
            request = {k: j[k] for k in ("job", "devices", "key")}
            workers.append(Worker(shared_dir, "queue", state, {"request": request, "hold_s": j["hold_s"]}))
        for w in workers:
            w.expect("ready")
        assert [t["job"] for t in hs.snapshot(str(state))["queue"]] == [
            j["job"] for j in sorted(jobs, key=lambda j: j["key"])]
        started = time.monotonic()
        for w in workers:
            w.say("go")
        timeline = {}
        for w, j in zip(workers, jobs):
            granted, releasing = w.expect("granted"), w.expect("releasing")
            assert w.finish() == 0
            timeline[j["job"]] = (granted["t"], releasing["t"])
        elapsed = time.monotonic() - started
    finally:
        for w in workers:
            w.kill()
    overlaps, order = [], []
    for a in jobs:
        for b in jobs:
            if a["key"] < b["key"] and set(a["devices"]) & set(b["devices"]):
                (ga, ra), (gb, rb) = timeline[a["job"]], timeline[b["job"]]
                if ga < rb and gb < ra:
                    overlaps.append((a["job"], b["job"]))
                if not ra <= gb:
                    order.append((a["job"], b["job"]))
    assert overlaps == [] and order == []
    assert elapsed < 60
    assert hs.snapshot(str(state))["leases"] == [] and hs.snapshot(str(state))["queue"] == []


def test_short_commands_as_another_user_and_a_state_dir_they_cannot_use(shared_dir, users):
    state = shared_dir / "tmp" / "state"

    def command(user, *argv):
        out = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", PYTHON, "-S",
                              str(shared_dir / "hoststate.py"), *argv], stdout=subprocess.PIPE, text=True,
                             cwd="/", timeout=60)
        return out.returncode, json.loads(out.stdout)

    code, cordon = command("rnl-alice", "cordon", str(state), '{"why": "disk swap"}')
    assert code == 0 and (cordon["cordoned"], cordon["by"]) == (True, "rnl-alice")
    code, cordon = command("rnl-bob", "uncordon", str(state), '{"why": "done"}')  # a team action
    assert code == 0 and (cordon["cordoned"], cordon["by"]) == (False, "rnl-bob")
    code, out = command("rnl-bob", "record-exclusion", str(state), '{"reason": "hung", "job": "b1"}')
    assert code == 0 and [(r["by"], r["job"]) for r in out["exclusions"]] == [("rnl-bob", "b1")]
    code, snap = command("rnl-alice", "snapshot", str(state))
    assert code == 0 and snap["exclusions"][0]["by"] == "rnl-bob" and snap["state_dir"]["mode"] == "1777"
    closed = shared_dir / "closed"
    closed.mkdir(mode=0o755)
    code, out = command("rnl-bob", "cordon", str(closed), '{"why": "x"}')
    assert code == 2 and out["error"]["type"] == "StateError" and out["error"]["path"] == str(closed)
    assert "not writable by uid" in out["error"]["message"]
