"""The job directory `runs/<job-id>/` and its record `job.json`.

The launcher writes `job.json` as the job goes (spec, plan summary, state, attempts, the host,
pid and process group of every process) so that `refinenet-launch status|logs|stop|list`, run
from any terminal, can find a job and act on it. Layout::

    runs/<job-id>/job.json        the JobRecord, replaced atomically on every update
    runs/<job-id>/logs/           rank_<r>.log, <process>.log, job.log (see launcher.logs.format)
    runs/<job-id>/metrics.jsonl   progress records parsed from the ranks' log lines
    runs/<job-id>/stragglers.jsonl  ranks flagged as stragglers (also in job.json `stragglers`)

Updates are read-modify-write under an exclusive `flock` on `runs/<job-id>/.lock` (the launcher
and `stop` may both write) and land with write-temp-fsync-rename, so readers never see a torn file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import json
import os
import re
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from launcher.errors import BadInput, JobNotFound
from launcher.failures import Failure
from launcher.logs.aggregator import LogAggregator
from launcher.logs.progress import ProgressRecorder
from launcher.states import (
    JobState,
    RankState,
    check_job_transition,
    check_rank_transition,
    check_resume_transition,
)
from launcher.stragglers import DEFAULT_FACTOR, DEFAULT_WINDOW, Straggler

FORMAT = "refinenet-job/1"
RUNS_DIR_ENV = "REFINENET_RUNS_DIR"
JOB_ID_ENV = "REFINENET_JOB_ID"
DEFAULT_RUNS_DIR = "runs"
JOB_FILE = "job.json"
LOCK_FILE = ".lock"
LOGS_DIR = "logs"
METRICS_FILE = "metrics.jsonl"
STRAGGLERS_FILE = "stragglers.jsonl"
HEALTH_FILE = "health.jsonl"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def resolve_runs_dir(value: Union[str, os.PathLike, None] = None) -> Path:
    """The runs directory: `value` (from `--runs-dir`), else $REFINENET_RUNS_DIR, else ./runs."""
    return Path(value or os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)


def new_job_id(cluster: str, stage: str, now: Optional[float] = None) -> str:
    """`<cluster>-<stage>-<YYYYmmdd-HHMMSS>-<4 hex>`: sorts by time, readable, unique per second."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    parts = [_UNSAFE.sub("_", p).strip("._-") or "job" for p in (cluster, stage)]
    return f"{parts[0]}-{parts[1]}-{stamp}-{secrets.token_hex(2)}"


def format_time(t: Optional[float]) -> str:
    """Local wall time for humans (`2025-11-25 22:45:13`); empty for None."""
    if t is None:
        return ""
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` via a temporary file in the same folder, fsync and rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _opt_int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


def _opt_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


@dataclass(frozen=True)
class ProcessRecord:
    """One process of an attempt on its host: a rank (`rank` set) or an auxiliary process."""

    name: str
    host: str
    pid: int
    pgid: int
    state: RankState = RankState.RUNNING
    rank: Optional[int] = None
    exit_code: Optional[int] = None
    started: Optional[float] = None
    ended: Optional[float] = None

    @staticmethod
    def rank_name(rank: int) -> str:
        return f"r{rank}"

    @classmethod
    def for_rank(cls, rank: int, host: str, pid: int, pgid: int, **kw: Any) -> ProcessRecord:
        return cls(name=cls.rank_name(rank), host=host, pid=pid, pgid=pgid, rank=rank, **kw)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "rank": self.rank, "host": self.host, "pid": self.pid,
                "pgid": self.pgid, "state": self.state.value, "exit_code": self.exit_code,
                "started": self.started, "ended": self.ended}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProcessRecord:
        return cls(name=str(d["name"]), host=str(d["host"]), pid=int(d["pid"]), pgid=int(d["pgid"]),
                   state=RankState(d.get("state", "RUNNING")), rank=_opt_int(d.get("rank")),
                   exit_code=_opt_int(d.get("exit_code")), started=_opt_float(d.get("started")),
                   ended=_opt_float(d.get("ended")))


@dataclass(frozen=True)
class AttemptRecord:
    """One launch of all the job's processes, as recorded; a restart is a new attempt."""

    number: int
    state: JobState = JobState.STARTING
    started: Optional[float] = None
    ended: Optional[float] = None
    resume: Optional[str] = None
    failure: Optional[Failure] = None
    processes: Tuple[ProcessRecord, ...] = ()
    #: The stage it ran (a multi-stage job runs its stages as attempts in order).
    stage: str = ""
    #: What its failure cost (launcher.recovery.Recovery.to_dict): the phases up to the next attempt's
    #: first step.
    recovery: Optional[Mapping[str, Any]] = None

    @property
    def ranks(self) -> List[ProcessRecord]:
        return sorted((p for p in self.processes if p.rank is not None), key=lambda p: p.rank)

    def process(self, name: str) -> Optional[ProcessRecord]:
        return next((p for p in self.processes if p.name == name), None)

    def to_dict(self) -> Dict[str, Any]:
        return {"number": self.number, "stage": self.stage, "state": self.state.value,
                "started": self.started, "ended": self.ended, "resume": self.resume,
                "failure": self.failure.to_dict() if self.failure else None,
                "processes": [p.to_dict() for p in self.processes],
                "recovery": dict(self.recovery) if self.recovery else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttemptRecord:
        failure = d.get("failure")
        return cls(number=int(d["number"]), state=JobState(d.get("state", "STARTING")),
                   started=_opt_float(d.get("started")), ended=_opt_float(d.get("ended")),
                   resume=d.get("resume"), failure=Failure.from_dict(failure) if failure else None,
                   processes=tuple(ProcessRecord.from_dict(p) for p in d.get("processes") or ()),
                   stage=str(d.get("stage") or ""), recovery=d.get("recovery") or None)


@dataclass(frozen=True)
class LauncherInfo:
    """The launcher process that owns a job: lets `stop` signal it if it still runs on this machine."""

    pid: int
    host: str
    started: Optional[float] = None

    @classmethod
    def current(cls) -> LauncherInfo:
        return cls(pid=os.getpid(), host=socket.gethostname(), started=_process_start_time(os.getpid()))

    def is_alive_here(self) -> bool:
        """True if this process still runs on this machine (the same pid and start time)."""
        if self.host != socket.gethostname():
            return False
        started = _process_start_time(self.pid)
        if started is None:
            return False
        return self.started is None or abs(started - self.started) < 0.01

    def to_dict(self) -> Dict[str, Any]:
        return {"pid": self.pid, "host": self.host, "started": self.started}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LauncherInfo:
        return cls(pid=int(d["pid"]), host=str(d["host"]), started=_opt_float(d.get("started")))


def _process_start_time(pid: int) -> Optional[float]:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass(frozen=True)
class JobRecord:
    """Everything `job.json` holds. Pure: the `with_*` methods return updated copies."""

    job_id: str
    cluster: str
    stage: str
    state: JobState = JobState.PENDING
    created: float = 0.0
    updated: float = 0.0
    spec: Mapping[str, Any] = field(default_factory=dict)
    cluster_file: str = ""
    plan: Mapping[str, Any] = field(default_factory=dict)
    launcher: Optional[LauncherInfo] = None
    attempts: Tuple[AttemptRecord, ...] = ()
    stop_requested: bool = False
    #: `stop --save` (or SIGUSR1 to the launcher): the ranks finish their step, save and stop.
    save_requested: bool = False
    message: str = ""
    stragglers: Tuple[Straggler, ...] = ()
    #: Host name -> {"state": active|spare|excluded, "reason", "replaced_by"}.
    hosts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: A job run by Slurm: {"job_id": Slurm's job id, "submitted": queued by `submit`, "nodes": [...],
    #: "partition", "time_limit", "script"}.
    slurm: Mapping[str, Any] = field(default_factory=dict)
    #: The launch as asked (`launcher.planning.request.LaunchRequest.to_dict`).
    request: Mapping[str, Any] = field(default_factory=dict)
    #: The job's leases on shared hosts (`launcher.sharing.leases.JobLeases.summary`): its queue key, when
    #: its tickets were in every queue, when every lease was taken, and what it holds on each host.
    leases: Mapping[str, Any] = field(default_factory=dict)

    @property
    def current_attempt(self) -> Optional[AttemptRecord]:
        return self.attempts[-1] if self.attempts else None

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def active_processes(self) -> List[ProcessRecord]:
        """Processes of any attempt not known to have ended (the ones `stop` must end)."""
        return [p for a in self.attempts for p in a.processes if not p.state.is_final]

    def with_state(self, state: Union[JobState, str], message: Optional[str] = None) -> JobRecord:
        """Move the job to `state` (guarded; staying in a non-final state is allowed: a stage of a
        multi-stage job ends while the job runs on); an unfinished current attempt follows it."""
        new = JobState(state)
        if new != self.state or new.is_final:
            new = check_job_transition(self.state, state, what=f"job {self.job_id}")
        attempts = self.attempts
        if attempts and not attempts[-1].state.is_final:
            last = attempts[-1]
            if new.is_final or new == JobState.RESTARTING:
                last = dataclasses.replace(last, ended=time.time(),
                                           state=JobState.FAILED if new == JobState.RESTARTING else new)
            else:
                last = dataclasses.replace(last, state=new)
            attempts = attempts[:-1] + (last,)
        return dataclasses.replace(self, state=new, attempts=attempts,
                                   message=self.message if message is None else message)

    def with_resumed(self, launcher: Optional[LauncherInfo] = None) -> JobRecord:
        """A FAILED or STOPPED job continued by `refinenet-launch resume` (guarded): RESTARTING, its stop and
        save requests cleared, owned by `launcher`."""
        new = check_resume_transition(self.state, what=f"job {self.job_id}")
        return dataclasses.replace(self, state=new, stop_requested=False, save_requested=False,
                                   launcher=launcher or self.launcher, message="resumed")

    def with_straggler(self, straggler: Straggler) -> JobRecord:
        """Add a flagged rank (once per attempt and rank)."""
        if any(s.key == straggler.key for s in self.stragglers):
            return self
        return dataclasses.replace(self, stragglers=self.stragglers + (straggler,))

    def with_new_attempt(self, resume: Optional[str] = None, at: Optional[float] = None,
                         stage: str = "") -> JobRecord:
        new = check_job_transition(self.state, JobState.STARTING, what=f"job {self.job_id}")
        attempt = AttemptRecord(number=len(self.attempts) + 1, state=JobState.STARTING,
                          started=time.time() if at is None else at, resume=resume, stage=stage or self.stage)
        return dataclasses.replace(self, state=new, attempts=self.attempts + (attempt,))

    def with_process(self, proc: ProcessRecord) -> JobRecord:
        """Add `proc` to the current attempt, or update the one of that name (guarded state change)."""
        attempt = self._require_attempt()
        old = attempt.process(proc.name)
        if old is None:
            processes = attempt.processes + (proc,)
        else:
            if old.state != proc.state:
                check_rank_transition(old.state, proc.state,
                                      what=f"job {self.job_id} {proc.name} on {proc.host}")
            processes = tuple(proc if p.name == proc.name else p for p in attempt.processes)
        return self._with_current(dataclasses.replace(attempt, processes=processes))

    def with_process_state(self, name: str, state: Union[RankState, str], exit_code: Optional[int] = None,
                           at: Optional[float] = None) -> JobRecord:
        attempt = self._require_attempt()
        old = attempt.process(name)
        if old is None:
            raise KeyError(f"job {self.job_id} attempt {attempt.number} has no process {name!r}")
        state = RankState(state)
        ended = old.ended
        if state.is_final and ended is None:
            ended = time.time() if at is None else at
        new = dataclasses.replace(old, state=state, ended=ended,
                                  exit_code=old.exit_code if exit_code is None else exit_code)
        return self.with_process(new)

    def with_processes_stopped(self, which: Callable[[ProcessRecord], bool] = lambda p: True,
                               at: Optional[float] = None) -> JobRecord:
        """Mark the unfinished processes `which` selects, in every attempt, STOPPED."""
        at = time.time() if at is None else at

        def stop(p: ProcessRecord) -> ProcessRecord:
            if p.state.is_final or not which(p):
                return p
            return dataclasses.replace(p, state=RankState.STOPPED, ended=p.ended or at)

        attempts = tuple(dataclasses.replace(a, processes=tuple(stop(p) for p in a.processes))
                         for a in self.attempts)
        return dataclasses.replace(self, attempts=attempts)

    def with_attempt_end(self, outcome: Union[JobState, str], failure: Optional[Failure] = None,
                         job_state: Union[JobState, str, None] = None, message: Optional[str] = None,
                         at: Optional[float] = None) -> JobRecord:
        """End the current attempt with `outcome`; the job goes to `job_state` (default: `outcome`)."""
        attempt = self._require_attempt()
        outcome = JobState(outcome)
        if not outcome.is_final:
            raise ValueError(f"an attempt ends SUCCEEDED, FAILED or STOPPED, not {outcome.value}")
        ended = dataclasses.replace(attempt, state=outcome, failure=failure or attempt.failure,
                                    ended=time.time() if at is None else at)
        return self._with_current(ended).with_state(job_state or outcome, message)

    def _require_attempt(self) -> AttemptRecord:
        if not self.attempts:
            raise ValueError(f"job {self.job_id} has no attempt yet")
        return self.attempts[-1]

    def _with_current(self, attempt: AttemptRecord) -> JobRecord:
        return dataclasses.replace(self, attempts=self.attempts[:-1] + (attempt,))

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "job_id": self.job_id, "cluster": self.cluster, "stage": self.stage,
                "state": self.state.value, "created": self.created, "updated": self.updated,
                "stop_requested": self.stop_requested, "save_requested": self.save_requested,
                "message": self.message,
                "launcher": self.launcher.to_dict() if self.launcher else None,
                "cluster_file": self.cluster_file, "spec": dict(self.spec), "plan": dict(self.plan),
                "attempts": [a.to_dict() for a in self.attempts],
                "stragglers": [s.to_dict() for s in self.stragglers],
                "hosts": {name: dict(state) for name, state in self.hosts.items()}, "slurm": dict(self.slurm),
                "request": dict(self.request), "leases": dict(self.leases)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobRecord:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} record (format {d.get('format')!r})")
        launcher = d.get("launcher")
        return cls(job_id=str(d["job_id"]), cluster=str(d.get("cluster", "")), stage=str(d.get("stage", "")),
                   state=JobState(d["state"]), created=float(d.get("created") or 0.0),
                   updated=float(d.get("updated") or 0.0), spec=d.get("spec") or {},
                   cluster_file=str(d.get("cluster_file") or ""), plan=d.get("plan") or {},
                   launcher=LauncherInfo.from_dict(launcher) if launcher else None,
                   attempts=tuple(AttemptRecord.from_dict(a) for a in d.get("attempts") or ()),
                   stop_requested=bool(d.get("stop_requested", False)),
                   save_requested=bool(d.get("save_requested", False)), message=str(d.get("message") or ""),
                   stragglers=tuple(Straggler.from_dict(s) for s in d.get("stragglers") or ()),
                   hosts={str(k): dict(v) for k, v in (d.get("hosts") or {}).items()},
                   slurm=dict(d.get("slurm") or {}), request=dict(d.get("request") or {}),
                   leases=dict(d.get("leases") or {}))


class JobDir:
    """A job's directory: creates it, resolves it from an id or path, reads and updates `job.json`."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"JobDir({str(self.path)!r})"

    @property
    def job_id(self) -> str:
        return self.path.name

    @property
    def job_file(self) -> Path:
        return self.path / JOB_FILE

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def stragglers_file(self) -> Path:
        return self.path / STRAGGLERS_FILE

    @property
    def health_file(self) -> Path:
        return self.path / HEALTH_FILE

    @classmethod
    def create(cls, runs_dir: Union[str, os.PathLike, None], *, cluster: str, stage: str,
               spec: Mapping[str, Any], cluster_file: str = "", plan: Optional[Mapping[str, Any]] = None,
               launcher: Optional[LauncherInfo] = None, job_id: Optional[str] = None, owned: bool = True,
               request: Optional[Mapping[str, Any]] = None) -> JobDir:
        """Make `runs/<new job id>/` with `logs/` and a PENDING `job.json` owned by this process (by no
        process yet with `owned=False`: a queued job whose launcher starts later)."""
        spec, plan = _plain_json(spec, "spec"), _plain_json(plan or {}, "plan")
        runs = resolve_runs_dir(runs_dir)
        runs.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for _ in range(100):
            candidate = job_id or new_job_id(cluster, stage, now)
            try:
                (runs / candidate).mkdir()
                break
            except FileExistsError:
                if job_id:
                    raise BadInput(f"job directory {runs / candidate} already exists") from None
        else:
            raise RuntimeError(f"could not find a free job id in {runs}")
        job = cls(runs / candidate)
        job.logs_dir.mkdir()
        record = JobRecord(job_id=candidate, cluster=cluster, stage=stage, created=now, updated=now,
                           spec=spec, cluster_file=str(cluster_file), plan=plan,
                           launcher=launcher or (LauncherInfo.current() if owned else None),
                           request=_plain_json(request or {}, "request"))
        write_json_atomic(job.job_file, record.to_dict())
        return job

    @classmethod
    def resolve(cls, ref: str, runs_dir: Union[str, os.PathLike, None] = None) -> JobDir:
        """The job `ref` names: a job directory path, an id in the runs directory, or a unique id prefix.

        Raises `JobNotFound` listing the job directories that exist.
        """
        runs = resolve_runs_dir(runs_dir)
        as_path = Path(ref)
        if (as_path / JOB_FILE).is_file():
            return cls(as_path)
        if "/" not in ref and ref not in ("", ".", ".."):
            if (runs / ref / JOB_FILE).is_file():
                return cls(runs / ref)
            matches = [j for j in list_job_dirs(runs) if j.job_id.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        raise JobNotFound(ref, [str(j.path) for j in list_job_dirs(runs)])

    def read(self) -> JobRecord:
        """The record in job.json; `BadInput` naming the file when this user may not read it (another
        user's job)."""
        try:
            with open(self.job_file, encoding="utf-8") as f:
                return JobRecord.from_dict(json.load(f))
        except PermissionError as exc:
            raise BadInput(f"cannot read {self.job_file}: {exc.strerror} (a job of another user?)") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(self, change: Callable[[JobRecord], JobRecord]) -> JobRecord:
        """Apply `change` to the record on disk under the job's lock and write it back atomically."""
        with self._locked():
            record = change(self.read())
            record = dataclasses.replace(record, updated=time.time())
            write_json_atomic(self.job_file, record.to_dict())
            return record

    def set_state(self, state: Union[JobState, str], message: Optional[str] = None) -> JobRecord:
        return self.update(lambda r: r.with_state(state, message))

    def set_hosts(self, hosts: Mapping[str, Mapping[str, Any]]) -> JobRecord:
        """Record every host's part in the job (active, spare, excluded and why)."""
        hosts = {name: dict(state) for name, state in hosts.items()}
        return self.update(lambda r: dataclasses.replace(r, hosts=hosts))

    def set_leases(self, leases: Mapping[str, Any]) -> JobRecord:
        """Record the job's leases on shared hosts (its place in their queues, what it holds)."""
        leases = _plain_json(leases, "leases")
        return self.update(lambda r: dataclasses.replace(r, leases=leases))

    def set_slurm(self, **info: Any) -> JobRecord:
        """Add to what the record says about the job's Slurm allocation."""
        return self.update(lambda r: dataclasses.replace(r, slurm={**r.slurm, **_plain_json(info, "slurm")}))

    def claim(self, *, spec: Mapping[str, Any], plan: Mapping[str, Any], cluster_file: str = "",
              request: Optional[Mapping[str, Any]] = None) -> JobDir:
        """Take over a job `submit` queued (PENDING, no launcher yet) as the launcher running it; `BadInput`
        for any other job."""
        record = self.read()
        if not record.slurm.get("submitted") or record.state != JobState.PENDING or record.attempts:
            raise BadInput(f"job directory {self.path} already holds a job ({record.state}); choose another")
        spec, plan = _plain_json(spec, "spec"), _plain_json(plan, "plan")
        request = _plain_json(request or record.request, "request")
        self.update(lambda r: dataclasses.replace(r, spec=spec, plan=plan, cluster_file=str(cluster_file),
                                                  launcher=LauncherInfo.current(), request=request))
        return self

    def resume(self) -> JobRecord:
        """Continue this FAILED or STOPPED job as the launcher running it (`InvalidTransition` otherwise)."""
        return self.update(lambda r: r.with_resumed(LauncherInfo.current()))

    def set_plan(self, plan: Mapping[str, Any]) -> JobRecord:
        plan = _plain_json(plan, "plan")
        return self.update(lambda r: dataclasses.replace(r, plan=plan))

    def begin_attempt(self, resume: Optional[str] = None, stage: str = "") -> AttemptRecord:
        """Start attempt N+1 (job PENDING or RESTARTING -> STARTING, or RUNNING -> STARTING for the next
        stage of a multi-stage job); returns it."""
        record = self.update(lambda r: r.with_new_attempt(resume, stage=stage))
        return record.attempts[-1]

    def record_process(self, proc: ProcessRecord) -> JobRecord:
        return self.update(lambda r: r.with_process(proc))

    def set_process_state(self, name: str, state: Union[RankState, str],
                          exit_code: Optional[int] = None) -> JobRecord:
        return self.update(lambda r: r.with_process_state(name, state, exit_code))

    def end_attempt(self, outcome: Union[JobState, str], failure: Optional[Failure] = None,
                    job_state: Union[JobState, str, None] = None, message: Optional[str] = None) -> JobRecord:
        return self.update(lambda r: r.with_attempt_end(outcome, failure, job_state, message))

    def set_recovery(self, number: int, recovery: Mapping[str, Any]) -> JobRecord:
        """Record what attempt `number`'s failure cost (see launcher.recovery)."""
        recovery = _plain_json(recovery, "recovery")

        def change(record: JobRecord) -> JobRecord:
            attempts = tuple(dataclasses.replace(a, recovery=recovery) if a.number == number else a
                             for a in record.attempts)
            return dataclasses.replace(record, attempts=attempts)
        return self.update(change)

    def request_stop(self) -> JobRecord:
        """Mark that a stop was asked for: the supervisor must not start another attempt."""
        return self.update(lambda r: dataclasses.replace(r, stop_requested=True))

    def request_save(self) -> JobRecord:
        """Mark that the ranks are asked to save a checkpoint and stop (`stop --save`)."""
        return self.update(lambda r: dataclasses.replace(r, save_requested=True))

    def record_straggler(self, straggler: Straggler) -> JobRecord:
        return self.update(lambda r: r.with_straggler(straggler))

    def read_stragglers(self) -> List[Straggler]:
        """Flagged ranks from `stragglers.jsonl` and `job.json`, each (attempt, rank) once, by time."""
        found: Dict[Tuple[int, int], Straggler] = {}
        try:
            with open(self.stragglers_file, encoding="utf-8") as f:
                for line in f:
                    try:
                        s = Straggler.from_dict(json.loads(line))
                    except (ValueError, KeyError, TypeError):
                        continue
                    found.setdefault(s.key, s)
        except FileNotFoundError:
            pass
        try:
            for s in self.read().stragglers:
                found.setdefault(s.key, s)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return sorted(found.values(), key=lambda s: (s.time, s.rank))

    def open_logs(self, *, straggler_factor: float = DEFAULT_FACTOR, straggler_window: int = DEFAULT_WINDOW,
                  show_framework_logs: bool = False, **options: Any) -> LogAggregator:
        """A `LogAggregator` writing this job's `logs/`, with a `ProgressRecorder` writing `metrics.jsonl`
        and `stragglers.jsonl` and recording flagged ranks in `job.json` (other options go through)."""
        progress = ProgressRecorder(self.metrics_file, stragglers_file=self.stragglers_file,
                                    on_straggler=self.record_straggler, straggler_factor=straggler_factor,
                                    straggler_window=straggler_window)
        return LogAggregator(self.logs_dir, show_framework_logs=show_framework_logs, observers=[progress],
                             **options)

    def last_metrics(self, max_bytes: int = 1 << 18) -> Dict[int, Dict[str, Any]]:
        """Rank -> its newest record in `metrics.jsonl` (looks at the last `max_bytes` only)."""
        try:
            with open(self.metrics_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                data = f.read()
        except FileNotFoundError:
            return {}
        latest: Dict[int, Dict[str, Any]] = {}
        for raw in data.split(b"\n"):
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("rank"), int):
                latest[record["rank"]] = record
        return latest

    def append_metrics(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append progress records (e.g. copied from a host's metrics JSONL) to `metrics.jsonl`."""
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(dict(r), separators=(",", ":")) + "\n" for r in records))


def _plain_json(value: Mapping[str, Any], what: str) -> Dict[str, Any]:
    """A deep copy of `value` made of JSON types only; TypeError naming `what` otherwise."""
    try:
        return json.loads(json.dumps(value, default=_mapping_or_fail))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"job {what} must be plain JSON data: {exc}") from None


def _mapping_or_fail(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON data")


def list_job_dirs(runs_dir: Union[str, os.PathLike, None] = None) -> List[JobDir]:
    """Job directories (those holding a `job.json`) in the runs directory, sorted by name."""
    runs = resolve_runs_dir(runs_dir)
    if not runs.is_dir():
        return []
    return [JobDir(p) for p in sorted(runs.iterdir()) if (p / JOB_FILE).is_file()]
