"""Backends: mpirun `--tag-output` demultiplexing, msrun worker-log tails and msrun's rendered task."""
import shlex
import signal

import pytest

from launcher.backends.mpirun import TaggedOutput
from launcher.backends.msrun import msrun_log_dir
from launcher.backends.registry import backend_for
from launcher.errors import ClusterFileError
from tests.harness.specs import plan_of, spec_of


def demux(*lines):
    ranks, own = [], []
    out = TaggedOutput(lambda rank, text: ranks.append((rank, text)), own.append)
    for line in lines:
        out.feed(line)
    return ranks, own


def test_whole_tagged_lines_go_to_their_ranks():
    assert demux("[1,0]<stdout>:epoch: 1 step: 1", "[1,1]<stderr>:Traceback", "[2,3]<stddiag>:x") == (
        [(0, "epoch: 1 step: 1"), (1, "Traceback"), (3, "x")], [])


def test_chunk_tags_inside_a_line_join_the_pieces():
    # An unbuffered print("a") arrives as two tagged chunks: "a" and the newline.
    assert demux("[1,0]<stdout>:a[1,0]<stdout>:", "[1,0]<stdout>:") == ([(0, "a"), (0, "")], [])


def test_pieces_of_two_ranks_on_one_line_stay_apart():
    ranks, _ = demux("[1,0]<stdout>:par[1,1]<stdout>:whole", "[1,0]<stdout>:tial")
    assert ranks == [(1, "whole"), (0, "partial")]


def test_untagged_text_is_mpiruns_own():
    assert demux("mpirun noticed that process rank 1 exited", "junk[1,0]<stdout>:y") == (
        [(0, "y")], ["mpirun noticed that process rank 1 exited", "junk"])


def msrun_plan(hosts):
    s = spec_of(backend="msrun", hosts=hosts, port=8118)
    return plan_of(s, "r1", attempt=2, job_dir="/jobs/j1", job_id="j1")


def test_msrun_tails_each_worker_log_into_its_rank():
    plan = msrun_plan([{"name": "a", "address": "10.0.0.1", "ranks": 2, "ssh": {}, "workdir": "/w"},
                       {"name": "b", "address": "10.0.0.2", "ranks": 2, "ssh": {}, "workdir": "/v"}])
    backend = backend_for("msrun")
    proc = plan.processes[2]
    assert msrun_log_dir(proc) == "/v/.refinenet/jobs/j1/attempt_2/msrun_log"
    tails = backend.tails(proc, plan)
    assert [(t.rank, t.path) for t in tails] == [
        (r, f"/v/.refinenet/jobs/j1/attempt_2/msrun_log/worker_{r}.log") for r in (2, 3)]
    assert backend.stop_signal == signal.SIGTERM


def test_msrun_runs_beside_the_launchers_scheduler_through_its_entry():
    plan = msrun_plan([{"name": "a", "ranks": 2, "python": "/venv/bin/python3", "workdir": "/w"}])
    sched, msrun = plan.processes
    assert (sched.role, sched.host, sched.env["MS_SCHED_PORT"], sched.env["MS_WORKER_NUM"]) == (
        "scheduler", "a", "8118", "2")
    assert "-m refinenet.scheduler" in sched.command
    argv = shlex.split(msrun.command.replace("\\\n", " "))
    entry = "/w/.refinenet/jobs/j1/msrun_entry.py"
    assert [f.path for f in plan.files] == [entry]
    assert "--master_port=8118" in argv
    cut = argv.index(entry)
    assert argv[cut - 1:cut + 6] == ["python3", entry, "/venv/bin/python3", "-m", "refinenet.train",
                                     "--stage", "r1"]
    assert "--tail_worker_log=2" in argv  # no such rank: msrun echoes no worker log itself


def test_msrun_refuses_hosts_with_different_rank_counts():
    with pytest.raises(ClusterFileError, match="same number of ranks on every host"):
        msrun_plan([{"name": "a", "address": "10.0.0.1", "ranks": 2, "ssh": {}, "workdir": "/w"},
                    {"name": "b", "address": "10.0.0.2", "ranks": 1, "ssh": {}, "workdir": "/w"}])
