"""The supervisor's policy, driven through scripted fake transports: no process is started.

Each fake process follows a script (lines at given times, an exit status, how it reacts to
signals); the fake transports answer checkpoint scans and metrics-age questions from tables the
test sets. Checked: restart counting, backoff, the resume point passed to every rank, the root
cause (earliest failure), stop during backoff, hang detection, teardown of every process.
"""
from __future__ import annotations

import json
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from launcher.agent.session import HostAgent, start_agent
from launcher.failures import FailureKind
from launcher.jobs import JobDir
from launcher.recovery import WARM_WAIT, Recovery
from launcher.spec.load import parse_cluster
from launcher.states import JobState, RankState
from launcher.supervisor import HealthWatch, Supervisor, describe_saved
from launcher.transport.base import CommandResult, HostError, HostInfo, SweepResult, Transport
from tests.harness.specs import factory_of, failure

HOSTS = ("a", "b")


@dataclass(frozen=True)
class Script:
    """What a fake process does: print `lines` (at seconds after start), print `every` seconds while
    alive, exit with `code` after `exit_after` seconds (None: runs until signalled)."""

    lines: Sequence[Tuple[float, str]] = ()
    every: Optional[float] = None
    exit_after: Optional[float] = None
    code: int = 0
    ignores_term: bool = False


RUN_FOREVER = Script(every=0.02)


class FakeProcess:
    """A scripted process inside a fake agent: lines, an exit, reactions to signals."""

    def __init__(self, agent: FakeAgent, index: int, name: str, script: Script, pid: int, watch: bool,
                 metrics_age: Optional[str]):
        self.agent, self.index, self.name, self.script = agent, index, name, script
        self.attempt = agent.attempt
        self.pid = self.pgid = pid
        self.watch, self.metrics_age = watch, metrics_age
        self.signals: List[int] = []
        self._status: Optional[int] = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.last_line = time.monotonic()
        self.hang_reported = False
        threading.Thread(target=self._play, daemon=True).start()

    def line(self, text: str) -> None:
        self.last_line = time.monotonic()
        if self.agent.attempt == self.attempt:
            self.agent.output(self.index, text)

    def _play(self) -> None:
        start = time.monotonic()
        pending = sorted(self.script.lines)
        next_tick = start
        hang_s = self.agent.hang_s
        while not self._done.is_set():
            now = time.monotonic() - start
            while pending and pending[0][0] <= now:
                self.line(pending.pop(0)[1])
            if self.script.every is not None and time.monotonic() >= next_tick:
                self.line(f"{self.name} working")
                next_tick = time.monotonic() + self.script.every
            if self.script.exit_after is not None and now >= self.script.exit_after:
                self.finish(self.script.code)
            silent = time.monotonic() - self.last_line
            if (hang_s and self.watch and not self.hang_reported and silent > hang_s
                    and not (self.metrics_age and float(self.metrics_age) <= hang_s)):
                self.hang_reported = True
                self.agent.event("hang", i=self.index, silent_s=round(silent, 1), a=self.attempt)
            self._done.wait(0.005)

    def finish(self, status: int) -> None:
        with self._lock:
            if self._status is None:
                self._status = status
                self.agent.event("exit", i=self.index, status=status, a=self.attempt)
                self._done.set()
                self.agent.check_done()

    def poll(self) -> Optional[int]:
        return self._status

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self._done.wait(timeout)
        return self._status

    def kill_group(self, sig: int) -> None:
        self.signals.append(sig)
        if self._status is not None:
            return
        if sig == signal.SIGKILL or (sig == signal.SIGTERM and not self.script.ignores_term):
            self.finish(-sig)


class FakeAgent:
    """Plays the host agent's protocol (launcher/hostside/agent.py) over scripted processes: hello, one
    attempt after the other on `attempt` requests, `stop`, and the end of the stream."""

    def __init__(self, cluster: Cluster, host: str):
        self.cluster, self.host = cluster, host
        self.frames: queue.Queue[bytes] = queue.Queue()
        self.procs: List[FakeProcess] = []
        self.attempt: Optional[int] = None
        self.closed = False
        self._stopping = False
        self._done = True
        self._ended = False
        self._lock = threading.Lock()
        self.grace, self.hang_s = 0.2, None
        self.frame("! " + json.dumps({"event": "hello", "pid": 1, "t": time.time()}))

    def begin(self, document: dict) -> None:
        c = self.cluster
        with self._lock:
            self.attempt, self.procs, self._done, self._stopping = document["attempt"], [], False, False
        self.grace = float(document["grace"])
        self.hang_s = document.get("hang_s")
        number = document["attempt"]
        c.attempt = max(c.attempt, number)
        for i, p in enumerate(document["processes"]):
            name = p["name"]
            script = c.scripts.get((number, name), c.default)
            c.next_pid += 1
            rank = name[1:] if name.startswith("r") else None
            proc = FakeProcess(self, i, name, script, c.next_pid, bool(p.get("watch")),
                               c.metrics_age.get(rank) if rank else None)
            self.procs.append(proc)
            c.started.append((number, name, proc, tuple(p["argv"])))
            c.warm_specs[(number, name)] = p.get("warm")
            warm = {"warm": True, "warm_s": c.warm_s} if p.get("warm") and number > 1 and c.warm_s else {}
            self.event("started", i=i, pid=proc.pid, pgid=proc.pgid, **warm)
        self.event("ready")
        if c.lose.get(number) == self.host:
            threading.Timer(0.1, self.lose).start()
        self.check_done()

    def lose(self) -> None:
        """The agent is killed: its stream ends without a goodbye, its processes die with it."""
        with self._lock:
            self._done = self._ended = True
        self.frames.put(b"")
        for p in self.procs:
            p.finish(-signal.SIGKILL)

    def frame(self, text: str) -> None:
        self.frames.put((text + "\n").encode("utf-8"))

    def output(self, index: int, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        self.frames.put(b"o %d %d\n" % (index, len(data)) + data)

    def event(self, kind: str, **fields) -> None:
        fields.setdefault("a", self.attempt)
        self.frame("! " + json.dumps(dict(fields, event=kind, t=time.time())))

    def check_done(self) -> None:
        with self._lock:
            if self._done or not self.procs or any(p.poll() is None for p in self.procs):
                return
            self._done = True
        self.event("done")

    # AgentStream
    def read(self, n: int) -> bytes:
        return self.frames.get()

    def write(self, data: bytes) -> None:
        if self._ended:
            raise OSError("the agent is gone")
        for line in data.decode().splitlines():
            op = json.loads(line)
            if op["op"] == "attempt":
                self.begin(op["doc"])
            elif op["op"] == "stop":
                threading.Thread(target=self.stop, args=(int(op["sig"]),), daemon=True).start()
            elif op["op"] == "stacks":
                waiting = {"function": "__call__", "line": 98, "module_file": "mindspore/nn/cell.py",
                           "file": "/venv/lib/python3.11/site-packages/mindspore/nn/cell.py"}
                stuck = {"function": "load_batch", "file": "/w/train.py", "module_file": "train.py",
                         "line": 7}
                names = {p.pid: p.name for p in self.procs}
                records = [{"pid": pid, "status": "ok", "threads": [{"name": "MainThread", "frames": [
                    stuck if names.get(pid) == self.cluster.stuck else waiting]}]} for pid in op["pids"]]
                self.frame("! " + json.dumps({"event": "stacks", "id": op["id"], "records": records}))

    def stop(self, first: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            p.kill_group(signal.SIGTERM)
            p.kill_group(signal.SIGCONT)
        deadline = time.monotonic() + self.grace
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            time.sleep(0.01)
        for p in live:
            if p.poll() is None:
                p.kill_group(signal.SIGKILL)

    def close(self) -> None:
        self.closed = True
        self.stop(signal.SIGTERM)
        if not self._ended:
            self._ended = True
            self.frame("! " + json.dumps({"event": "bye", "t": time.time()}))
            self.frames.put(b"")

    def exit_code(self, timeout: float) -> Optional[int]:
        return 0


@dataclass
class Cluster:
    """The fake hosts' shared state: scripts per (attempt, process), scans per (attempt, host)."""

    scripts: Dict[Tuple[int, str], Script] = field(default_factory=dict)
    default: Script = RUN_FOREVER
    scans: Dict[Tuple[int, str], Tuple[list, str]] = field(default_factory=dict)
    metrics_age: Dict[str, str] = field(default_factory=dict)
    unreachable_scan: set = field(default_factory=set)
    attempt: int = 0
    started: List[Tuple[int, str, FakeProcess, Sequence[str]]] = field(default_factory=list)
    scan_calls: List[Tuple[int, str]] = field(default_factory=list)
    verify_calls: List[Tuple[int, str, str]] = field(default_factory=list)
    corrupt: set = field(default_factory=set)
    sweeps: List[Tuple[int, str, str]] = field(default_factory=list)
    lose: Dict[int, str] = field(default_factory=dict)
    next_pid: int = 1000
    agents: List[Tuple[str, FakeAgent]] = field(default_factory=list)
    stuck: str = ""
    #: The warm entry of each process's document, by (attempt, process name): None when it starts cold.
    warm_specs: Dict[Tuple[int, str], Optional[dict]] = field(default_factory=dict)
    #: With it, processes of later attempts report starting from a warm interpreter that took this long.
    warm_s: float = 0.0

    def processes(self, attempt: int) -> Dict[str, FakeProcess]:
        return {name: proc for n, name, proc, _ in self.started if n == attempt}

    def commands(self, attempt: int) -> Dict[str, str]:
        return {name: argv[-1] for n, name, _, argv in self.started if n == attempt}


class FakeTransport(Transport):
    def __init__(self, host: str, cluster: Cluster):
        self.host, self.cluster = host, cluster

    def start_agent(self, argv, stdin):
        agent = FakeAgent(self.cluster, self.host)
        self.cluster.agents.append((self.host, agent))
        return agent

    def exec(self, argv, *, env=None, cwd=None, timeout=60.0):
        c = self.cluster
        if list(argv[1:4]) == ["-m", "refinenet.manifest", "scan"]:
            c.scan_calls.append((c.attempt, self.host))
            if self.host in c.unreachable_scan:
                raise HostError(self.host, "connection refused")
            records, stderr = c.scans.get((c.attempt, self.host), ([], ""))
            return CommandResult(0, json.dumps(records), stderr)
        if list(argv[1:4]) == ["-m", "refinenet.manifest", "verify"]:
            c.verify_calls.append((c.attempt, self.host, argv[4]))
            if argv[4] in c.corrupt:
                return CommandResult(1, f"not complete: {argv[4]}: sha256 differs from the manifest", "")
            return CommandResult(0, f"complete: {argv[4]}", "")
        raise AssertionError(f"unexpected command {argv}")

    def read_file(self, path):
        raise FileNotFoundError(path)

    def write_file(self, path, data, mode=0o644):
        pass

    def kill_group(self, pgid, sig=signal.SIGTERM, *, verify_env=None):
        return False

    def sweep_job(self, job_id, timeout_s=5.0):
        self.cluster.sweeps.append((self.cluster.attempt, self.host, job_id))
        return SweepResult(self.host, job_id, (), ())

    def probe(self, python="python3"):
        return HostInfo(self.host, self.host, python, "3.11")


class FakeHosts:
    """The job's hosts as the supervisor sees them (launcher.startup.JobHosts): an agent per host,
    started again through the host's transport when it was lost."""

    def __init__(self, transports: Dict[str, FakeTransport], job_id: str):
        self.transports, self.job_id = transports, job_id
        self.agents: Dict[str, HostAgent] = {}
        self.events: List[Tuple[str, str]] = []

    def agent(self, name: str) -> HostAgent:
        agent = self.agents.get(name)
        if agent is None or not agent.alive:
            job = {"job_id": self.job_id, "host": name}
            agent = self.agents[name] = start_agent(self.transports[name], "python3", job)
        return agent

    def transport(self, name: str) -> FakeTransport:
        return self.transports[name]

    def sweep(self, name: str) -> SweepResult:
        return self.transports[name].sweep_job(self.job_id)

    def take(self, host) -> None:
        self.events.append(("take", host.name))

    def leave(self, name: str) -> None:
        self.events.append(("leave", name))

    def record_exclusion(self, name, reason, job_id, out) -> None:
        self.events.append(("excluded", name))

    def warm(self, processes) -> None:
        self.events.append(("warm", tuple(processes)))


def ckpt(host: str, epoch: int, steps: int = 4) -> dict:
    return {"checkpoint": f"/w/{host}/out/r1/ckpt/refinenet-{epoch}_{steps}.ckpt", "epoch": epoch,
            "step": steps, "global_step": epoch * steps}


@dataclass
class Run:
    supervisor: Supervisor
    job: JobDir
    cluster: Cluster
    waits: List[float]
    messages: List[str]

    @property
    def said(self) -> str:
        return "\n".join(self.messages)


class Messages:
    def __init__(self, into: List[str]):
        self.into = into

    def write(self, text: str) -> None:
        self.into.extend(line for line in text.splitlines() if line)

    def flush(self) -> None:
        pass


def make_run(tmp_path, cluster: Cluster, *, max_restarts=2, hang_timeout_s=None, health=None,
             wait=None, backoff_s=0.5, grace=0.2, warm_start: Optional[bool] = None) -> Run:
    data = {"name": "fake", "backend": "dynamic", "device": "cpu",
            "hosts": [{"name": h, "address": f"127.0.0.{i + 2}", "ranks": 1, "workdir": f"/w/{h}"}
                      for i, h in enumerate(HOSTS)],
            "master": {"port": 29500},
            "job": {"data": "train.lst", "output_dir": "out"},
            "restart": {"max_restarts": max_restarts, "backoff_s": backoff_s, "backoff_max_s": 4 * backoff_s},
            "health": {"hang_timeout_s": hang_timeout_s, "check_devices": False},
            "timeouts": {"stop_grace_s": grace}}
    if warm_start is not None:
        data["restart"]["warm_start"] = warm_start
    spec = parse_cluster(data, "fake.yaml", cwd=str(tmp_path), local_python="python3")
    job = JobDir.create(tmp_path / "runs", cluster="fake", stage="r1", spec=data)
    factory = factory_of(spec, "r1", str(job.path), job.job_id)
    logs = job.open_logs()
    waits: List[float] = []
    messages: List[str] = []

    def record_wait(seconds: float) -> bool:
        waits.append(seconds)
        return wait(seconds) if wait else False

    hosts = FakeHosts({h: FakeTransport(h, cluster) for h in HOSTS}, job.job_id)
    factory_of_health = (lambda spec, plan, pids, ranks: health) if health else None
    sup = Supervisor(factory, job, hosts, logs, out=Messages(messages), poll_s=0.01, wait=record_wait,
                     health_factory=factory_of_health)
    return Run(sup, job, cluster, waits, messages)


def run_to_end(run: Run, timeout: float = 20.0) -> JobState:
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("state", run.supervisor.run()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the supervisor did not finish"
    run.supervisor.logs.close()
    return box["state"]


def succeed(after: float = 0.05) -> Script:
    return Script(lines=[(0.0, "epoch: 1 step: 1, loss is 0.5")], exit_after=after, code=0)


# ---------------------------------------------------------------------------------------------


def test_success_stops_the_scheduler_and_records_one_attempt(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): succeed(), (1, "r1"): succeed(0.1)})
    run = make_run(tmp_path, cluster)
    assert run_to_end(run) == JobState.SUCCEEDED
    scheduler = cluster.processes(1)["scheduler"]
    assert scheduler.signals[:2] == [signal.SIGTERM, signal.SIGCONT] and scheduler.poll() == -signal.SIGTERM
    record = run.job.read()
    assert [a.state for a in record.attempts] == [JobState.SUCCEEDED]
    states = {p.name: p.state for p in record.attempts[0].processes}
    assert states == {"scheduler": RankState.STOPPED, "r0": RankState.SUCCEEDED, "r1": RankState.SUCCEEDED}
    assert run.waits == [] and run.supervisor.restarts_used == 0


def test_a_killed_rank_restarts_the_job_from_the_newest_checkpoint_on_every_host(tmp_path):
    cluster = Cluster(scripts={(1, "r1"): Script(every=0.02, exit_after=0.1, code=-9),
                               (2, "r0"): succeed(), (2, "r1"): succeed()})
    cluster.scans[(1, "a")] = ([ckpt("a", 2), ckpt("a", 1)], "")
    cluster.scans[(1, "b")] = ([ckpt("b", 2), ckpt("b", 1)], "")
    run = make_run(tmp_path, cluster)
    assert run_to_end(run) == JobState.SUCCEEDED
    first = cluster.processes(1)
    assert first["r1"].poll() == -9 and first["r0"].poll() == -signal.SIGTERM
    assert first["scheduler"].poll() == -signal.SIGTERM
    commands = cluster.commands(2)
    assert "--resume /w/a/out/r1/ckpt/refinenet-2_4.ckpt" in commands["r0"]
    assert "--resume /w/b/out/r1/ckpt/refinenet-2_4.ckpt" in commands["r1"]
    assert "--resume" not in cluster.commands(1)["r0"]
    record = run.job.read()
    assert [a.state for a in record.attempts] == [JobState.FAILED, JobState.SUCCEEDED]
    assert record.attempts[1].resume == "refinenet-2_4.ckpt (epoch 2, global step 8)"
    failure = record.attempts[0].failure
    assert (failure.rank, failure.host, failure.signal) == (1, "b", 9)
    assert "killed by signal 9 (SIGKILL)" in failure.reason and "r1 working" in failure.log_tail
    assert run.waits == [0.5] and run.supervisor.restarts_used == 1
    assert "resuming from refinenet-2_4.ckpt" in run.said
    assert sorted(h for _, h in cluster.scan_calls) == ["a", "b"]


@pytest.mark.parametrize("warm_start", [None, True, False])
def test_warm_start_asks_the_agents_for_warm_interpreters_unless_switched_off(tmp_path, warm_start):
    cluster = Cluster(scripts={(1, "r1"): Script(every=0.02, exit_after=0.1, code=-9),
                               (2, "r0"): succeed(), (2, "r1"): succeed()})
    run = make_run(tmp_path, cluster, warm_start=warm_start)
    assert run_to_end(run) == JobState.SUCCEEDED
    asked = [e for e in run.supervisor.hosts.events if e[0] == "warm"]
    specs = {key: spec for key, spec in cluster.warm_specs.items() if key[1] in ("r0", "r1")}
    assert set(specs) == {(1, "r0"), (1, "r1"), (2, "r0"), (2, "r1")}
    if warm_start is False:
        # no zygote asked for after the failure, and no process may be handed one: every start is cold
        assert asked == [] and all(spec is None for spec in specs.values())
    else:
        assert asked == [("warm", ("a", "b"))]
        assert all(spec and spec["main"] == "refinenet.train" for spec in specs.values())


def test_the_wait_for_warm_interpreters_is_recorded_per_host_and_left_out_of_the_launchers_part(tmp_path):
    cluster = Cluster(scripts={(1, "r1"): Script(every=0.02, exit_after=0.1, code=-9),
                               (2, "r0"): succeed(0.3), (2, "r1"): succeed(0.3)}, warm_s=0.25)
    run = make_run(tmp_path, cluster)
    assert run_to_end(run) == JobState.SUCCEEDED
    recovery = Recovery.from_dict(run.job.read().attempts[0].recovery)
    # host a takes two interpreters one after the other (the scheduler's and r0's), b one
    assert recovery.start == "warm" and recovery.details[WARM_WAIT] == pytest.approx(0.5)
    phases = dict(recovery.phases())
    parts = phases["detect"] + phases["teardown"] + phases["resume point"] + phases["start"]
    assert recovery.launcher_s == pytest.approx(parts - min(phases["start"], 0.5))


def test_the_resume_point_is_looked_for_while_the_backoff_runs(tmp_path):
    cluster = Cluster(scripts={(1, "r1"): Script(every=0.02, exit_after=0.1, code=-9),
                               (2, "r0"): succeed(), (2, "r1"): succeed()})
    for host in HOSTS:
        cluster.scans[(1, host)] = ([ckpt(host, 2), ckpt(host, 1)], "")
    during_backoff = []

    def backoff(seconds):
        deadline = time.monotonic() + 10
        while len(cluster.verify_calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        during_backoff.append((len(cluster.scan_calls), len(cluster.verify_calls), "resuming" in run.said))
        return False

    run = make_run(tmp_path, cluster, wait=backoff)
    assert run_to_end(run) == JobState.SUCCEEDED
    # both hosts scanned and the chosen checkpoint verified on both while waiting; said once, after it
    assert during_backoff == [(2, 2, False)]
    assert len(cluster.scan_calls) == 2 and len(cluster.verify_calls) == 2
    said = [m.split(": ", 1)[1] for m in run.messages]
    assert [m for m in said if m.startswith("resuming from")] == ["resuming from refinenet-2_4.ckpt "
                                                                   "(epoch 2, global step 8)"]
    assert said.index(next(m for m in said if m.startswith("attempt 1 failed"))) < \
        said.index(next(m for m in said if m.startswith("resuming from")))
    assert "--resume /w/b/out/r1/ckpt/refinenet-2_4.ckpt" in cluster.commands(2)["r1"]


def test_a_newest_checkpoint_refused_on_one_host_falls_back_to_an_older_common_one(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=1),
                               (2, "r0"): succeed(), (2, "r1"): succeed()})
    cluster.scans[(1, "a")] = ([ckpt("a", 2), ckpt("a", 1)], "")
    refused = "skipped /w/b/out/r1/ckpt/refinenet-2_4.ckpt: size is 100 bytes, the manifest says 4096\n"
    cluster.scans[(1, "b")] = ([ckpt("b", 1)], refused)
    run = make_run(tmp_path, cluster)
    assert run_to_end(run) == JobState.SUCCEEDED
    assert "--resume /w/b/out/r1/ckpt/refinenet-1_4.ckpt" in cluster.commands(2)["r1"]
    said = run.said
    assert "checkpoint not used: refinenet-2_4.ckpt on b: size is 100 bytes, the manifest says 4096" in said
    assert "resuming from refinenet-1_4.ckpt (epoch 1, global step 4) (falling back to an older one)" in said
    resume = run.job.read().attempts[1].resume
    assert resume.startswith("refinenet-1_4.ckpt") and "refinenet-2_4.ckpt on b: size is 100" in resume


def test_no_common_checkpoint_restarts_from_the_beginning(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=1),
                               (2, "r0"): succeed(), (2, "r1"): succeed()})
    cluster.scans[(1, "a")] = ([ckpt("a", 1)], "")
    run = make_run(tmp_path, cluster)
    assert run_to_end(run) == JobState.SUCCEEDED
    assert "--resume" not in cluster.commands(2)["r0"]
    assert "refinenet-1_4.ckpt: missing on b (complete on a)" in run.said
    assert "starts from the beginning" in run.said
    assert run.job.read().attempts[1].resume is None


def test_restarts_are_counted_for_the_job_with_growing_backoff_then_it_fails(tmp_path):
    fail = Script(lines=[(0.0, "loading"), (0.01, "Traceback: boom")], exit_after=0.05, code=3)
    cluster = Cluster(scripts={(n, "r1"): fail for n in (1, 2, 3)})
    run = make_run(tmp_path, cluster, max_restarts=2, backoff_s=0.5)
    assert run_to_end(run) == JobState.FAILED
    assert run.waits == [0.5, 1.0]
    record = run.job.read()
    assert [a.state for a in record.attempts] == [JobState.FAILED] * 3
    assert record.state == JobState.FAILED and "2 of 2 used" in record.message
    cause = run.supervisor.root_cause
    assert (cause.rank, cause.host, cause.exit_code) == (1, "b", 3)
    assert list(cause.log_tail) == ["loading", "Traceback: boom"]
    assert len(cluster.scan_calls) == 4


def test_zero_restarts_and_bad_input_end_at_the_first_failure(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=2)})
    run = make_run(tmp_path, cluster, max_restarts=5)
    assert run_to_end(run) == JobState.FAILED
    assert len(run.job.read().attempts) == 1 and run.waits == []
    assert "not restarted" in run.job.read().message


def test_root_cause_is_the_earliest_failure_not_the_ones_it_caused(tmp_path):
    # rank 1 is killed first; the scheduler and rank 0 fail because of it, later and in the same poll.
    cluster = Cluster(scripts={(1, "r1"): Script(exit_after=0.05, code=-9),
                               (1, "scheduler"): Script(exit_after=0.3, code=1),
                               (1, "r0"): Script(exit_after=0.3, code=1)})
    run = make_run(tmp_path, cluster, max_restarts=0)
    assert run_to_end(run) == JobState.FAILED
    cause = run.supervisor.root_cause
    assert (cause.rank, cause.signal) == (1, 9)


def test_stop_during_backoff_starts_no_other_attempt(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=1)})
    holder = {}

    def wait(seconds):
        holder["run"].supervisor.request_stop()
        return True

    run = holder["run"] = make_run(tmp_path, cluster, wait=wait, backoff_s=30)
    assert run_to_end(run) == JobState.STOPPED
    assert run.waits == [30] and cluster.attempt == 1
    record = run.job.read()
    assert record.state == JobState.STOPPED and len(record.attempts) == 1
    assert "stop requested during backoff" in record.message


def test_real_backoff_is_interrupted_by_a_stop(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=1)})
    run = make_run(tmp_path, cluster, backoff_s=30)
    run.supervisor._wait = run.supervisor.stop_event.wait
    threading.Timer(0.5, run.supervisor.request_stop).start()
    t0 = time.monotonic()
    assert run_to_end(run) == JobState.STOPPED
    assert time.monotonic() - t0 < 5 and cluster.attempt == 1


def test_stop_while_running_tears_everything_down(tmp_path):
    cluster = Cluster()
    run = make_run(tmp_path, cluster)
    threading.Timer(0.3, run.supervisor.request_stop).start()
    assert run_to_end(run) == JobState.STOPPED
    assert all(p.poll() == -signal.SIGTERM for p in cluster.processes(1).values())
    assert run.job.read().attempts[0].state == JobState.STOPPED


def test_a_lost_agent_fails_the_attempt_and_the_job_is_swept_on_its_host_only(tmp_path):
    cluster = Cluster(scripts={(2, "r0"): succeed(), (2, "r1"): succeed()}, lose={1: "b"})
    run = make_run(tmp_path, cluster)
    assert run_to_end(run) == JobState.SUCCEEDED
    record = run.job.read()
    assert [a.state for a in record.attempts] == [JobState.FAILED, JobState.SUCCEEDED]
    assert record.attempts[0].failure.host == "b"
    assert cluster.sweeps == [(1, "b", record.job_id)]


def test_a_silent_rank_is_a_hang_the_others_are_not(tmp_path):
    cluster = Cluster(scripts={(1, "r1"): Script(lines=[(0.0, "compiling")]),
                               (2, "r0"): succeed(), (2, "r1"): succeed()})
    run = make_run(tmp_path, cluster, hang_timeout_s=0.4)
    t0 = time.monotonic()
    assert run_to_end(run) == JobState.SUCCEEDED
    failure = run.job.read().attempts[0].failure
    assert failure.rank == 1 and failure.host == "b" and "no progress for" in failure.reason
    assert "hang timeout 0.4 s" in failure.reason and failure.log_tail == ("compiling",)
    assert time.monotonic() - t0 < 5


def test_a_rank_writing_metrics_records_is_not_hung(tmp_path):
    cluster = Cluster(scripts={(1, "r1"): Script(exit_after=1.0, code=0),
                               (1, "r0"): Script(every=0.02, exit_after=1.0, code=0)})
    cluster.metrics_age["1"] = "0.05"
    run = make_run(tmp_path, cluster, hang_timeout_s=0.3)
    assert run_to_end(run) == JobState.SUCCEEDED
    assert len(run.job.read().attempts) == 1


def test_a_stopped_rank_gets_sigcont_and_one_ignoring_sigterm_gets_sigkill(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=1),
                               (1, "r1"): Script(every=0.02, ignores_term=True)})
    run = make_run(tmp_path, cluster, max_restarts=0, grace=0.2)
    assert run_to_end(run) == JobState.FAILED
    r1 = cluster.processes(1)["r1"]
    assert r1.signals == [signal.SIGTERM, signal.SIGCONT, signal.SIGKILL] and r1.poll() == -signal.SIGKILL
    result = run.supervisor.results[0]
    assert 0.2 <= result.teardown_s < 1.5


class SickDevice(HealthWatch):
    def __init__(self, after: float):
        self.at = time.monotonic() + after
        self.stopped = False

    def failures(self):
        if time.monotonic() < self.at:
            return ()
        return [failure(1, "b", None, kind=FailureKind.DEVICE,
                        reason="unhealthy device: npu 1 health Critical")]

    def stop(self):
        self.stopped = True


def test_an_unhealthy_device_fails_the_attempt(tmp_path):
    health = SickDevice(0.1)
    run = make_run(tmp_path, Cluster(), max_restarts=0, health=health)
    assert run_to_end(run) == JobState.FAILED
    assert "unhealthy device" in run.supervisor.root_cause.reason and health.stopped
    assert all(p.poll() is not None for p in run.cluster.processes(1).values())


def test_a_host_that_cannot_be_scanned_costs_a_restart_not_the_progress(tmp_path):
    # attempt 2 fails before anything starts (the scan): attempt 3 runs these scripts
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=1),
                               (3, "r0"): succeed(), (3, "r1"): succeed()},
                      unreachable_scan={"b"})
    cluster.scans[(1, "a")] = ([ckpt("a", 1)], "")
    cluster.scans[(1, "b")] = ([ckpt("b", 1)], "")
    run = make_run(tmp_path, cluster, max_restarts=2)

    def heal(seconds):  # b can be reached again (the resume point is looked for during, or after, this wait)
        if len(run.waits) == 2:
            cluster.unreachable_scan.clear()
        return False

    run.supervisor._wait = lambda s: (run.waits.append(s), heal(s))[1]
    assert run_to_end(run) == JobState.SUCCEEDED
    record = run.job.read()
    assert [a.state for a in record.attempts] == [JobState.FAILED, JobState.FAILED, JobState.SUCCEEDED]
    assert "cannot read or carry the checkpoints there" in record.attempts[1].failure.reason
    assert record.attempts[1].processes == ()
    assert "--resume /w/b/out/r1/ckpt/refinenet-1_4.ckpt" in cluster.commands(3)["r1"]


def test_scan_output_that_is_not_json_is_a_host_error(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=1)})
    run = make_run(tmp_path, cluster, max_restarts=1)
    original = FakeTransport.exec

    def bad_exec(self, argv, **kw):
        if "refinenet.manifest" in argv:
            return CommandResult(0, "garbage", "")
        return original(self, argv, **kw)

    for t in run.supervisor.hosts.transports.values():
        t.exec = bad_exec.__get__(t)
    assert run_to_end(run) == JobState.FAILED
    assert "unreadable checkpoint scan" in run.job.read().attempts[1].failure.reason


@pytest.mark.parametrize("code,expected", [(-15, "killed by signal 15 (SIGTERM)"), (7, "exit code 7")])
def test_the_scheduler_failing_alone_is_reported_as_the_scheduler(tmp_path, code, expected):
    cluster = Cluster(scripts={(1, "scheduler"): Script(lines=[(0.0, "scheduler up")], exit_after=0.05,
                                                        code=code)})
    run = make_run(tmp_path, cluster, max_restarts=0)
    assert run_to_end(run) == JobState.FAILED
    cause = run.supervisor.root_cause
    assert cause.rank is None and cause.host == "a"
    assert cause.who == "the scheduler" and cause.reason == expected
    assert list(cause.log_tail) == ["scheduler up"]
    assert str(cause) == f"the scheduler on a: {expected}"
    assert run.job.read().attempts[0].failure.summary() == f"the scheduler on a: {expected}"


def test_a_failure_as_the_slurm_allocation_ends_fails_the_job_with_that_reason_and_no_restart(tmp_path):
    fail = Script(exit_after=0.05, code=-15)
    cluster = Cluster(scripts={(n, "r1"): fail for n in (1, 2)})
    run = make_run(tmp_path, cluster, max_restarts=3)
    run.supervisor.allocation_ended = lambda: "the Slurm allocation's time limit (00:01:00) ended the job"
    assert run_to_end(run) == JobState.FAILED
    record = run.job.read()
    assert len(record.attempts) == 1 and run.waits == []
    assert record.message == "the Slurm allocation's time limit (00:01:00) ended the job"


def test_a_stop_asked_inside_a_slurm_allocation_stays_a_stop(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(every=0.02), (1, "r1"): Script(every=0.02)})
    run = make_run(tmp_path, cluster)
    run.supervisor.allocation_ended = lambda: "Slurm job 7 is ending (CANCELLED, reason None)"
    threading.Timer(0.3, run.supervisor.request_stop).start()
    assert run_to_end(run) == JobState.STOPPED


def test_only_the_chosen_checkpoint_is_verified_and_a_corrupt_one_is_passed_over(tmp_path):
    cluster = Cluster(scripts={(1, "r0"): Script(exit_after=0.05, code=1),
                               (2, "r0"): succeed(), (2, "r1"): succeed()})
    for host in HOSTS:
        cluster.scans[(1, host)] = ([ckpt(host, 3), ckpt(host, 2), ckpt(host, 1)], "")
    cluster.corrupt.add("/w/b/out/r1/ckpt/refinenet-3_4.ckpt")
    run = make_run(tmp_path, cluster)
    assert run_to_end(run) == JobState.SUCCEEDED
    verified = sorted(path.rsplit("/", 1)[-1] + "@" + host for _, host, path in cluster.verify_calls)
    assert verified == ["refinenet-2_4.ckpt@a", "refinenet-2_4.ckpt@b", "refinenet-3_4.ckpt@a",
                        "refinenet-3_4.ckpt@b"]
    assert "--resume /w/b/out/r1/ckpt/refinenet-2_4.ckpt" in cluster.commands(2)["r1"]
    assert "refinenet-3_4.ckpt on b: does not match its manifest" in run.said


def test_a_hang_takes_every_ranks_stack_and_names_the_rank_stuck_elsewhere(tmp_path):
    cluster = Cluster(scripts={(1, "r1"): Script(lines=[(0.0, "compiling")]),
                               (1, "r0"): Script(every=0.02), (2, "r0"): succeed(), (2, "r1"): succeed()})
    cluster.stuck = "r1"
    run = make_run(tmp_path, cluster, hang_timeout_s=0.4)
    assert run_to_end(run) == JobState.SUCCEEDED
    failure = run.job.read().attempts[0].failure
    assert failure.kind == FailureKind.HANG
    assert "stacks: rank 1 on b: in `load_batch` (train.py:7)" in failure.reason
    folders = list((run.job.path / "stacks").iterdir())
    assert len(folders) == 1 and (folders[0] / "summary.txt").read_text().startswith("rank 1 on b")


def test_a_hang_is_blamed_on_the_stuck_rank_when_a_waiting_one_fell_silent_first(tmp_path):
    # r0 is silent from the start, r1 from 0.3 s on: the hang check fires on r0 first
    cluster = Cluster(scripts={(1, "r0"): Script(lines=[(0.0, "waiting")]),
                               (1, "r1"): Script(lines=[(0.3, "loading")]),
                               (2, "r0"): succeed(), (2, "r1"): succeed()})
    cluster.stuck = "r1"
    run = make_run(tmp_path, cluster, hang_timeout_s=0.4)
    assert run_to_end(run) == JobState.SUCCEEDED
    failure = run.job.read().attempts[0].failure
    assert (failure.kind, failure.rank, failure.host) == (FailureKind.HANG, 1, "b")
    assert "stacks: rank 1 on b: in `load_batch` (train.py:7)" in failure.reason
    assert failure.reason.endswith("(the hang check fired on rank 0 on a first)")
    assert failure.log_tail == ("loading",)


def test_the_checkpoint_saved_on_request_is_named_with_its_step():
    writer = {"event": "saved_on_request", "step": 14, "epoch": 2, "epoch_step": 4,
              "checkpoint": "/w/a/out/r1/ckpt/refinenet-2_4.ckpt"}
    other = dict(writer, checkpoint=None)
    assert describe_saved([writer, other]) == "refinenet-2_4.ckpt after global step 14 (epoch 2 step 4)"
    assert describe_saved([other, dict(other, step=15)]) == \
        "a checkpoint after global steps 14, 15 (the ranks disagree)"
    assert describe_saved([]) == "a checkpoint"
