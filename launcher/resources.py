"""Locate the shipped templates and cluster configs, installed or in a source checkout."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def _resource_dir(package: str, checkout_name: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    # Editable installs do not map the top-level folders into the package: use the checkout.
    return _CHECKOUT_ROOT / checkout_name


def templates_dir() -> Path:
    """Folder with the Jinja templates (`*.j2`)."""
    return _resource_dir("launcher.templates", "templates")


def cluster_configs_dir() -> Path:
    """Folder with the shipped cluster files (`*.yaml`)."""
    return _resource_dir("launcher.cluster_configs", "cluster_configs")
