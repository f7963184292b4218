"""What the rest of the launcher may know about each backend, by name: validation rules of the cluster file.

A leaf module (no imports from the launcher), so the cluster-file parser can ask about a backend without
naming one; everything else a backend decides is a hook of `launcher.backends.base.Backend`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class BackendTraits:
    """Rules a cluster file of this backend must obey."""

    name: str
    #: Only for device ascend (HCCL rank tables are Ascend only).
    ascend_only: bool = False
    #: On ascend the ranks need an HCCL rank table (and so the device IPs).
    rank_table_on_ascend: bool = False
    #: A server is identified by its address: no two hosts (or spares) share one.
    server_per_address: bool = False
    #: One command line for every host: same python, workdir and devices, no per-host env.
    one_command_line: bool = False
    #: Slurm places the job: hosts are the nodes of an allocation (`slurm:` section).
    allocation: bool = False
    #: How ranks may form a cluster inside a Slurm allocation (`slurm.ranks_with`).
    runs_in_allocation: bool = False


TRAITS: Dict[str, BackendTraits] = {t.name: t for t in (
    BackendTraits("rank_table", ascend_only=True, rank_table_on_ascend=True, server_per_address=True,
                  runs_in_allocation=True),
    BackendTraits("msrun", rank_table_on_ascend=True, server_per_address=True),
    BackendTraits("mpirun", server_per_address=True, one_command_line=True),
    BackendTraits("dynamic", runs_in_allocation=True),
    BackendTraits("slurm", allocation=True),
)}
#: Every `backend:` value a cluster file may name.
BACKEND_NAMES: Tuple[str, ...] = tuple(TRAITS)
#: `slurm.ranks_with` values.
ALLOCATION_RANK_BACKENDS: Tuple[str, ...] = tuple(n for n, t in TRAITS.items() if t.runs_in_allocation)


def traits(name: str) -> BackendTraits:
    return TRAITS[name]


def uses_rank_table(backend: str, device: str) -> bool:
    """Whether a launch needs an HCCL rank table (and so the device IPs)."""
    return device == "ascend" and traits(backend).rank_table_on_ascend
