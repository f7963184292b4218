"""Shared fixtures: a free TCP port, the repo root, and the environment for child processes."""
import sys
from pathlib import Path

import pytest

from tests.harness import environment
from tests.harness.environment import free_port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return environment.REPO


@pytest.fixture(scope="session")
def child_env() -> dict:
    """Environment for child Python processes: the repo importable, short MindSpore timeouts."""
    env = environment.child_env()
    env.setdefault("MS_TOPO_TIMEOUT", "60")
    env.setdefault("MS_NODE_TIMEOUT", "10")
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
