"""The warm interpreter (launcher/hostside/warm.py) as real processes running small modules."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher.hostside import warm

MODULES = {
    # Reads one variable at import, sets another unless present, as refinenet sets ONEDNN_MAX_CPU_ISA.
    "preloaded.py": """
        import os, sys
        IMPORTED_AS = sys.argv[0]
        READ_AT_IMPORT = os.environ.get("READ_AT_IMPORT")
        if "SET_BY_IMPORT" not in os.environ:
            os.environ["SET_BY_IMPORT"] = "from-import"
    """,
    "show.py": """
        import ctypes, json, os, subprocess, sys
        import preloaded
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('PER_RANK'))"],
                               stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
        print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
                          "per_rank": os.environ.get("PER_RANK"),
                          "c_getenv": libc.getenv(b"PER_RANK").decode(),
                          "child": child, "job_only": os.environ.get("JOB_ONLY"),
                          "set_by_import": os.environ.get("SET_BY_IMPORT"),
                          "imported_as": preloaded.IMPORTED_AS, "stdin": sys.stdin.read()}))
        print("to stderr", file=sys.stderr)
        sys.exit(int(os.environ.get("EXIT_WITH", "0")))
    """,
    "slow_import.py": """
        import time
        time.sleep(float(__import__("os").environ.get("IMPORT_S", "0")))
    """,
    "crash.py": """
        raise RuntimeError("the command failed")
    """,
    "broken.py": """
        import no_such_module_here
    """,
}


@pytest.fixture
def modules(tmp_path) -> Path:
    folder = tmp_path / "mods"
    folder.mkdir()
    for name, text in MODULES.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture
def start_env(modules) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "READ_AT", "SET_BY"))}
    return dict(env, PYTHONPATH=str(modules), JOB_ONLY="job", GLOG_v="3")


def start(name, modules, env, cwd, main=None):
    return warm.Zygote.start(name, sys.executable, modules, main=main, env=env, cwd=str(cwd),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(z):
    out, err = z.popen.communicate(timeout=60)
    return z.popen.returncode, out.decode(), err.decode()


def test_runs_the_module_with_the_requested_argv_env_and_cwd(modules, start_env, tmp_path):
    z = start("r0", ["preloaded", "json", "ctypes"], start_env, tmp_path)
    ready = z.wait_ready(60)
    assert ready["pid"] == z.pid and set(ready["modules"]) == {"preloaded", "json", "ctypes"}
    assert {"READ_AT_IMPORT", "SET_BY_IMPORT"} <= set(ready["import_env"])
    request_env = {k: v for k, v in start_env.items() if k != "JOB_ONLY"}
    request_env.update(PER_RANK="rank-7", EXIT_WITH="3")
    work = tmp_path / "rank7"
    work.mkdir()
    running = z.hand(["-m", "show", "--flag", "two words"], request_env, cwd=str(work), timeout=30)
    assert running == {"event": "running", "pid": z.pid}
    code, out, err = finish(z)
    assert code == 3, err
    seen = json.loads(out)
    assert seen["argv"] == [str(modules / "show.py"), "--flag", "two words"]
    assert seen["cwd"] == str(work) and seen["path0"] == str(work)
    # The environment is the request's, in Python, for C's getenv and for children (putenv).
    assert seen["per_rank"] == seen["c_getenv"] == seen["child"] == "rank-7"
    assert seen["job_only"] is None
    # What the imports set themselves is there, as in a fresh interpreter; the imports saw no script.
    assert seen["set_by_import"] == "from-import"
    assert seen["imported_as"] == ""
    assert seen["stdin"] == ""
    assert err == "to stderr\n"


def test_a_script_path_runs_too(modules, start_env, tmp_path):
    z = start("r1", ["json"], start_env, tmp_path)
    z.wait_ready(60)
    z.hand([str(modules / "show.py"), "x"], dict(start_env, PER_RANK="1"), cwd=str(tmp_path), timeout=30)
    code, out, _ = finish(z)
    seen = json.loads(out)
    assert code == 0
    assert seen["argv"] == [str(modules / "show.py"), "x"] and seen["path0"] == str(modules)


def test_an_uncaught_exception_exits_1_with_its_traceback(modules, start_env, tmp_path):
    z = start("r2", ["json"], start_env, tmp_path)
    z.wait_ready(60)
    z.hand(["-m", "crash"], start_env, timeout=30)
    code, _, err = finish(z)
    assert code == 1
    assert "RuntimeError: the command failed" in err


@pytest.mark.parametrize("changed", ["READ_AT_IMPORT", "GLOG_v"])
def test_a_request_changing_an_import_time_variable_is_refused(modules, start_env, tmp_path, changed):
    """READ_AT_IMPORT is traced as the module imports; GLOG_v is a native library's (static rule)."""
    z = start("r3", ["preloaded"], start_env, tmp_path)
    z.wait_ready(60)
    with pytest.raises(warm.ZygoteRefused) as caught:
        z.hand(["-m", "show"], dict(start_env, **{changed: "other"}), timeout=30)
    assert caught.value.variables == [changed]
    assert "r3" in str(caught.value) and changed in str(caught.value)
    code, out, _ = finish(z)
    assert code == warm.EXIT_REFUSED and out == ""


def test_main_imports_as_python_dash_m_and_runs_only_that_module(modules, start_env, tmp_path):
    z = start("r4", ["preloaded"], start_env, tmp_path, main="show")
    z.wait_ready(60)
    with pytest.raises(warm.ZygoteRefused, match="-m show"):
        z.hand(["-m", "crash"], start_env, timeout=30)
    finish(z)
    z = start("r4", ["preloaded"], start_env, tmp_path, main="show")
    z.wait_ready(60)
    z.hand(["-m", "show"], dict(start_env, PER_RANK="4"), cwd=str(tmp_path), timeout=30)
    code, out, _ = finish(z)
    assert code == 0
    assert json.loads(out)["imported_as"] == str(modules / "show.py")


def test_a_failed_import_is_reported_and_the_zygote_exits_1(modules, start_env, tmp_path):
    z = start("r5", ["broken"], start_env, tmp_path)
    with pytest.raises(warm.ZygoteError, match="no_such_module_here"):
        z.wait_ready(60)
    assert z.popen.wait(30) == 1


def test_an_idle_zygote_exits_0_when_its_channel_closes(modules, start_env, tmp_path):
    z = start("r6", ["preloaded"], start_env, tmp_path)
    z.wait_ready(60)
    z.close()
    assert z.popen.wait(30) == 0


def test_import_time_rule():
    start = {"GLOG_v": "3", "OMP_NUM_THREADS": "2", "PATH": "/bin", "MS_NODE_ID": "0"}
    same = dict(start, MS_NODE_ID="1", MS_ROLE="MS_WORKER", LOCAL_RANK="1")
    assert warm.changed_import_env(start, same, traced=()) == []
    assert warm.changed_import_env(start, dict(start, OMP_NUM_THREADS="4", DEVICE_ID="1"), ()) == \
        ["DEVICE_ID", "OMP_NUM_THREADS"]
    assert warm.changed_import_env(start, dict(start, PATH="/usr/bin"), traced={"PATH"}) == ["PATH"]
    assert warm.environment_for({"A": "1", "B": "2"}, {"B": "2", "C": "3"}, {"B": "2", "D": "4"}) == \
        {"A": "1", "B": "2", "D": "4"}


def test_the_agent_side_works_from_the_source_alone(modules, start_env, tmp_path):
    """An agent holds warm.py's text, not the launcher: executing it gives `Zygote`, fed the same text."""
    text = warm.source()
    namespace = {"__name__": "refinenet_warm"}
    exec(compile(text, "refinenet-warm", "exec"), namespace)  # noqa: S102
    z = namespace["Zygote"].start("r7", sys.executable, ["preloaded"], env=start_env, cwd=str(tmp_path),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, program=text)
    assert z.wait_ready(60)["modules"] == {"preloaded": pytest.approx(0, abs=5)}
    z.hand(["-m", "show"], dict(start_env, PER_RANK="7"), cwd=str(tmp_path), timeout=30)
    code, out, _ = finish(z)
    assert code == 0 and json.loads(out)["per_rank"] == "7"
    assert len(" ".join(warm.command(sys.executable, ["preloaded"], "show", size=len(text)))) < 600


def test_an_agent_can_wait_for_ready_in_its_own_select_loop(modules, start_env, tmp_path):
    import select

    z = start("r8", ["preloaded"], start_env, tmp_path)
    with pytest.raises(warm.ZygoteError, match="no ready within 0 s"):
        z.wait_ready(timeout=0)  # nothing yet: it is still starting
    assert select.select([z], [], [], 60)[0] == [z]
    assert z.wait_ready(timeout=0)["event"] == "ready"
    z.close()
    assert z.popen.wait(30) == 0


def _agent_attempt(agent, number, document, events):
    agent.begin_attempt(number, document, [lambda line: None], [], events)
    assert agent.attempt_done(number).wait(60)
    found = []
    while not events.empty():
        event = events.get()
        if event.kind == "started":
            found.append(dict(event.data))
    return found


@pytest.mark.parametrize("pause_s,waited", [(0.0, True), (2.5, False)])
def test_the_agent_says_how_long_taking_a_warm_interpreter_took(modules, start_env, tmp_path, pause_s,
                                                                waited):
    """A restart that comes before the warm interpreter finished importing waits for it; the started event
    says how long (`warm_s`), so the wait is counted as the imports it is, not as the launcher's start."""
    import queue
    import time

    from launcher.agent.session import start_agent
    from launcher.transport.local import LocalTransport

    env = dict(start_env, IMPORT_S="1.5")
    document = {"job_id": "warm-test", "host": "local", "grace": 2, "files": [], "tails": [],
                "processes": [{"name": "r0", "argv": [sys.executable, "-m", "crash"], "env": env,
                               "cwd": str(tmp_path), "watch": False,
                               "warm": {"python": sys.executable, "argv": ["-m", "crash"], "main": "crash",
                                        "modules": ["slow_import"], "start_env": env}}]}
    agent = start_agent(LocalTransport("local"), sys.executable, {"job_id": "warm-test", "host": "local"})
    try:
        events = queue.Queue()
        (first,) = _agent_attempt(agent, 1, document, events)
        assert first["warm"] is False and "warm_s" not in first
        agent.send("warm")
        time.sleep(pause_s)
        (second,) = _agent_attempt(agent, 2, document, events)
    finally:
        agent.close()
    assert second["warm"] is True
    if waited:
        assert 0.5 < second["warm_s"] < 30
    else:
        assert second["warm_s"] < 0.5
