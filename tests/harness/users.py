"""Another user of this machine, for tests where several people share hosts: an unprivileged login made
with useradd when missing (the tests run as root), its commands run through `setpriv`, and a Python
that user can run with the repository and its dependencies.

The repository's interpreter may live where other users cannot go (a pyenv under /root): then the
system's Python of the same version runs the repository with this environment's site-packages on
PYTHONPATH (same minor version, so their compiled modules load).
"""
from __future__ import annotations

import functools
import os
import pwd
import shlex
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from tests.harness.environment import REPO


class NotRoot(RuntimeError):
    """Creating and switching to another user needs root."""


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def argv(self, argv: Sequence[str]) -> List[str]:
        """`argv` run as this user (real and effective ids, its groups)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", *map(str, argv)]

    def own(self, *paths: Path) -> None:
        """Give `paths` (and everything under folders among them) to this user."""
        for path in paths:
            for item in [Path(path), *(Path(path).rglob("*") if Path(path).is_dir() else ())]:
                os.chown(item, self.uid, self.gid, follow_symlinks=False)


def login_user(name: str) -> User:
    """The unprivileged user `name` with a login shell (sshd runs its commands through it) and a HOME,
    created with useradd when missing."""
    if os.geteuid() != 0:
        raise NotRoot(f"creating user {name} and running commands as them needs root")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/bash", name], check=True)
        entry = pwd.getpwnam(name)
    if not entry.pw_shell.endswith("sh"):
        subprocess.run(["usermod", "--shell", "/bin/bash", name], check=True)
    if _locked(name):  # sshd without PAM refuses a locked account ("!"), keys or not; "*": no password
        subprocess.run(["usermod", "--password", "*", name], check=True)
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=0o755, parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return User(name, entry.pw_uid, entry.pw_gid, home)


def _locked(name: str) -> bool:
    with open("/etc/shadow", encoding="utf-8") as f:
        for line in f:
            fields = line.split(":")
            if fields[0] == name:
                return fields[1].startswith("!")
    return False


@functools.cache
def python_for(user: User) -> Tuple[str, Tuple[str, ...]]:
    """(interpreter, folders to put on PYTHONPATH) that run the repository's code as `user`."""
    if _runs_as(user, sys.executable):
        return sys.executable, ()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for folder in ("/usr/bin", "/usr/local/bin"):
        candidate = os.path.join(folder, version)
        if os.access(candidate, os.X_OK) and _runs_as(user, candidate):
            paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
            return candidate, tuple(paths)
    raise RuntimeError(f"no {version} that user {user.name} may run: {sys.executable} is out of their "
                       f"reach and there is no system {version}")


def _runs_as(user: User, python: str) -> bool:
    """Whether `user` can run `python` the way wrappers and sshd sessions do: exec'd by a shell."""
    try:
        return subprocess.run(user.argv(["sh", "-c", 'exec "$0" -c pass', python]), stdin=subprocess.DEVNULL,
                              capture_output=True, cwd="/", timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def python_wrapper(folder: Path, user: User) -> str:
    """`folder/python` (readable by everyone): the interpreter of `python_for(user)` with its PYTHONPATH,
    for a host's `python` or a launcher run as `user`."""
    python, paths = python_for(user)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "python"
    lines = ["#!/bin/sh"]
    if paths:
        extra = shlex.quote(os.pathsep.join(paths))
        lines.append(f'PYTHONPATH={extra}"${{PYTHONPATH:+:$PYTHONPATH}}"; export PYTHONPATH')
    lines.append(f'exec {shlex.quote(python)} "$@"')
    wrapper.write_text("\n".join(lines) + "\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def user_env(user: User, base: Dict[str, str]) -> Dict[str, str]:
    """`base` for a process of `user`: its HOME, no bytecode written into the repository."""
    return dict(base, HOME=str(user.home), USER=user.name, LOGNAME=user.name, PYTHONDONTWRITEBYTECODE="1",
                PYTHONPATH=os.pathsep.join(dict.fromkeys([str(REPO), *base.get("PYTHONPATH", "").split(
                    os.pathsep)])).strip(os.pathsep))

