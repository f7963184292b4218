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


def _machine_state() -> set:
    from launcher.spec.model import DEFAULT_STATE_DIR

    try:
        return {p.name for p in Path(DEFAULT_STATE_DIR).iterdir()}
    except OSError:
        return set()


@pytest.fixture(scope="session", autouse=True)
def machine_state_untouched():
    """No test leaves leases, cordons or excluded hosts in this machine's default state directory, where
    they would hold back the user's own jobs (tests give their hosts a state directory of their own)."""
    before = _machine_state()
    yield
    left = sorted(_machine_state() - before)
    assert not left, f"tests left records in the machine's host state: {left}"
