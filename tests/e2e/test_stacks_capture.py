"""The host side takes live processes' stacks with the real py-spy, and says why when it cannot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import stacks
from launcher.hostside import stacks as hostside

pytestmark = pytest.mark.e2e

PEERS = Path(__file__).resolve().parents[1] / "fixtures" / "stacks" / "peers.py"
HOSTSIDE = Path(hostside.__file__)
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # one that nobody may run (the venv's links into /root)


@pytest.fixture
def peers():
    """4 stdlib ranks: 0-2 wait in `wait_for_peers`, 3 is stuck in `load_batch`; yields their pids."""
    group = subprocess.Popen([sys.executable, str(PEERS), "4", "3"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        pids = json.loads(group.stdout.readline())["pids"]
        yield pids
    finally:
        group.stdin.close()
        try:
            group.wait(20)
        finally:
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass


@pytest.fixture
def sleeper():
    """A Python process blocked in `time.sleep`; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; print(1, flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE)
    proc.stdout.readline()
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_live_group_captured_at_once_and_the_stuck_rank_named(peers):
    start = time.monotonic()
    records = hostside.capture(peers + [2 ** 22 + 11], timeout_s=20)
    elapsed = time.monotonic() - start
    assert [r["pid"] for r in records] == peers + [2 ** 22 + 11]
    assert [r["status"] for r in records] == ["ok"] * 4 + ["gone"], [r["reason"] for r in records]
    assert records[0]["tool"]["path"] == str(Path(sys.executable).parent / "py-spy")
    assert records[0]["tool"]["json"] and records[0]["tool"]["native"]
    report = stacks.analyse({(rank, "host-a" if rank < 2 else "host-b"): rec
                             for rank, rec in enumerate(records[:4])})
    assert report.basis == "majority" and report.suspects == ((3, "host-b"),)
    assert report.summary().startswith("rank 3 on host-b: in `load_batch` (peers.py:")
    assert "3 other ranks in `Barrier.wait`" in report.summary() and "`wait_for_peers`" in report.summary()
    print(f"4 ranks captured in {elapsed:.2f} s; each py-spy {records[0]['seconds']:.2f} s")


def test_command_line_and_plain_text_output_agree_with_json(sleeper):
    out = subprocess.run([sys.executable, "-S", str(HOSTSIDE), "--no-native", str(sleeper)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    (record,) = json.loads(out)
    assert record["status"] == "ok" and not record["tool"]["native"]
    frames = record["threads"][0]["frames"]
    assert record["threads"][0]["main"]
    assert (frames[0]["function"], frames[0]["file"]) == ("<module>", "<string>")
    assert all(not f["native"] for f in frames)
    tool = record["tool"]["path"]
    text = subprocess.run([tool, "dump", "--pid", str(sleeper), "--full-filenames"], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    threads = hostside.parse_text(text, sleeper)
    assert [(f["function"], f["file"], f["line"]) for f in threads[0]["frames"]] == \
           [(f["function"], f["file"], f["line"]) for f in frames]
    assert threads[0]["main"] and threads[0]["os_thread_id"] == sleeper
    request = json.dumps({"pids": [sleeper], "timeout_s": 30})
    piped = subprocess.run([sys.executable, "-S", str(HOSTSIDE)], input=request, capture_output=True,
                           text=True, timeout=60, check=True).stdout
    assert json.loads(piped)[0]["status"] == "ok"
    bad = subprocess.run([sys.executable, "-S", str(HOSTSIDE)], input='["7"]', capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "pids must be a list of integers" in bad.stderr and bad.stdout == ""


def test_without_py_spy_the_record_says_so_with_what_proc_gives(tmp_path, sleeper):
    # A python whose folder holds no py-spy, and a PATH without one.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").symlink_to(sys.executable)
    out = subprocess.run([str(bare / "python3"), "-S", str(HOSTSIDE), str(sleeper)], capture_output=True,
                         text=True, timeout=60, env={"PATH": str(bare)}, check=True).stdout
    (record,) = json.loads(out)
    assert record["status"] == "no_py_spy" and record["threads"] == []
    assert str(bare / "py-spy") in record["reason"] and "PATH" in record["reason"]
    proc = record["proc"]
    assert proc["state"] == "S (sleeping)" and proc["wchan"] and proc["syscall"] == "clock_nanosleep"
    assert proc["cmdline"][0] == sys.executable
    assert proc["threads"][0]["tid"] == sleeper and proc["threads"][0]["state"] == "S (sleeping)"
    report = stacks.analyse({(0, "host-a"): record})
    assert "no stack (py-spy not found" in report.summary() and "syscall clock_nanosleep" in report.summary()


def test_not_permitted_and_timeout_are_records_not_exceptions(tmp_path, sleeper):
    assert os.geteuid() == 0, "these tests run as root (sshd, namespaces); py-spy is run here as nobody"
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import stacks; "
            "print(json.dumps(stacks.capture([int(sys.argv[2])], 20, py_spy=sys.argv[3])))")
    tool = str(Path(sys.executable).parent / "py-spy")
    out = subprocess.run([SYSTEM_PYTHON, "-S", "-c", code, str(HOSTSIDE.parent), str(sleeper), tool],
                         capture_output=True, text=True, timeout=60, user=NOBODY, group=NOBODY, check=True,
                         cwd="/").stdout
    (record,) = json.loads(out)
    assert record["status"] == "not_permitted", record
    assert "ptrace not permitted" in record["reason"] and "Permission" in record["reason"]
    assert record["proc"]["state"] == "S (sleeping)"
    assert record["proc"]["syscall"] == "unreadable (permission)"

    stand_in = tmp_path / "py-spy"  # answers --help, then hangs like a py-spy stuck on its target
    stand_in.write_text("#!/bin/sh\n[ \"$2\" = --help ] && { echo '--json'; exit 0; }\nexec sleep 60\n")
    stand_in.chmod(0o755)
    start = time.monotonic()
    (record,) = hostside.capture([sleeper], timeout_s=1.0, py_spy=str(stand_in))
    assert record["status"] == "timeout" and "within 1.0 s" in record["reason"]
    assert time.monotonic() - start < 5
    assert record["proc"]["state"] == "S (sleeping)"
