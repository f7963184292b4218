"""Shared fixtures: a free TCP port, the repo root, and the environment for child processes."""
import os
import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def child_env() -> dict:
    """Environment for child Python processes: the repo importable, short MindSpore timeouts."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("MS_TOPO_TIMEOUT", "60")
    env.setdefault("MS_NODE_TIMEOUT", "10")
    env["PYTHONUNBUFFERED"] = "1"
    # msrun and mpirun start `python` from PATH: make it this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
