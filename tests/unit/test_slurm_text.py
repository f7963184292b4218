"""Slurm text helpers, on output captured from a real Slurm 22.05 cluster (tests/fixtures/slurm)."""
import signal
from pathlib import Path

import pytest

from launcher.slurm.text import (
    FINISHED_JOB_STATES,
    TaskFailure,
    expand_nodelist,
    job_finished,
    parse_exit_code,
    parse_job_state,
    parse_key_values,
    parse_node_addrs,
    parse_sbatch_job_id,
    parse_task_failures,
    time_limit_hit,
    time_limit_seconds,
)

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


@pytest.mark.parametrize("nodelist, hosts", [
    ("n[1-3,5],gpu-[01-02],x", ["n1", "n2", "n3", "n5", "gpu-01", "gpu-02", "x"]),
    ("n[1-2]", ["n1", "n2"]),
    ("n1", ["n1"]),
    ("n1,n2", ["n1", "n2"]),
    ("node[8-10]", ["node8", "node9", "node10"]),
    ("node[08-10]", ["node08", "node09", "node10"]),
    ("cn[001-003,010]", ["cn001", "cn002", "cn003", "cn010"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("a[1-2]-ib", ["a1-ib", "a2-ib"]),
    ("host.example.com", ["host.example.com"]),
    ("", []),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[]", "n[a-b]", "n[3-1]", "n[1-]", "n1,,n2", "n[[1]]"])
def test_expand_nodelist_refuses_malformed_lists(bad):
    with pytest.raises(ValueError):
        expand_nodelist(bad)


def test_parse_node_addrs_from_scontrol_show_node():
    assert parse_node_addrs(sample("scontrol_show_node.txt")) == {"n1": "10.200.0.11", "n2": "10.200.0.12"}


def test_parse_node_addrs_ignores_other_lines_and_defaults_to_the_name():
    text = "\nNodeName=a1 Arch=x86_64 State=IDLE\nNodeName=a2 NodeAddr=192.168.1.2 State=IDLE\nnoise\n"
    assert parse_node_addrs(text) == {"a1": "a1", "a2": "192.168.1.2"}


def test_key_values_keep_spaces_inside_values():
    fields = parse_key_values(sample("scontrol_show_node.txt").splitlines()[0])
    assert fields["OS"].startswith("Linux ") and "#1 SMP" in fields["OS"]
    assert fields["CfgTRES"] == "cpu=2,mem=1000M,billing=2"
    assert fields["AllocTRES"] == ""


def test_srun_kill_on_bad_exit_names_the_task_that_exited_first():
    failures = parse_task_failures(sample("srun_K_exit3.stderr.txt"))
    assert failures[0] == TaskFailure("n2", (3,), 3, None, "srun: error: n2: task 3: Exited with exit code 3")
    assert [(f.node, f.tasks, f.signal) for f in failures[1:]] == [
        ("n2", (2,), signal.SIGTERM), ("n1", (0, 1), signal.SIGTERM)]
    assert failures[0].describe() == "exit code 3"


def test_srun_killed_task():
    failures = parse_task_failures(sample("srun_K_killed.stderr.txt"))
    first = failures[0]
    assert (first.node, first.tasks, first.exit_code, first.signal) == ("n1", (1,), None, signal.SIGKILL)
    assert first.signal_name == "SIGKILL" and first.describe() == "signal 9 (SIGKILL)"
    assert [f.tasks for f in failures] == [(1,), (0,), (2,), (3,)]
    assert failures[2].exit_code == 143


def test_srun_segfault_task():
    first = parse_task_failures(sample("srun_K_segv.stderr.txt"))[0]
    assert (first.node, first.tasks, first.signal_name) == ("n2", (3,), "SIGSEGV")


def test_srun_without_kill_on_bad_exit_reports_only_the_failing_task():
    assert parse_task_failures(sample("srun_exit3.stderr.txt")) == [
        TaskFailure("n2", (3,), 3, None, "srun: error: n2: task 3: Exited with exit code 3")]


def test_task_failure_variants():
    text = "\n".join([
        "0: srun: error: gpu-01: tasks 0,2-3: Terminated",
        "srun: error: n1: task 5: Aborted (core dumped)",
        "srun: error: n1: task 6: Something new",
        "srun: error: Unable to create step for job 2: More processors requested than permitted",
        "slurmstepd-n1: error: *** STEP 3.0 ON n1 CANCELLED AT 2026-11-30T00:30:14 ***",
    ])
    failures = parse_task_failures(text)
    assert [(f.node, f.tasks) for f in failures] == [("gpu-01", (0, 2, 3)), ("n1", (5,)), ("n1", (6,))]
    assert failures[1].signal == signal.SIGABRT
    unknown = failures[2]
    assert (unknown.exit_code, unknown.signal, unknown.describe()) == (None, None, "Something new")
    assert parse_task_failures(sample("sbatch_scancel_running_step.out.txt"))[0].tasks == (2, 3)


def test_parse_job_state_completed():
    state = parse_job_state(sample("scontrol_show_job_completed.txt"))
    assert {k: state[k] for k in ("JobId", "JobState", "Reason", "ExitCode", "NodeList", "BatchHost")} == {
        "JobId": "5", "JobState": "COMPLETED", "Reason": "None", "ExitCode": "0:0", "NodeList": "n[1-2]",
        "BatchHost": "n1"}
    assert state["TimeLimit"] == "UNLIMITED" and state["RunTime"] == "00:00:00"
    assert job_finished(state) and not time_limit_hit(state)


def test_parse_job_state_failed_and_cancelled():
    failed = parse_job_state(sample("scontrol_show_job_failed.txt"))
    assert (failed["JobState"], failed["Reason"], parse_exit_code(failed["ExitCode"])) == (
        "FAILED", "NonZeroExitCode", (7, 0))
    cancelled = parse_job_state(sample("scontrol_show_job_cancelled.txt"))
    assert (cancelled["JobState"], parse_exit_code(cancelled["ExitCode"])) == ("CANCELLED", (0, 15))


def test_parse_job_state_timeout():
    state = parse_job_state(sample("scontrol_show_job_timeout.txt"))
    assert (state["JobState"], state["Reason"], state["TimeLimit"], state["RunTime"]) == (
        "TIMEOUT", "TimeLimit", "00:01:00", "00:01:26")
    assert time_limit_hit(state) and job_finished(state)
    assert time_limit_hit({"JobState": "CANCELLED", "Reason": "TimeLimit"})


def test_parse_job_state_running_and_pending():
    running = parse_job_state(sample("scontrol_show_job_running.txt"))
    assert running["JobState"] == "RUNNING" and not job_finished(running)
    pending = parse_job_state(sample("scontrol_show_job_pending.txt"))
    assert (pending["JobState"], pending["Reason"], pending["NodeList"], pending["BatchHost"]) == (
        "PENDING", "Dependency", "", "")
    too_big = parse_job_state(sample("scontrol_show_job_pending_too_many_nodes.txt"))
    assert (too_big["JobState"], too_big["Reason"], too_big["NumNodes"]) == (
        "PENDING", "PartitionConfig", "3-3")


def test_parse_job_state_refuses_text_without_a_job():
    with pytest.raises(ValueError, match="Invalid job id"):
        parse_job_state(sample("scontrol_show_job_invalid.stderr.txt"))


def test_finished_states_are_terminal_ones():
    assert {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"} <= FINISHED_JOB_STATES
    assert "PENDING" not in FINISHED_JOB_STATES


@pytest.mark.parametrize("text, job_id", [
    (sample("sbatch.stdout.txt"), 5),
    (sample("sbatch_parsable.stdout.txt"), 6),
    ("42;cluster\n", 42),
    ("sbatch: warning: something\nSubmitted batch job 42 on cluster c1\n", 42),
])
def test_parse_sbatch_job_id(text, job_id):
    assert parse_sbatch_job_id(text) == job_id


@pytest.mark.parametrize("text", ["", sample("sbatch_bad_partition.stderr.txt"), "42;\n"])
def test_parse_sbatch_job_id_refuses_other_text(text):
    with pytest.raises(ValueError):
        parse_sbatch_job_id(text)


def test_time_limits_in_every_sbatch_form():
    forms = {"30": 1800, "2:30": 150, "1:00:05": 3605, "1-0": 86400, "1-2": 93600, "1-2:3": 93780,
             "2-0:0:7": 172807, "UNLIMITED": None, "infinite": None}
    assert {text: time_limit_seconds(text) for text in forms} == forms
