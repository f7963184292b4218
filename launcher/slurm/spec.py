"""The `slurm:` section of a cluster file (`backend: slurm`), and the hosts of an allocation's nodes."""
from __future__ import annotations

import os
import re
from typing import Any, Tuple

from launcher.backends.traits import ALLOCATION_RANK_BACKENDS, traits
from launcher.slurm.text import time_limit_seconds
from launcher.spec.fields import NAME, Checker, LocalDefaults, abs_path, kind, parse_devices, sub
from launcher.spec.model import DEFAULT_HCCN_CONF, HostSpec, SlurmSpec

_SLURM_KEYS = ("partition", "nodes", "ranks_per_node", "devices", "time_limit", "account", "sbatch_options",
               "srun_options", "python", "workdir", "ranks_with", "hccn_conf", "save_before_s")


_TIME_LIMIT = re.compile(r"UNLIMITED|infinite|\d+(?::\d{1,2}){0,2}|\d+-\d{1,2}(?::\d{1,2}){0,2}")


def parse_slurm(c: Checker, top: dict, device: str, defaults: LocalDefaults) -> SlurmSpec:
    """The `slurm:` section; `hosts`, `spares` and `master.host` are the allocation's, so they are refused."""
    for key, why in (("hosts", "the hosts are the nodes of the Slurm allocation; set slurm.nodes instead"),
                     ("spares", "Slurm replaces nodes itself: submit again with more nodes instead")):
        if top.get(key) is not None:
            raise c.fail(key, f"not with backend slurm: {why}")
    s = c.mapping(top.get("slurm"), "slurm", _SLURM_KEYS, required=("nodes",))
    if not s:
        raise c.fail("slurm", "required for backend slurm (at least slurm.nodes)")
    nodes = c.integer(s["nodes"], "slurm.nodes", lo=1, hi=100000)
    if device == "cpu":
        if s.get("devices") is not None:
            raise c.fail("slurm.devices", "device cpu has no device ids: give `ranks_per_node: N`")
        if s.get("ranks_per_node") is None:
            raise c.fail("slurm.ranks_per_node", "required for device cpu: the number of ranks on each node")
        devices = tuple(range(c.integer(s["ranks_per_node"], "slurm.ranks_per_node", lo=1, hi=4096)))
    else:
        if s.get("ranks_per_node") is not None:
            raise c.fail("slurm.ranks_per_node", f"device {device}: one rank per device, list them in "
                                                 f"slurm.devices")
        devices = parse_devices(c, {"devices": s.get("devices")}, "slurm", device)
    ranks_with = c.choice(s.get("ranks_with", "rank_table" if device == "ascend" else "dynamic"),
                          "slurm.ranks_with", ALLOCATION_RANK_BACKENDS)
    if traits(ranks_with).ascend_only and device != "ascend":
        raise c.fail("slurm.ranks_with",
                     f"{ranks_with} needs device ascend (HCCL rank tables are Ascend only)")
    time_limit = None
    if s.get("time_limit") is not None:
        time_limit = c.string(s["time_limit"], "slurm.time_limit", _TIME_LIMIT,
                              "a Slurm time limit (MINUTES, HH:MM:SS, D-HH:MM:SS or UNLIMITED)")
    workdir = c.string(s.get("workdir", "."), "slurm.workdir")
    try:
        workdir.format(node="n")
    except (KeyError, IndexError, ValueError) as exc:
        raise c.fail("slurm.workdir", f"only {{node}} may be replaced in it ({exc!s})") from None
    workdir = os.path.normpath(os.path.join(defaults.cwd, os.path.expanduser(workdir)))
    hccn_conf = DEFAULT_HCCN_CONF
    if s.get("hccn_conf") is not None:
        if device != "ascend":
            raise c.fail("slurm.hccn_conf", "only for device ascend")
        hccn_conf = abs_path(c, s["hccn_conf"], "slurm.hccn_conf")
    save_before_s = c.integer(s.get("save_before_s", 300), "slurm.save_before_s", lo=0, hi=86400)
    limit_s = None if time_limit is None else time_limit_seconds(time_limit)
    if save_before_s and limit_s is not None and save_before_s >= limit_s:
        given = "" if "save_before_s" in s else " (its default)"
        raise c.fail("slurm.save_before_s", f"{save_before_s} s{given} is not less than slurm.time_limit "
                                            f"{time_limit} ({limit_s} s): the save would be asked for at the "
                                            f"start; set it lower, or 0 for no save before the time limit")
    return SlurmSpec(
        nodes=nodes, devices=devices, ranks_with=ranks_with,
        python=c.string(s.get("python", defaults.python), "slurm.python"), workdir=workdir,
        partition=None if s.get("partition") is None else c.string(s["partition"], "slurm.partition", NAME,
                                                                   "a partition name"),
        time_limit=time_limit,
        account=None if s.get("account") is None else c.string(s["account"], "slurm.account", NAME,
                                                               "an account name"),
        sbatch_options=option_list(c, s.get("sbatch_options"), "slurm.sbatch_options"),
        srun_options=option_list(c, s.get("srun_options"), "slurm.srun_options"),
        hccn_conf=hccn_conf, save_before_s=save_before_s)


def option_list(c: Checker, raw: Any, where: str) -> Tuple[str, ...]:
    """Extra command-line options as a list of separate arguments, never one shell string."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise c.fail(where, f"expected a list of options, one argument per item (e.g. [--exclusive, "
                            f"--qos=high]), got {kind(raw)}")
    items = tuple(c.string(a, sub(where, i)) for i, a in enumerate(raw))
    if items and not items[0].startswith("-"):
        raise c.fail(sub(where, 0), f"{items[0]!r} is not an option (options start with -)")
    return items


def slurm_placeholder_hosts(slurm: SlurmSpec) -> Tuple[HostSpec, ...]:
    """Stand-ins `node1..nodeN` for the allocation's nodes, until it is known (dry run outside one)."""
    return tuple(slurm_host(slurm, f"node{i + 1}", f"node{i + 1}", ()) for i in range(slurm.nodes))


def slurm_host(slurm: SlurmSpec, node: str, address: str, srun: Tuple[str, ...]) -> HostSpec:
    """The host of one allocated node."""
    return HostSpec(name=node, address=address, ssh=None, devices=slurm.devices, device_ips=None,
                    python=slurm.python, workdir=slurm.workdir.replace("{node}", node),
                    hccn_conf=slurm.hccn_conf, srun=srun)
