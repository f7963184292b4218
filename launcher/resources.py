"""Locate the shipped templates and cluster configs, installed or in a source checkout."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def _resource_dir(package: str, checkout_name: str) -> Path:
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        # Editable installs do not map the top-level folders into the package: use the checkout.
        return _CHECKOUT_ROOT / checkout_name


def templates_dir() -> Path:
    """Folder with the Jinja templates (`*.j2`)."""
    return _resource_dir("launcher.templates", "templates")


def cluster_configs_dir() -> Path:
    """Folder with the shipped cluster files (`*.yaml`)."""
    return _resource_dir("launcher.cluster_configs", "cluster_configs")
