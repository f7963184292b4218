"""The contract between the launcher and what its ranks run (docs/workload-contract.md).

A workload says: the argv of a rank on a host (and the environment it adds), where its outputs,
metrics and checkpoints go on each host, whether attempts resume from checkpoints, how a resume
point is passed back, and how progress shows in its output. The launcher's other modules ask a
`Workload` and never name a model or its modules.
"""
from __future__ import annotations

import posixpath
import re
from typing import Dict, List, Optional, Tuple, Union

#: Progress lines every workload may print: `epoch: N step: M, loss is X` (the ModelZoo format).
PROGRESS_MARK = "loss is"
_PROGRESS = re.compile(
    r"epoch:\s*(\d+)\s+step:\s*(\d+),\s*loss is\s*([-+]?(?:[0-9.]+(?:[eE][-+]?\d+)?|nan|inf))")
#: MindSpore's dynamic-cluster scheduler, run by the dynamic, msrun and mpirun backends.
SCHEDULER_MODULE = "refinenet.scheduler"
MANIFEST_MODULE = "refinenet.manifest"


def node_path(path: str, host) -> str:
    """`path` with `{node}` replaced by the host's name (node-local directories on shared storage)."""
    return path.replace("{node}", host.name)


def parse_progress(line: str) -> Optional[Dict[str, Union[int, float]]]:
    """`{"epoch", "epoch_step", "loss"}` from a progress line, else None."""
    m = _PROGRESS.search(line)
    if not m:
        return None
    return {"epoch": int(m.group(1)), "epoch_step": int(m.group(2)), "loss": float(m.group(3))}


class Workload:
    """What every rank of a job runs. Subclasses: `RefineNetWorkload`, `CommandWorkload`."""

    #: Name of what runs, for job ids, records and messages (`r1`, `command`, ...).
    stage: str = ""
    #: Modules every host's python must find before anything starts.
    required_modules: Tuple[str, ...] = ("mindspore",)

    @property
    def resumable(self) -> bool:
        """Whether later attempts look for checkpoints to resume from."""
        return False

    @property
    def single_process(self) -> bool:
        """One plain process on rank 0's host and device, no cluster (evaluation, export)."""
        return False

    def check_spec(self, spec) -> None:
        """Refuse (`ClusterFileError` naming the field) what the cluster file asks of it wrongly."""

    def warm_modules(self, role: str) -> Tuple[str, ...]:
        """What a warm interpreter of a process of `role` (rank, scheduler) imports ahead of a restart
        (launcher/hostside/warm.py); () when its processes always start cold."""
        return ()

    def argv(self, spec, host, resume: Optional[str] = None) -> List[str]:
        """The command of every rank on `host`; `resume` is a checkpoint path there (or None)."""
        raise NotImplementedError

    def env(self, spec, host, resume: Optional[str] = None) -> Dict[str, str]:
        """Variables the rank environment gets besides the backend's (none by default)."""
        return {}

    def data_files(self, spec, host) -> List[str]:
        """Input files every rank on `host` reads (the host check finds a missing one first)."""
        return []

    def input_check_argv(self, spec, host, world_size: int) -> Optional[List[str]]:
        """A command that checks this workload's inputs on `host` for `world_size` ranks without running
        it (exit 0: they fit; else its last line says why), or None. Run on one host at preflight."""
        return None

    def output_dir(self, spec, host) -> str:
        """Where this workload's outputs go on `host`: `<workdir>/<job.output_dir>/<stage>` (`{node}` in
        job.output_dir is the host's name)."""
        output = node_path(spec.job.output_dir, host)
        return posixpath.normpath(posixpath.join(host.workdir, output, self.stage))

    def checkpoint_dir(self, spec, host) -> Optional[str]:
        """Where resume points (checkpoints with manifests) are found on `host`."""
        return posixpath.join(self.output_dir(spec, host), "ckpt") if self.resumable else None

    def metrics_file(self, spec, host, rank: int) -> Optional[str]:
        """A file rank `rank` appends to as it makes progress (the hang check watches it)."""
        return posixpath.join(self.output_dir(spec, host), "metrics", f"rank_{rank}.jsonl")

    def scan_argv(self, host, directory: str) -> List[str]:
        """The command that lists the complete checkpoints of `directory` on `host` (JSON): manifests and
        sizes only; the digest recorded at write time is checked for the chosen one (`verify_argv`)."""
        return [host.python, "-m", MANIFEST_MODULE, "scan", directory]

    def verify_argv(self, host, checkpoint: str) -> List[str]:
        """The command that checks one checkpoint's bytes against its manifest's sha256 (exit 0: whole)."""
        return [host.python, "-m", MANIFEST_MODULE, "verify", checkpoint]

    def scheduler_argv(self, host) -> List[str]:
        return [host.python, "-m", SCHEDULER_MODULE]

    @staticmethod
    def progress(line: str) -> Optional[Dict[str, Union[int, float]]]:
        return parse_progress(line)

    def describe(self) -> str:
        return self.stage
