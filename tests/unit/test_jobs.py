"""The job directory: ids, job.json round trip, guarded updates, atomic writes, resolving a job."""
import json
import os
import re
import subprocess
import sys
import threading

import pytest

from launcher.errors import JobNotFound
from launcher.failures import Failure, FailureKind
from launcher.jobs import (
    RUNS_DIR_ENV,
    AttemptRecord,
    JobDir,
    JobRecord,
    LauncherInfo,
    ProcessRecord,
    list_job_dirs,
    new_job_id,
    resolve_runs_dir,
)
from launcher.states import InvalidTransition, JobState, RankState

SPEC = {"name": "two-hosts", "hosts": [{"name": "a", "address": "127.0.0.1"}]}


def make_job(runs, **kw):
    return JobDir.create(runs, cluster="two-hosts", stage="r1", spec=SPEC, cluster_file="c.yaml", **kw)


def test_job_id_is_readable_and_unique():
    ids = {new_job_id("my cluster/1", "r1", now=0) for _ in range(50)}
    assert len(ids) > 40
    for job_id in ids:
        assert re.fullmatch(r"my_cluster_1-r1-\d{8}-\d{6}-[0-9a-f]{4}", job_id)


def test_runs_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(RUNS_DIR_ENV, raising=False)
    assert str(resolve_runs_dir()) == "runs"
    monkeypatch.setenv(RUNS_DIR_ENV, str(tmp_path))
    assert resolve_runs_dir() == tmp_path
    assert str(resolve_runs_dir("elsewhere")) == "elsewhere"


def test_create_writes_a_pending_record(tmp_path):
    job = make_job(tmp_path / "runs", plan={"backend": "dynamic", "ranks": 2})
    assert job.path.parent == tmp_path / "runs" and job.logs_dir.is_dir()
    record = job.read()
    assert record.job_id == job.job_id and record.state == JobState.PENDING
    assert record.spec == SPEC and record.plan["backend"] == "dynamic" and record.cluster_file == "c.yaml"
    assert record.launcher.pid == os.getpid() and record.launcher.is_alive_here()
    data = json.loads(job.job_file.read_text())
    assert data["format"] == "refinenet-job/1" and data["state"] == "PENDING"


def test_round_trip_of_a_full_record():
    failure = Failure(FailureKind.EXIT, "b", "exit code 3", rank=1, exit_code=3, log_tail=("boom",), time=5.0)
    record = JobRecord(
        job_id="j", cluster="c", stage="r2", state=JobState.RESTARTING, created=1.0, updated=2.0,
        spec=SPEC, plan={"x": [1, 2]}, launcher=LauncherInfo(pid=7, host="h", started=3.0),
        attempts=(AttemptRecord(1, JobState.FAILED, 1.0, 4.0, None, failure,
                          (ProcessRecord.for_rank(0, "a", 10, 10, state=RankState.STOPPED, exit_code=-15),
                           ProcessRecord.for_rank(1, "b", 11, 11, state=RankState.FAILED, exit_code=3),
                           ProcessRecord("scheduler", "a", 9, 9))),),
        stop_requested=True, message="m")
    again = JobRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    assert again.attempts[0].failure.summary() == "rank 1 on b: exit code 3"
    assert [p.name for p in again.attempts[0].ranks] == ["r0", "r1"]


def test_record_from_another_format_is_refused():
    with pytest.raises(ValueError, match="refinenet-job/1"):
        JobRecord.from_dict({"format": "something-else", "job_id": "x", "state": "PENDING"})


def test_attempt_and_process_lifecycle(tmp_path):
    job = make_job(tmp_path)
    with pytest.raises(InvalidTransition):
        job.set_state(JobState.RUNNING)
    first = job.begin_attempt()
    assert first.number == 1 and job.read().state == JobState.STARTING
    job.record_process(ProcessRecord.for_rank(0, "a", 100, 100, state=RankState.STARTING))
    job.record_process(ProcessRecord.for_rank(1, "a", 101, 101, state=RankState.STARTING))
    job.set_process_state("r0", RankState.RUNNING)
    job.set_state(JobState.RUNNING)
    assert job.read().current_attempt.state == JobState.RUNNING
    job.set_process_state("r1", RankState.FAILED, exit_code=1)
    with pytest.raises(InvalidTransition, match="r1 on a"):
        job.set_process_state("r1", RankState.RUNNING)
    job.end_attempt(JobState.FAILED, Failure(FailureKind.EXIT, "a", "exit code 1", rank=1, exit_code=1),
                    job_state=JobState.RESTARTING)
    record = job.read()
    assert record.state == JobState.RESTARTING and record.attempts[0].state == JobState.FAILED
    assert record.attempts[0].ended is not None
    assert [p.name for p in record.active_processes()] == ["r0"]
    second = job.begin_attempt(resume="/out/ckpt/refinenet-1_4.ckpt")
    assert second.number == 2 and second.resume.endswith("1_4.ckpt")
    job.set_state(JobState.STOPPED, "stopped by signal")
    record = job.read()
    assert record.state == JobState.STOPPED and record.current_attempt.state == JobState.STOPPED
    assert record.message == "stopped by signal"
    with pytest.raises(InvalidTransition):
        job.begin_attempt()


def test_restarting_ends_an_unfinished_attempt_as_failed(tmp_path):
    job = make_job(tmp_path)
    job.begin_attempt()
    job.set_state(JobState.RESTARTING)
    assert job.read().attempts[0].state == JobState.FAILED


def test_processes_stopped_in_every_attempt():
    record = JobRecord("j", "c", "r1", JobState.RUNNING, attempts=(
        AttemptRecord(1, JobState.FAILED, processes=(ProcessRecord("r0", "a", 1, 1),)),
        AttemptRecord(2, JobState.RUNNING, processes=(ProcessRecord("r0", "a", 2, 2),
                                                ProcessRecord("r1", "b", 3, 3)))))
    record = record.with_processes_stopped(lambda p: p.host == "a", at=9.0)
    assert [(p.name, p.host, p.state.value) for p in record.active_processes()] == [("r1", "b", "RUNNING")]
    assert record.attempts[0].processes[0].ended == 9.0


def test_resolve_by_id_path_and_prefix(tmp_path):
    runs = tmp_path / "runs"
    a = JobDir.create(runs, cluster="c", stage="r1", spec={}, job_id="c-r1-20250101-000000-aaaa")
    b = JobDir.create(runs, cluster="c", stage="r2", spec={}, job_id="c-r2-20250101-000000-bbbb")
    assert JobDir.resolve(a.job_id, runs).path == a.path
    assert JobDir.resolve(str(b.path)).path == b.path
    assert JobDir.resolve("c-r2", runs).path == b.path
    with pytest.raises(JobNotFound) as err:
        JobDir.resolve("c-", runs)
    assert str(a.path) in str(err.value) and str(b.path) in str(err.value)
    with pytest.raises(JobNotFound, match="jobs that exist: none"):
        JobDir.resolve("nope", tmp_path / "empty")
    assert [j.job_id for j in list_job_dirs(runs)] == [a.job_id, b.job_id]


def test_explicit_job_id_must_be_free(tmp_path):
    JobDir.create(tmp_path, cluster="c", stage="r1", spec={}, job_id="x")
    with pytest.raises(Exception, match="already exists"):
        JobDir.create(tmp_path, cluster="c", stage="r1", spec={}, job_id="x")


def test_readers_never_see_a_torn_file(tmp_path):
    job = make_job(tmp_path)
    job.begin_attempt()
    stop = threading.Event()
    reads, errors = [0], []

    def reader():
        while not stop.is_set():
            try:
                json.loads(job.job_file.read_text())
                reads[0] += 1
            except Exception as exc:
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(150):
            job.record_process(ProcessRecord.for_rank(i, "a", 1000 + i, 1000 + i, state=RankState.STARTING))
    finally:
        stop.set()
        thread.join()
    assert not errors and reads[0] > 0
    assert len(job.read().current_attempt.processes) == 150
    assert not [p for p in job.path.iterdir() if p.name.endswith(".tmp")]


WRITER = """
import sys
from launcher.jobs import JobDir, ProcessRecord
job = JobDir(sys.argv[1])
base = int(sys.argv[2])
for i in range(40):
    job.record_process(ProcessRecord("p%d" % (base + i), "h", base + i, base + i))
"""


def test_concurrent_writers_lose_no_update(tmp_path, child_env):
    job = make_job(tmp_path)
    job.begin_attempt()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(job.path), str(base)], env=child_env)
             for base in (0, 1000)]
    for i in range(40):
        job.record_process(ProcessRecord(f"q{i}", "h", 5000 + i, 5000 + i))
    assert [p.wait(60) for p in procs] == [0, 0]
    assert len(job.read().current_attempt.processes) == 120


def test_last_metrics_per_rank(tmp_path):
    job = make_job(tmp_path)
    job.append_metrics([{"rank": 0, "step": 1, "loss": 1.0}, {"rank": 1, "step": 1, "loss": 2.0},
                        {"rank": 0, "step": 2, "loss": 0.5}])
    with open(job.metrics_file, "a") as f:
        f.write('{"rank": 1, "step": 2, "lo')  # a record still being written
    assert {r: m["step"] for r, m in job.last_metrics().items()} == {0: 2, 1: 1}


def test_spec_and_plan_are_stored_as_plain_json(tmp_path):
    from types import MappingProxyType

    job = JobDir.create(tmp_path, cluster="c", stage="r1",
                        spec={"hosts": (MappingProxyType({"name": "a"}),)}, plan={"ranks": {0, 1}})
    record = job.read()
    assert record.spec == {"hosts": [{"name": "a"}]} and sorted(record.plan["ranks"]) == [0, 1]
    with pytest.raises(TypeError, match="job spec must be plain JSON data"):
        JobDir.create(tmp_path, cluster="c", stage="r1", spec={"x": object()})
    assert len(list_job_dirs(tmp_path)) == 1
