"""`refinenet-launch cluster`, `cordon`, `uncordon` and `drain` through the real CLI, on simulated SSH hosts
(real sshd, each host its own `state_dir`) with real launches of `-- COMMAND` jobs beside them.

"Another machine" is a launcher with another HOME and another runs folder: all it shares with the first
is the cluster file and the hosts, which is all the cordon needs.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from launcher.hostside import hoststate as hs
from tests.fixtures.fake_tools import FakeTools, recorded
from tests.harness.cli import cli, launcher_argv
from tests.harness.clusters import cluster_file, local_host, ssh_host
from tests.harness.environment import child_env as repo_env
from tests.harness.hosts import free_port, login_home, start_servers, startup_trace, stop_servers
from tests.harness.launched import LaunchedJob

pytestmark = pytest.mark.e2e


def entry(server, state: Path, python: str, slots=None) -> dict:
    extra = {"state_dir": str(state)}
    if slots is not None:
        extra["slots"] = slots
    return ssh_host(server.host(), python=python, **extra)


def cluster(path: Path, hosts, spares=()) -> Path:
    return cluster_file(path, hosts, spares=spares, name="shared", job={}, master={"port": "auto"},
                        timeouts={"stop_grace_s": 2})


def machine(tmp_path: Path, name: str, base: dict) -> dict:
    """The environment of a launcher on another machine: its own HOME."""
    home = tmp_path / f"{name}-home"
    home.mkdir(exist_ok=True)
    return dict(base, HOME=str(home))


def waits_for_flag(flag: Path):
    return ("bash", "-c", f"while [ ! -e {flag} ]; do sleep 0.1; done; echo flag seen")


def launch(path: Path, runs: Path, job_id: str, env: dict, *command: str, extra=()) -> LaunchedJob:
    return LaunchedJob(path, runs, job_id, env, *extra, "--", *command, stage=None)


def leases(state: Path):
    return [(h.job, h.slots) for h in hs.read_state(str(state)).leases]


def tickets(state: Path):
    return [t.job for t in hs.read_state(str(state)).queue()]


def test_a_cordon_from_one_machine_holds_off_launches_from_another_until_uncordoned(
        tmp_path, ssh_servers, standin_python, child_env):
    a, b = ssh_servers
    state_a, state_b = tmp_path / "state-a", tmp_path / "state-b"
    only_a = cluster(tmp_path / "only-a.yaml", [entry(a, state_a, standin_python, slots=2)])
    with_spare = cluster(tmp_path / "with-spare.yaml", [entry(a, state_a, standin_python, slots=2)],
                         spares=[entry(b, state_b, standin_python, slots=2)])
    ops, user = machine(tmp_path, "ops", child_env), machine(tmp_path, "user", child_env)

    done = cli("cordon", "--cluster", only_a, "host-a", "--reason", "PSU swap", env=ops, cwd=ops["HOME"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("host-a cordoned by root since ") and ": PSU swap\n" in done.stdout

    def run(path: Path, job: str):
        return cli("--cluster", path, "--runs-dir", tmp_path / "user-runs", "--job-id", job, "--", "bash",
                   "-c", f"echo {job} ran", env=user, cwd=user["HOME"], timeout=180)

    refused = run(only_a, "refused")
    assert refused.returncode == 2, refused.stderr
    assert "host host-a takes no new job: cordoned by root since " in refused.stderr
    assert "PSU swap; nothing was started" in refused.stderr
    assert "refused ran" not in refused.stdout and leases(state_a) == []

    spared = run(with_spare, "spared")
    assert spared.returncode == 0, spared.stderr
    assert "host host-a takes no new job (cordoned by root since " in spared.stderr
    assert "its ranks run on spare host-b" in spared.stderr and "spared ran" in spared.stdout

    back = cli("uncordon", "--cluster", only_a, "host-a", env=ops, cwd=ops["HOME"])
    assert back.returncode == 0, back.stderr
    assert back.stdout.startswith("host-a uncordoned (it was cordoned by root since ")
    assert "PSU swap); 0 exclusion records cleared" in back.stdout
    after = run(only_a, "after")
    assert after.returncode == 0, after.stderr
    assert "after ran" in after.stdout


def test_drain_waits_for_the_running_job_says_whom_and_returns_when_it_ends(
        tmp_path, ssh_servers, standin_python, child_env):
    a = ssh_servers[0]
    state = tmp_path / "state-a"
    path = cluster(tmp_path / "c.yaml", [entry(a, state, standin_python, slots=2)])
    flag = tmp_path / "done"
    job = launch(path, tmp_path / "runs", "held", child_env, *waits_for_flag(flag))
    drain = None
    try:
        job.wait_for("the job's lease on host-a", lambda: leases(state) == [("held", 1)], 120)
        argv = launcher_argv("drain", "--cluster", path, "host-a", "--reason", "kernel update")
        drain = subprocess.Popen(argv, env=repo_env(child_env), cwd=tmp_path, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first, second = drain.stdout.readline(), drain.stdout.readline()
        assert first.startswith("host-a cordoned by root since ") and first.endswith(": kernel update\n")
        assert second.startswith("waiting for 1 job on host-a: job held of root (1 slot) since ")

        timed = cli("drain", "--cluster", path, "host-a", "--timeout", "1", env=child_env, cwd=tmp_path)
        assert timed.returncode == 1, timed.stderr
        lines = timed.stdout.splitlines()
        assert lines[0].startswith("host-a already cordoned by root since ") and "kernel update" in lines[0]
        assert lines[1].startswith("waiting for 1 job on host-a: job held of root (1 slot)")
        assert lines[2].startswith("host-a not drained within 1 s: still job held of root") and \
            lines[2].endswith("; it stays cordoned")
        assert drain.poll() is None and job.proc.poll() is None

        flag.touch()
        ended = time.monotonic()
        rest, err = drain.communicate(timeout=60)
        assert drain.returncode == 0, err
        assert time.monotonic() - ended < 30
        assert rest.startswith("host-a drained: no job holds a lease there") and "waiting for" not in rest
        assert f"refinenet-launch uncordon --cluster {path} host-a" in rest
        assert job.wait(60) == 0, job.stderr
    finally:
        flag.touch()
        job.close()
        if drain is not None and drain.poll() is None:
            drain.kill()
            drain.wait()

    refused = cli("--cluster", path, "--runs-dir", tmp_path / "runs", "--job-id", "late", "--", "true",
                  env=child_env, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2
    assert "cordoned by root" in refused.stderr and "kernel update" in refused.stderr
    assert cli("uncordon", "--cluster", path, "host-a", env=child_env, cwd=tmp_path).returncode == 0


def test_cluster_shows_a_running_jobs_lease_a_waiting_launch_and_cordon_and_exclusion_records(
        tmp_path, ssh_servers, standin_python, child_env):
    a, b = ssh_servers
    state_a, state_b = tmp_path / "state-a", tmp_path / "state-b"
    path = cluster(tmp_path / "c.yaml", [entry(a, state_a, standin_python, slots=1)],
                   spares=[entry(b, state_b, standin_python, slots=1)])
    flag = tmp_path / "done"
    first = launch(path, tmp_path / "runs", "first", child_env, *waits_for_flag(flag))
    second = None
    try:
        first.wait_for("first's lease", lambda: leases(state_a) == [("first", 1)], 120)
        second = launch(path, tmp_path / "runs", "second", child_env, "bash", "-c", "echo second ran",
                        extra=("--wait",))
        second.wait_for("second in host-a's queue", lambda: tickets(state_a) == ["second"], 120)
        hs.record_exclusion(str(state_b), "rank 0 exited with code 1", "older-job")
        cordoned = cli("cordon", "--cluster", path, "host-b", "--reason", "fan noise", env=child_env,
                       cwd=tmp_path)
        assert cordoned.returncode == 0, cordoned.stderr

        shown = cli("cluster", "--cluster", path, env=child_env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert text.startswith(f"cluster shared ({path}): 1 host, 1 spare, at ")
        assert "\nhost-a (127.0.0.2)  host  in use\n" in text
        assert "  slots 1 of 1 used: job first of root (1) since " in text
        assert "  queue: 1. job second of root (1 slot) waiting since " in text
        assert "\nhost-b (127.0.0.3)  spare  cordoned\n" in text
        assert "  cordoned by root since " in text and "fan noise" in text
        assert "  cooling down: excluded 1 time (last: job older-job: rank 0 exited with code 1)" in text
        assert "job older-job (by root): rank 0 exited with code 1" in text
        assert text.rstrip().endswith("hosts: 1 in use, 1 cordoned")

        shown = cli("cluster", "--cluster", path, "--json", env=child_env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        doc = json.loads(shown.stdout)
        host, spare = doc["hosts"]
        assert (host["name"], host["status"], host["slots"]["used"], host["slots"]["total"]) == (
            "host-a", "in use", 1, 1)
        [holder] = host["slots"]["holders"]
        assert (holder["job"], holder["user"], holder["slots"]) == ("first", "root", 1)
        assert holder["launcher"] and holder["since"] <= host["clock"]
        assert [t["job"] for t in host["queue"]] == ["second"]
        assert host["state_dir"] == str(state_a)
        assert [d["what"] for d in host["disks"]] == ["state dir", "workdir"]
        assert (spare["role"], spare["cordoned"], spare["cordon"]["why"]) == ("spare", True, "fan noise")
        assert [r["job"] for r in spare["exclusions"]] == ["older-job"]
        assert spare["cooldown"]["remaining_s"] > 0

        flag.touch()
        assert first.wait(60) == 0, first.stderr
        assert second.wait(120) == 0, second.stderr
        said = "waiting for host-a (place 1 in its queue): 1 slot(s) held by job first of root"
        assert said in second.stderr
    finally:
        flag.touch()
        first.close()
        if second is not None:
            second.close()


def test_bad_input_exits_2_and_broken_or_unreachable_hosts_are_named(tmp_path, ssh_servers, standin_python,
                                                                     child_env):
    a, b = ssh_servers
    state_a = tmp_path / "state-a"
    path = cluster(tmp_path / "c.yaml", [entry(a, state_a, standin_python, slots=2)],
                   spares=[entry(b, tmp_path / "state-b", standin_python)])

    def run(*args):
        return cli(*args, env=child_env, cwd=tmp_path)

    unknown = run("cordon", "--cluster", path, "host-z")
    assert unknown.returncode == 2
    assert f"HOST: no host or spare 'host-z' in {path} (hosts: host-a; spares: host-b)" in unknown.stderr
    for args, says in [
        (("cluster", "--cluster", tmp_path / "missing.yaml"), f"{tmp_path / 'missing.yaml'}: cannot read"),
        (("cluster", "--cluster", path, "--iterations", "2"), "--iterations: only with --watch"),
        (("cluster", "--cluster", path, "--watch", "0"), "--watch: 0 is not a number of seconds > 0"),
        (("drain", "--cluster", path, "host-a", "--timeout", "0"), "--timeout: 0 is not a number of seconds"),
        (("cordon", "--cluster", path, "host-a", "--reason", " "), "--reason: empty"),
        (("uncordon", "--cluster", path), "the following arguments are required: HOST"),
        (("cluster", "--cluster", "slurm-cpu"), "backend slurm: Slurm keeps the state of its nodes"),
    ]:
        result = run(*args)
        assert result.returncode == 2 and says in result.stderr, (args, result.stderr)
    assert not state_a.exists()

    hs.cordon(str(state_a), "first")
    broken = state_a / "cordon.0000000009.0123456789abcdef"
    broken.write_text("{not json")
    for command in (("cordon", "--reason", "x"), ("uncordon",), ("drain",)):
        result = run(command[0], "--cluster", path, "host-a", *command[1:])
        assert result.returncode == 2, result.stderr
        assert f"host-a: cannot use its shared state: {broken}: not a valid state record" in result.stderr
    shown = run("cluster", "--cluster", path)
    assert shown.returncode == 1
    assert f"  problem: shared state: {broken}: not a valid state record" in shown.stdout
    assert "host-a (127.0.0.2)  host  unhealthy" in shown.stdout
    assert "host-b (127.0.0.3)  spare  free" in shown.stdout

    dead = dict(ssh_host(a.host()), name="host-dead", state_dir=str(tmp_path / "d"))
    dead["ssh"] = dict(dead["ssh"], port=free_port("127.0.0.2"))
    down = cluster(tmp_path / "down.yaml", [dead])
    result = run("cordon", "--cluster", down, "host-dead")
    assert result.returncode == 2
    assert "host-dead (127.0.0.2): connection refused by 127.0.0.2:" in result.stderr
    assert "nothing changed" in result.stderr
    shown = run("cluster", "--cluster", down, "--json")
    [host] = json.loads(shown.stdout)["hosts"]
    assert shown.returncode == 1
    assert host["status"] == "unreachable" and "connection refused" in host["unreachable"]


def test_one_login_per_host_per_reading(tmp_path, ssh_client_key, standin_python, child_env):
    home = login_home(tmp_path / "home", pyenv=None)
    servers = start_servers(tmp_path / "hosts", ssh_client_key, 2, base="127.0.4.", login_home=home)
    try:
        path = cluster(tmp_path / "c.yaml", [entry(s, tmp_path / f"state-{s.name}", standin_python, slots=1)
                                              for s in servers])
        once = cli("cluster", "--cluster", path, env=child_env, cwd=tmp_path)
        assert once.returncode == 0, once.stderr
        assert len(startup_trace(home)) == 2
        watched = cli("cluster", "--cluster", path, "--watch", "0.2", "--iterations", "3", env=child_env,
                      cwd=tmp_path)
        assert watched.returncode == 0, watched.stderr
        assert watched.stdout.count("cluster shared (") == 3 and "\x1b[" not in watched.stdout
        assert len(startup_trace(home)) == 2 + 3 * 2
        lines = cli("cluster", "--cluster", path, "--json", "--watch", "0.1", "--iterations", "2",
                    env=child_env, cwd=tmp_path).stdout.splitlines()
        assert [len(json.loads(line)["hosts"]) for line in lines] == [2, 2]
    finally:
        stop_servers(servers)


def test_devices_of_a_local_ascend_host_with_their_holders_and_health(tmp_path, child_env):
    tools = FakeTools(tmp_path / "tools")
    info = recorded("npu_smi/npu_smi_info_910b2c_2card_with_procs.txt").replace(
        "| No running processes found in NPU 0                                                            |",
        "| 0       0                 | 4242          | python                   | 3100                    |")
    tools.install("npu-smi", info)
    state = tmp_path / "state"
    path = cluster_file(tmp_path / "npu.yaml", [local_host(tmp_path / "w", name="node-a", ranks=None,
                                                           devices=[0, 1], state_dir=str(state))],
                        name="npu", backend="rank_table", device="ascend", quick=False)
    env = dict(child_env, PATH=tools.path_env(child_env["PATH"]))
    lease = hs.acquire(str(state), hs.Request("npu-job", devices=[1], launcher="laptop", launcher_pid=7))
    try:
        shown = cli("cluster", "--cluster", path, env=env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "  devices 0 free | 1 job npu-job of root since " in shown.stdout
        assert "  health 0,1 HEALTHY" in shown.stdout
        assert "  outside any lease: device 0 runs pid 4242 (python)" in shown.stdout
        tools.set_output("npu-smi", info.replace("| 0     910B2C              | OK  ",
                                                 "| 0     910B2C              | Alarm"))
        shown = cli("cluster", "--cluster", path, "--json", env=env, cwd=tmp_path)
        assert shown.returncode == 1
        [host] = json.loads(shown.stdout)["hosts"]
        assert [(d["device"], d["verdict"], (d["holder"] or {}).get("job")) for d in host["devices"]] == [
            (0, "UNHEALTHY", None), (1, "HEALTHY", "npu-job")]
    finally:
        lease.release()
