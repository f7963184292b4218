"""Every launch backend by name.

Rendering (launcher/render.py) decides *what* runs; a backend says how to read and stop it.
"""
from __future__ import annotations

from launcher.backends.base import Backend, Tail
from launcher.backends.dynamic import DynamicBackend
from launcher.backends.mpirun import MpirunBackend
from launcher.backends.msrun import MsrunBackend
from launcher.backends.rank_table import RankTableBackend

BACKENDS = {b.name: b for b in (DynamicBackend(), MsrunBackend(), MpirunBackend(), RankTableBackend())}


def backend_for(name: str) -> Backend:
    """The backend of a cluster spec's `backend` field."""
    return BACKENDS[name]


__all__ = ["Backend", "Tail", "BACKENDS", "backend_for"]
