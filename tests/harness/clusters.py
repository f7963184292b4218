"""Cluster files for end-to-end tests and benchmarks, written as YAML the way a user writes them.

`cluster_file` takes host entries (`local_host`, `ssh_host`, or plain dicts) and fills in the sections a
test does not care about with values that keep a test quick: no restarts, backoff 1 s, health sampled
every 5 s without device checks and 0.1 GB of free disk, 60 s to form the cluster. Each section given
is merged over those values (`quick=False`: none of them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import yaml

RESTART = {"max_restarts": 0, "backoff_s": 1, "backoff_max_s": 1}
HEALTH = {"interval_s": 5, "check_devices": False, "min_free_disk_gb": 0.1}
TIMEOUTS = {"cluster_s": 60, "heartbeat_s": 10, "stop_grace_s": 3}
#: r1 of a ResNet-18 RefineNet small enough for CPU tests: crop 33, batch 1 per rank, 3 epochs.
TINY_R1 = {"depth": 18, "crop-size": 33, "batch-size": 1, "epochs": 3, "save-epochs": 1, "seed": 1,
           "workers": 1, "base-lr": 0.002, "mode": "pynative"}


def stage_args(overrides: Mapping[str, Any]) -> List[str]:
    """`job.stage_overrides` of a stage as the launcher passes them to its ranks: `--name value`, a bare
    `--name` for true, nothing for false or null (a training rank's own command line, e.g. a reference
    run of the same configuration without the launcher)."""
    args: List[str] = []
    for name, value in overrides.items():
        if value is None or value is False:
            continue
        args += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return args


def local_host(workdir: Union[str, Path], *, name: str = "local", ranks: int = 1,
               python: Optional[str] = None, **fields: Any) -> Dict[str, Any]:
    """A host entry reached through the local transport (no `ssh`), working in `workdir`."""
    entry: Dict[str, Any] = {"name": name, "ranks": ranks, "workdir": str(workdir), **fields}
    if python:
        entry["python"] = python
    return entry


def ssh_host(host: Any, *, ranks: int = 1, python: Optional[str] = None, **fields: Any) -> Dict[str, Any]:
    """The entry of a simulated SSH host (an `SshHost` of tests/e2e/sshd.py), `python` replaced if given."""
    entry = {**host.spec_dict(), "ranks": ranks, **fields}
    if python:
        entry["python"] = python
    return entry


def cluster_file(path: Path, hosts: Sequence[Mapping[str, Any]] = (), *, name: str = "test",
                 backend: str = "dynamic", device: str = "cpu", spares: Sequence[Mapping[str, Any]] = (),
                 env: Optional[Mapping[str, str]] = None, job: Optional[Mapping[str, Any]] = None,
                 restart: Optional[Mapping[str, Any]] = None, health: Optional[Mapping[str, Any]] = None,
                 timeouts: Optional[Mapping[str, Any]] = None, lists: Iterable[str] = (), quick: bool = True,
                 **top: Any) -> Path:
    """Write the cluster file `path` and return it. `job` defaults to `train.lst` into `out`; `lists` are
    input files written into each host's workdir, made if missing (a stand-in reads none, the host check
    wants them); `top` adds or replaces other top-level sections (`master`, `launch`, `slurm`, ...).
    `quick=False` writes the sections given and nothing else (the launcher's own defaults apply, the
    hosts' state in the machine's default `sharing.state_dir` among them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries, lists = [dict(h) for h in hosts], tuple(lists)
    for host in [*entries, *spares] if lists else ():
        Path(host["workdir"]).mkdir(parents=True, exist_ok=True)
        for list_name in lists:
            (Path(host["workdir"]) / list_name).write_text("a.jpg a.png\n")
    data: Dict[str, Any] = {"name": name, "backend": backend, "device": device}
    if entries:
        data["hosts"] = entries
    if spares:
        data["spares"] = [dict(s) for s in spares]
    if env:
        data["env"] = dict(env)
    if quick:
        job = job if job is not None else {"data": "train.lst", "output_dir": "out"}
        restart = {**RESTART, **(restart or {})}
        health = {**HEALTH, **(health or {})}
        timeouts = {**TIMEOUTS, **(timeouts or {})}
    for section, value in (("job", job), ("restart", restart), ("health", health), ("timeouts", timeouts)):
        if value is not None:
            data[section] = dict(value)
    if quick:  # the hosts' shared state (leases, cordons, excluded hosts) of this test, not the machine's
        data["sharing"] = {"state_dir": str(path.parent / "host-state"), **(top.pop("sharing", None) or {})}
    data.update(top)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def two_rank_cluster(folder: Path, python: str, env: Mapping[str, str], *, remote: Any = None,
                     name: str = "faults", **sections: Any) -> Path:
    """`folder/cluster.yaml`: two ranks of `python` (the stand-in's wrapper), both on the local host
    (workdir `folder/local`) or the second on the simulated SSH host `remote`; `sections` as for
    `cluster_file` (`restart`, `health`, ...)."""
    folder = Path(folder)
    hosts = [local_host(folder / "local", ranks=1 if remote is not None else 2, python=python)]
    if remote is not None:
        hosts.append(ssh_host(remote, python=python))
    return cluster_file(folder / "cluster.yaml", hosts, name=name, env=env, lists=("train.lst",), **sections)
