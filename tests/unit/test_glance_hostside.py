"""The host program's `glance` and `drain` modes in this process: the change before the snapshot, the
device tool found on PATH or in the given folders (killed when it overruns), and bad requests named by
their field."""
import json
import subprocess
import sys
import time

import pytest

from launcher.hostside import glance as gl
from launcher.hostside import hoststate as hs
from launcher.hostside import program
from tests.fixtures.fake_tools import FakeTools, recorded
from tests.harness.environment import REPO

NPU = "npu_smi/npu_smi_info_910b2c_2card_with_procs.txt"


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "state")


def run_mode(capsys, mode, payload):
    code = program.main([mode, payload if isinstance(payload, str) else json.dumps(payload)])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, [json.loads(line) for line in lines]


def test_glance_reads_the_live_leases_and_disk_of_the_state_dir_and_the_paths(tmp_path, state, capsys):
    lease = hs.acquire(state, hs.Request("job-a", slots=2, capacity=4, launcher="laptop"))
    try:
        code, [answer] = run_mode(capsys, "glance", {"state_dir": state,
                                                     "paths": [str(tmp_path / "work" / "x")]})
    finally:
        lease.release()
    assert code == 0 and answer["state_error"] is None and answer["tool"] is None and answer["changed"] == {}
    snap = answer["snapshot"]
    assert [(h["job"], h["slots"], h["launcher"]) for h in snap["leases"]] == [("job-a", 2, "laptop")]
    assert [d["path"] for d in snap["disk"]] == [state, str(tmp_path / "work" / "x")]
    assert all(d["available_bytes"] > 0 for d in snap["disk"])
    assert snap["memory"]["total_bytes"] > 0 and len(snap["load"]) == 3


def test_glance_changes_first_and_says_what_the_cordon_was(state, capsys):
    hs.record_exclusion(state, "rank 1 exited 1", "job-x")
    code, [answer] = run_mode(capsys, "glance", {"state_dir": state, "cordon": "fan broken"})
    assert code == 0 and answer["changed"]["was"] == {"cordoned": False}
    assert answer["snapshot"]["cordon"]["why"] == "fan broken" and answer["changed"]["cordon"]["cordoned"]
    code, [answer] = run_mode(capsys, "glance", {"state_dir": state, "uncordon": "fixed",
                                                 "clear_exclusions": True})
    assert answer["changed"]["was"]["why"] == "fan broken" and answer["changed"]["cleared"] == 1
    assert answer["snapshot"]["cordon"]["cordoned"] is False and answer["snapshot"]["exclusions"] == []


def test_unreadable_state_is_named_and_the_tool_still_answers(tmp_path, state, capsys):
    hs.cordon(state, "x")
    bad = tmp_path / "state" / "exclusion.0000000005.0123456789abcdef"
    bad.write_text("[]")
    tools = FakeTools(tmp_path / "tools")
    tools.install("npu-smi", recorded(NPU))
    code, [answer] = run_mode(capsys, "glance", {"state_dir": state, "cordon": "y", "tool": {
        "argv": ["npu-smi", "info"], "dirs": [str(tools.bin)]}})
    assert code == 0 and answer["snapshot"] is None
    assert answer["state_error"]["path"] == str(bad) and answer["state_error"]["type"] == "StateError"
    assert answer["tool"]["found"] and answer["tool"]["code"] == 0 and "910B2C" in answer["tool"]["stdout"]


def test_the_tool_is_looked_up_on_path_then_in_the_folders(tmp_path, monkeypatch):
    tools = FakeTools(tmp_path / "tools")
    tools.install("nvidia-smi", "0, A100\n", exit_code=3, stderr="NVML: driver mismatch\n")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the fake tool needs cat
    assert gl.run_tool(["nvidia-smi", "-L"], dirs=[]) == {"argv": ["nvidia-smi", "-L"], "found": False,
                                                          "code": None, "stdout": "", "stderr": "",
                                                          "timed_out": False}
    out = gl.run_tool(["nvidia-smi", "-L"], dirs=[str(tools.bin)])
    assert (out["found"], out["code"], out["stdout"]) == (True, 3, "0, A100\n")
    assert out["stderr"] == "NVML: driver mismatch\n"
    monkeypatch.setenv("PATH", f"{tools.bin}:/usr/bin:/bin")
    assert gl.find_tool("nvidia-smi", ["/nonexistent"]) == str(tools.bin / "nvidia-smi")


def test_a_tool_that_overruns_is_killed_with_its_children(tmp_path):
    script = tmp_path / "slow-tool"
    script.write_text("#!/bin/sh\necho partial\nsleep 30 &\nsleep 30\n")
    script.chmod(0o755)
    started = time.monotonic()
    out = gl.run_tool([str(script)], timeout=0.3)
    assert out["timed_out"] and out["code"] == -9 and out["stdout"] == "partial\n"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("payload, field", [
    ("{nope", "argument"),
    ([1], "argument"),
    ({}, "state_dir"),
    ({"state_dir": "relative/state"}, "state_dir"),
    ({"state_dir": "/s", "colour": 1}, "colour"),
    ({"state_dir": "/s", "paths": "/w"}, "paths"),
    ({"state_dir": "/s", "tool": {"argv": []}}, "tool.argv"),
    ({"state_dir": "/s", "tool": {"argv": ["npu-smi"], "timeout": 0}}, "tool.timeout"),
    ({"state_dir": "/s", "cordon": "a", "uncordon": "b"}, "cordon"),
    ({"state_dir": "/s", "cordon": 5}, "cordon"),
    ({"state_dir": "/s", "clear_exclusions": "yes"}, "clear_exclusions"),
])
def test_bad_glance_requests_exit_2_naming_the_field(capsys, payload, field):
    code, [answer] = run_mode(capsys, "glance", payload)
    assert code == 2 and answer["error"]["field"] == field


@pytest.mark.parametrize("payload, field", [
    ({"state_dir": "/s"}, "why"),
    ({"state_dir": "/s", "why": "x", "timeout": -1}, "timeout"),
    ({"state_dir": "/s", "why": "x", "interval": "fast"}, "interval"),
    ({"state_dir": "/s", "why": "x", "wait": True}, "wait"),
])
def test_bad_drain_requests_exit_2_naming_the_field(capsys, payload, field):
    code, [event] = run_mode(capsys, "drain", payload)
    assert code == 2 and event["event"] == "error" and event["error"]["field"] == field


def test_drain_of_a_host_without_leases_cordons_it_and_ends_at_once(state, capsys):
    code, events = run_mode(capsys, "drain", {"state_dir": state, "why": "repair"})
    assert code == 0 and [e["event"] for e in events] == ["cordon", "leases", "drained"]
    assert events[0]["fresh"] and events[0]["cordon"]["why"] == "repair" and events[1]["leases"] == []
    code, events = run_mode(capsys, "drain", {"state_dir": state, "why": "again"})
    assert not events[0]["fresh"] and events[0]["cordon"]["why"] == "repair"


def drain_process(payload):
    """The drain mode as its own process, its stdin a pipe the test holds (as the launcher's channel)."""
    argv = [sys.executable, "-S", "-m", "launcher.hostside.program", "drain", json.dumps(payload)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True)


def events_of(proc, timeout=10):
    out, _ = proc.communicate(timeout=timeout)
    return [json.loads(line) for line in out.splitlines()]


def test_drain_waits_for_the_lease_then_ends_and_times_out_while_held(state):
    lease = hs.acquire(state, hs.Request("job-a", devices=[0, 1]))
    proc = drain_process({"state_dir": state, "why": "repair", "timeout": 0.3, "interval": 0.05})
    assert proc.wait(10) == 1
    events = events_of(proc)
    assert [e["event"] for e in events] == ["cordon", "leases", "timeout"]
    assert [h["job"] for h in events[-1]["leases"]] == ["job-a"]

    proc = drain_process({"state_dir": state, "why": "repair", "interval": 0.05})
    first = json.loads(proc.stdout.readline())
    assert first["event"] == "cordon" and not first["fresh"]
    assert [h["job"] for h in json.loads(proc.stdout.readline())["leases"]] == ["job-a"]
    released = time.monotonic()
    lease.release()
    assert proc.wait(10) == 0 and time.monotonic() - released < 2
    assert [(e["event"], e.get("leases")) for e in events_of(proc)] == [("leases", []), ("drained", None)]


def test_drain_ends_when_the_launcher_hangs_up(state):
    lease = hs.acquire(state, hs.Request("job-a", slots=1, capacity=2))
    try:
        proc = drain_process({"state_dir": state, "why": "repair"})
        assert json.loads(proc.stdout.readline())["event"] == "cordon"
        proc.stdin.close()
        assert proc.wait(10) == 0
        assert hs.read_state(state).cordon()["cordoned"]
    finally:
        lease.release()
