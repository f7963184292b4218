"""pdsh starting the stand-in ranks on simulated SSH hosts: the yardstick of the launch benchmarks.

`run_pdsh` runs `pdsh -R ssh -f K -w host-001,...` through the same sshd (and so the same login
homes) as the launcher, each host starting `ranks` stand-in ranks (tests/harness/standin.py, a step
line every `step_s` s) in its working directory, and measures from pdsh's start to every rank's first
step line on its output; then it ends them all (their REFINENET_JOB_ID tag).
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from tests.harness import standin
from tests.harness.hosts import SshServer, ssh_config
from tests.harness.procs import gone_within, kill_tagged


class PdshMissing(RuntimeError):
    """pdsh is not installed."""


def run_pdsh(servers: Sequence[SshServer], ranks: int, python: str, step_s: float, config_dir: Path,
             tag: str, env: Mapping[str, str], timeout: float) -> float:
    """Seconds from pdsh's start to every rank's first step line; `RuntimeError` with pdsh's stderr when
    not every rank came up within `timeout` s. The hosts are `host-NNN` servers of
    `tests.harness.hosts.start_servers` (rank numbers follow the host number)."""
    pdsh = shutil.which("pdsh")
    if not pdsh:
        raise PdshMissing("pdsh is not installed (apt-get install pdsh, or `make system`)")
    env_vars = {"REFINENET_JOB_ID": tag, "PYTHONUNBUFFERED": "1", **standin.steps_env(step_s)}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_vars.items())
    roots = {str(Path(s.workdir).parent.parent) for s in servers}
    if len(roots) != 1:
        raise ValueError("the servers must share one root folder")
    hosts_root = shlex.quote(roots.pop())
    remote = (f'i=${{REFINENET_SIMULATED_HOST#host-}}; base=$(( (10#$i - 1) * {ranks} )); '
              f'cd {hosts_root}/$REFINENET_SIMULATED_HOST/work && export {exports} && '
              f'for l in $(seq 0 {ranks - 1}); do MS_NODE_ID=$((base + l)) {shlex.quote(python)} '
              f'-m refinenet.train --output-dir out/pdsh & done; wait')
    config = ssh_config(Path(config_dir) / f"ssh_config_{len(servers)}", servers)
    run_env = dict(env, PDSH_RCMD_TYPE="ssh", PDSH_SSH_ARGS=f"-F {config} -x -a -l%u %h")
    first: Dict[str, int] = {s.name: 0 for s in servers}
    done = threading.Event()
    up_at: List[float] = []
    errors: List[str] = []
    started = time.monotonic()
    proc = subprocess.Popen([pdsh, "-R", "ssh", "-f", str(max(len(servers), 1)), "-w",
                             ",".join(s.name for s in servers), remote], env=run_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)

    def read_out():
        for raw in proc.stdout:
            host, _, text = raw.decode(errors="replace").partition(": ")
            # Ranks of one host share pdsh's stream, and an unbuffered print is two writes (text, then
            # newline): two ranks' lines can run together on one line, so count occurrences.
            if host in first and "epoch: 1 step: 1," in text:
                first[host] += text.count("epoch: 1 step: 1,")
                if not done.is_set() and all(n >= ranks for n in first.values()):
                    up_at.append(time.monotonic() - started)
                    done.set()

    def read_err():
        for raw in proc.stderr:
            if len(errors) < 20:
                errors.append(raw.decode(errors="replace").rstrip())

    readers = [threading.Thread(target=f, daemon=True) for f in (read_out, read_err)]
    for t in readers:
        t.start()
    try:
        if not done.wait(timeout):
            raise RuntimeError(f"pdsh: not every rank up ({sum(first.values())} of {len(servers) * ranks}); "
                               "stderr:\n  " + "\n  ".join(errors))
        return up_at[0]
    finally:
        stop_pdsh(proc, tag)


def stop_pdsh(proc: Optional[subprocess.Popen], tag: str) -> None:
    """End pdsh and every rank it started (by their tag)."""
    kill_tagged(tag)
    if proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    gone_within(tag, 5)
