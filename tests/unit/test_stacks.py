"""Stack analysis on stacks recorded from real processes (tests/fixtures/stacks, see record.py there)."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from launcher import stacks
from launcher.hostside import stacks as hostside
from launcher.stacks import Frame, analyse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stacks"
T0 = 1_796_600_000.0


def _records(name: str) -> dict:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    return {(r["rank"], r["host"]): r["record"] for r in doc["ranks"]}


def _line_of(script: str, text: str) -> int:
    """The line of `script` holding `text` (so the expectations follow the script, not a copy of it)."""
    lines = (FIXTURES / script).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def _main_frames(record: dict) -> list:
    return [f for f in record["threads"][0]["frames"] if not f["native"]]


def test_allreduce_fixture_names_the_rank_in_its_own_code():
    report = analyse(_records("allreduce_stall"))
    assert report.basis == "workload" and report.suspects == ((1, "host-b"),)
    assert [g.ranks for g in report.groups] == [(0,), (1,)]
    rank0, rank1 = (report.group_of(r).stack for r in (0, 1))
    assert rank0.waiting and not rank1.waiting
    assert rank0.operation == "AllReduce"
    assert rank0.python[0].kind == stacks.FRAMEWORK
    assert rank0.python[0].category == "MindSpore graph execution"
    sleep = _line_of("allreduce_stall.py", "time.sleep(STALL_S)")
    step = _line_of("allreduce_stall.py", "return net(batch)")
    assert report.summary() == (f"rank 1 on host-b: in `load_batch` (allreduce_stall.py:{sleep}), "
                                f"1 other rank in AllReduce, from `train_step` (allreduce_stall.py:{step})")


def test_peers_fixture_names_the_odd_rank_against_the_majority():
    report = analyse(_records("peers_stall"))
    assert report.basis == "majority" and report.suspects == ((3, "host-b"),)
    assert [g.ranks for g in report.groups] == [(0, 1, 2), (3,)]
    read = _line_of("peers.py", "os.read(source, 1)")
    wait = _line_of("peers.py", "barrier.wait()")
    summary = report.summary()
    assert summary.startswith(f"rank 3 on host-b: in `load_batch` (peers.py:{read}), 3 other ranks in "
                              "`Barrier.wait` (threading.py:")
    assert summary.endswith(f"from `wait_for_peers` (peers.py:{wait})")
    assert report.note == ""


def test_frame_classes_by_path_and_function():
    records = _records("peers_stall")
    waiting = [Frame.from_dict(f) for f in _main_frames(records[(0, "host-a")])]
    assert [f.kind for f in waiting[:5]] == ["stdlib"] * 4 + ["workload"]
    assert waiting[0].module_file == "multiprocessing/synchronize.py" and waiting[0].waits
    assert waiting[4].function == "wait_for_peers" and not waiting[4].waits
    native = [Frame.from_dict(f) for f in records[(0, "host-a")]["threads"][0]["frames"] if f["native"]]
    assert native and all(f.kind == "native" for f in native)
    assert Frame("dumps", "/usr/lib/python3.11/json/__init__.py", "json/__init__.py", 1).kind == "stdlib"
    assert not Frame("dumps", "/usr/lib/python3.11/json/__init__.py", "json/__init__.py", 1).waits
    site = "/v/lib/python3.11/site-packages/"
    assert Frame("open", site + "PIL/Image.py", "PIL/Image.py", 3).kind == "library"
    assert Frame("f", site + "refinenet/data/pipeline.py", "refinenet/data/pipeline.py", 8).kind == "workload"
    name = "mindspore/communication/management.py"
    comm = Frame("init", site + name, name, 1)
    assert comm.waits and comm.category == "MindSpore communication"
    name = "mindspore/dataset/engine/iterators.py"
    data = Frame("__next__", site + name, name, 1)
    assert data.category == "MindSpore's data pipeline"


def test_same_code_in_different_folders_and_other_threads_group_together():
    records = _records("peers_stall")
    moved = copy.deepcopy(records[(1, "host-a")])
    for f in moved["threads"][0]["frames"]:
        f["file"] = f["file"].replace("/", "/elsewhere/", 1)
    moved["threads"].append({"name": "worker", "main": False, "frames": _main_frames(records[(3, "host-b")])})
    records[(1, "host-a")] = moved
    report = analyse(records)
    assert [g.ranks for g in report.groups] == [(0, 1, 2), (3,)] and report.suspects == ((3, "host-b"),)


def test_a_main_thread_without_python_frames_is_stood_in_for():
    records = _records("peers_stall")
    rec = copy.deepcopy(records[(3, "host-b")])
    main = rec["threads"][0]
    rec["threads"] = [dict(main, frames=[f for f in main["frames"] if f["native"]]),
                      {"name": "loader", "main": False, "frames": main["frames"]}]
    stack = stacks.RankStack.from_record(3, "host-b", rec)
    assert stack.thread == "loader" and stack.python[0].function == "load_batch"


def _two(a: dict, b: dict) -> dict:
    return {(0, "host-a"): a, (1, "host-b"): b}


def test_without_a_majority_it_says_when_it_cannot_tell():
    ar, peers = _records("allreduce_stall"), _records("peers_stall")
    both_wait = analyse(_two(ar[(0, "host-a")], peers[(0, "host-a")]))
    assert both_wait.basis == "undetermined" and both_wait.suspects == ()
    assert both_wait.summary().startswith("cannot tell which rank is stuck: no majority, and every rank "
                                          "waits")
    both_work = analyse(_two(ar[(1, "host-b")], peers[(3, "host-b")]))
    assert both_work.basis == "undetermined" and "every rank is in workload code" in both_work.summary()
    assert "rank 0 on host-a: in `load_batch` (allreduce_stall.py:" in both_work.summary()
    waits, works = ar[(0, "host-a")], ar[(1, "host-b")]
    three_ways = analyse({(0, "a"): waits, (1, "a"): waits, (2, "b"): works, (3, "b"): works})
    assert three_ways.basis == "workload" and three_ways.suspects == ((2, "b"), (3, "b"))
    assert three_ways.summary().startswith("ranks 2, 3 on b: in `load_batch`")
    assert "2 other ranks in AllReduce" in three_ways.summary()


def test_all_alike_and_a_majority_in_workload_code():
    peers = _records("peers_stall")
    alike = analyse({k: peers[(0, "host-a")] for k in peers})
    assert alike.basis == "alike" and alike.suspects == ()
    assert alike.summary().startswith("all 4 ranks in `Barrier.wait`")
    assert "no rank stands out" in alike.summary()
    stuck = peers[(3, "host-b")]
    flipped = analyse({(0, "a"): stuck, (1, "a"): stuck, (2, "b"): stuck, (3, "b"): peers[(0, "host-a")]})
    assert flipped.basis == "majority" and flipped.suspects == ((3, "b"),)
    assert "the others may be the ones stuck" in flipped.summary()


def test_ranks_without_a_stack_are_reported_and_suspected_when_the_rest_wait_alike():
    peers = _records("peers_stall")
    missing = hostside.capture([2 ** 22 + 7], 1.0, py_spy="/nonexistent/py-spy")[0]
    assert missing["status"] == "gone"
    timed_out = dict(missing, status="timeout", reason="py-spy did not answer within 5.0 s",
                     proc={"state": "D (disk sleep)", "wchan": "nfs_wait", "syscall": "read"})
    records = {(0, "a"): peers[(0, "host-a")], (1, "a"): peers[(1, "host-a")], (2, "b"): timed_out}
    report = analyse(records)
    assert report.basis == "no_stack" and report.suspects == ((2, "b"),)
    assert [s.rank for s in report.unknown] == [2]
    text = report.summary()
    assert "rank 2 on b: no stack (py-spy did not answer within 5.0 s); /proc: state D (disk sleep), " \
           "wchan nfs_wait, syscall read" in text
    assert "every rank with a stack is in `Barrier.wait`" in text
    none = analyse({(0, "a"): timed_out})
    assert none.basis == "none" and none.summary().startswith("cannot tell which rank is stuck")


def test_save_and_load_a_capture(tmp_path):
    records = _records("peers_stall")
    report = analyse(records)
    folder = stacks.save(report, records, tmp_path, attempt=2, when=T0)
    assert folder.parent == tmp_path / "stacks"
    assert folder.name == f"attempt_2-{time.strftime('%Y%m%d-%H%M%S', time.localtime(T0))}"
    assert sorted(p.name for p in folder.iterdir()) == ["groups.json", "rank_0.json", "rank_1.json",
                                                          "rank_2.json", "rank_3.json", "summary.txt"]
    assert (folder / "summary.txt").read_text() == report.summary() + "\n"
    groups = json.loads((folder / "groups.json").read_text())
    assert groups["attempt"] == 2 and groups["suspects"] == [{"rank": 3, "host": "host-b"}]
    assert [g["size"] for g in groups["groups"]] == [3, 1]
    rank3 = json.loads((folder / "rank_3.json").read_text())
    assert (rank3["host"], rank3["attempt"], rank3["pid"]) == ("host-b", 2, records[(3, "host-b")]["pid"])
    again = stacks.save(report, records, tmp_path, attempt=2, when=T0)
    assert again.name == folder.name + "-2"
    assert stacks.captures(tmp_path) == [folder, again]
    loaded = stacks.load(folder)
    assert (loaded.attempt, loaded.time) == (2, T0)
    assert loaded.report == report and loaded.records[(3, "host-b")]["pid"] == records[(3, "host-b")]["pid"]
    assert not list((tmp_path / "stacks").glob(".*"))


def test_load_refuses_what_is_not_a_capture(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        stacks.load(tmp_path / "empty")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "rank_0.json").write_text('{"rank": 0, "thr')
    with pytest.raises(ValueError):
        stacks.load(tmp_path / "torn")


def test_hostside_parses_recorded_outputs_and_proc_fields():
    assert hostside.syscall_name("running") == "running"
    assert hostside.syscall_name("-1 0x7ffd 0x7f12") == "none (blocked outside a system call)"
    assert hostside.syscall_name("99999 0x1 0x2") == "#99999"
    rec = _records("allreduce_stall")[(0, "host-a")]
    assert rec["tool"]["json"] and rec["tool"]["native"]
    names = [f["function"] for f in rec["threads"][0]["frames"]]
    assert any(n.endswith("CollectiveOpsImpl::AllReduce<float>") for n in names)


def test_a_job_of_one_rank_names_where_it_is():
    rec = _records("peers_stall")[(3, "host-b")]
    report = analyse({(0, "host-a"): rec})
    assert report.basis == "only" and report.suspects == ((0, "host-a"),)
    assert report.summary().startswith("rank 0 on host-a: in `load_batch` (peers.py:")
