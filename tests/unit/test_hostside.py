"""The host program's pure parts: the hang rule on a fake clock, stop phases, process environments,
the file writer's checks and end marker, the mode table, and that every source runs on Python 3.6."""
import ast
import hashlib
import json
import sys
from pathlib import Path

import pytest

from launcher.hostside import files, program
from launcher.hostside import procset as agent
from launcher.transport import hostprog
from launcher.transport.modes import write_args

HOSTSIDE = Path(program.__file__).parent


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_source_silent_for_longer_than_hang_s_is_hung_once():
    clock = Clock()
    rule = agent.HangRule(10, clock)
    rule.watch(("p", 0))
    rule.watch(("p", 1))
    clock.now += 9
    rule.output(("p", 1))
    assert rule.hung() == []
    clock.now += 1.5
    assert rule.hung() == [(("p", 0), 10.5)]
    clock.now += 20
    assert rule.hung() == [(("p", 1), 21.5)]
    assert rule.hung() == []


def test_a_metrics_file_that_changes_is_a_sign_of_life_and_one_that_appears_too():
    clock = Clock()
    rule = agent.HangRule(5, clock)
    rule.watch("a", mtime=1000.0)
    rule.watch("b", mtime=None)
    for mtime_a in (1001.0, 1002.0):
        clock.now += 4
        rule.metrics("a", mtime_a)
        rule.metrics("b", 7.0)
        assert rule.hung() == []
    clock.now += 2
    rule.metrics("a", 1002.0)
    rule.metrics("b", 7.0)
    assert rule.hung() == [("b", 6.0)]
    clock.now += 4
    assert rule.hung() == [("a", 6.0)]


def test_no_hang_s_means_no_hang_and_a_forgotten_source_is_never_hung():
    clock = Clock()
    off = agent.HangRule(None, clock)
    off.watch("x")
    clock.now += 1e6
    assert off.hung() == []
    rule = agent.HangRule(1, clock)
    rule.watch("x")
    rule.forget("x")
    clock.now += 5
    rule.output("x")
    rule.metrics("x", 3.0)
    assert rule.hung() == []


def test_before_its_first_step_a_source_has_the_start_up_allowance():
    clock = Clock()
    rule = agent.HangRule(5, clock, startup_s=60)
    rule.watch("a")
    rule.watch("b")
    clock.now += 30
    rule.output("a")  # a line that is no step: still starting
    assert rule.hung() == [] and rule.is_starting("a")
    rule.progressed("b")
    clock.now += 5.5
    assert rule.hung() == [("b", 5.5)]
    clock.now += 55
    assert rule.hung() == [("a", 60.5)]
    short = agent.HangRule(5, clock, startup_s=1)  # never below the hang timeout
    short.watch("c")
    clock.now += 4
    assert short.hung() == []
    assert agent.HangRule(None, clock, startup_s=60).startup_s is None


def test_a_progress_line_or_first_step_event_ends_the_start_up(tmp_path):
    metrics = tmp_path / "rank_1.jsonl"
    doc = {"attempt": 1, "hang_s": 2, "startup_s": 100, "progress": "loss is",
           "processes": [{"name": "r0", "argv": ["true"], "watch": True},
                         {"name": "r1", "argv": ["true"], "watch": True, "metrics": str(metrics)}]}
    procs = agent.ProcSet(doc, [])
    for key in (("p", 0), ("p", 1)):
        procs.hangs.watch(key)
    procs.saw(("p", 0), b"epoch: 1 step: 1, los", b"s is 0.5\n")
    assert not procs.hangs.is_starting(("p", 0)) and procs.hangs.is_starting(("p", 1))
    metrics.write_text(json.dumps({"event": "first_step", "time": 1.0}) + "\n")
    procs.forward_metrics()
    assert not procs.hangs.is_starting(("p", 1))
    assert b'"event": "workload"' in procs.out[-1]


def test_stop_phases_have_names():
    phases = {agent.StopPhase.FIRST_SIGNAL, agent.StopPhase.TERM, agent.StopPhase.KILL}
    assert len(phases) == 3 and all(isinstance(p, str) and p for p in phases)


def test_processes_inherit_the_agents_environment_without_shell_startup_variables():
    base = {"PATH": "/bin", "HOME": "/h", "BASH_ENV": "/h/.bash_env", "ENV": "/h/.shrc", "SHLVL": "0"}
    env = agent.process_environment(base, {"RANK": "3", "PATH": "/opt/bin"})
    assert env == {"PATH": "/opt/bin", "HOME": "/h", "SHLVL": "1", "RANK": "3"}
    assert "BASH_ENV" in base
    assert agent.process_environment({}, {})["SHLVL"] == "1"
    assert agent.process_environment({"SHLVL": "3"}, {})["SHLVL"] == "3"


def test_a_write_takes_the_name_only_when_size_and_digest_match(tmp_path):
    target = tmp_path / "a" / "b" / "ckpt"
    data = [b"x" * 1000, b"y" * 24]
    digest = hashlib.sha256(b"".join(data)).hexdigest()
    assert files.write_atomic(str(target), data, 0o600, 1024, digest) == (1024, digest)
    assert target.read_bytes() == b"".join(data) and target.stat().st_mode & 0o777 == 0o600
    for size, sha in ((1023, None), (None, "0" * 64)):
        with pytest.raises(files.Mismatch):
            files.write_atomic(str(target), [b"other"], 0o644, size, sha)
    assert target.read_bytes() == b"".join(data)
    assert sorted(p.name for p in target.parent.iterdir()) == ["ckpt"]


def test_a_stream_of_unannounced_size_counts_only_with_its_end_marker():
    def run(chunks):
        return b"".join(files.until_end_marker(chunks))

    body = bytes(range(256)) * 40
    stream = body + files.end_marker(len(body))
    for size in (1, 7, 41, len(stream)):
        assert run(stream[i:i + size] for i in range(0, len(stream), size)) == body
    assert run([files.end_marker(0)]) == b""
    with pytest.raises(files.Mismatch, match="stopped before its end"):
        run([body])
    with pytest.raises(files.Mismatch, match="received 10 of 11 bytes"):
        run([b"0123456789" + files.end_marker(11)])


def test_write_arguments_round_trip_and_bad_ones_are_named():
    args = write_args("/w/x y", 0o640, 12, "ab" * 32)
    assert files.parse_write_args(args) == ("/w/x y", 0o640, 12, ("sha256", "ab" * 32))
    assert files.parse_write_args(write_args("/w/f", 0o644, manifest="/w/f.json")) == (
        "/w/f", 0o644, None, ("manifest", "/w/f.json"))
    for bad, word in ((["p", "9z", "-", "-"], "MODE"), (["p", "644", "x", "-"], "SIZE"),
                      (["p", "644", "-", "md5=1"], "CHECK"), (["p"], "usage")):
        with pytest.raises(ValueError, match=word):
            files.parse_write_args(bad)


def test_the_manifest_gives_size_and_digest(tmp_path):
    manifest = tmp_path / "refinenet-1_4.json"
    manifest.write_text(json.dumps({"size": 12, "sha256": "AB" * 32, "epoch": 1}))
    assert files.expected_from_manifest(str(manifest)) == (12, "ab" * 32)
    manifest.write_text(json.dumps({"size": 12}))
    with pytest.raises(ValueError, match="no sha256"):
        files.expected_from_manifest(str(manifest))


def test_unknown_modes_and_bad_usage_exit_2():
    assert program.main([]) == 2
    assert program.main(["rm", "-rf"]) == 2
    assert program.main(["kill", "x", "15"]) == 2
    assert program.main(["kill", "1", "0", "NOEQUALS"]) == 2
    assert program.main(["sweep"]) == 2
    assert program.main(["read"]) == 2
    assert program.main(["write", "p", "644", "-"]) == 2


def test_the_bundle_holds_every_host_source_and_nothing_else_of_the_launcher():
    names = hostprog.bundle().decode().split("\0")[::2]
    expected = {f"launcher.hostside.{p.stem}" for p in HOSTSIDE.glob("*.py") if p.name != "__init__.py"}
    assert set(names) == expected | {"launcher", "launcher.hostside"}
    assert set(hostprog.MODES) == set(program.MODES)


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module


@pytest.mark.parametrize("path", sorted(HOSTSIDE.glob("*.py")), ids=lambda p: p.name)
def test_every_host_source_is_python_3_6_and_imports_the_standard_library_only(path):
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    for name in _imports(tree):
        top = name.split(".")[0]
        assert name.startswith("launcher.hostside") or top in sys.stdlib_module_names, f"{path.name}: {name}"
    assert "from __future__ import annotations" not in source and ":=" not in source
