"""`refinenet-launch submit --cluster FILE --stage STAGE [...]`: queue a `backend: slurm` job with sbatch.

Everything is checked first, as for a launch (the cluster file, the options, the partition and its size):
a bad input exits 2 with nothing submitted. Then the job directory is created (PENDING, with the Slurm
job id once sbatch answers), a batch script that runs the launcher inside the allocation is rendered into
it, and sbatch queues it. `list`, `status`, `logs --follow` and `stop` work on the job from then on, also
while Slurm keeps it queued.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path
from typing import IO, List, Optional

from launcher.commands import launch
from launcher.errors import BadInput
from launcher.jobs import JobDir
from launcher.planning.prepare import prepare
from launcher.planning.request import LaunchRequest
from launcher.render.quoting import template
from launcher.runner import _spec_data
from launcher.slurm.allocation import slurm_run
from launcher.slurm.text import parse_key_values, parse_sbatch_job_id
from launcher.spec.model import ClusterSpec

SCRIPT = "sbatch.sh"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = launch.build_parser(prog)
    parser.description = ("Queue a launch on a Slurm cluster (backend slurm): sbatch runs the launcher "
                          "inside the allocation; prints the Slurm job id and the launcher's job id, and "
                          "returns.")
    return parser


def sbatch_argv(spec: ClusterSpec, job_id: str, job_dir: Path, script: Path) -> List[str]:
    """sbatch's command line: the allocation the cluster file asks for, output into the job directory."""
    slurm = spec.slurm
    argv = ["sbatch", "--parsable", f"--job-name=refinenet-{job_id}"[:120], f"--nodes={slurm.nodes}",
            "--ntasks-per-node=1", f"--output={job_dir / 'slurm-%j.out'}", f"--chdir={Path.cwd()}"]
    if slurm.partition:
        argv.append(f"--partition={slurm.partition}")
    if slurm.time_limit:
        argv.append(f"--time={slurm.time_limit}")
    if slurm.account:
        argv.append(f"--account={slurm.account}")
    if slurm.save_before_s and not any(o.startswith("--signal") for o in slurm.sbatch_options):
        # SIGUSR1 to the batch script (the launcher) before the time limit: the ranks save and stop
        argv.append(f"--signal=B:USR1@{slurm.save_before_s}")
    return argv + list(slurm.sbatch_options) + [str(script)]


def check_partition(spec: ClusterSpec) -> None:
    """The partition exists (or there is a default one) and has at least `slurm.nodes` nodes."""
    slurm = spec.slurm
    named = [slurm.partition] if slurm.partition else []
    shown = slurm_run(["scontrol", "show", "partition", "-o", *named])
    if shown.returncode != 0 or "PartitionName=" not in shown.stdout:
        what = f"partition {slurm.partition!r} does not exist" if slurm.partition else "no partition exists"
        raise BadInput(f"{spec.source}: slurm.partition: {what} on this Slurm cluster "
                       f"({(shown.stderr or shown.stdout).strip() or 'scontrol found none'}); "
                       f"nothing was submitted")
    partitions = [parse_key_values(line) for line in shown.stdout.splitlines() if "PartitionName=" in line]
    if slurm.partition is None:
        partitions = [p for p in partitions if p.get("Default") == "YES"] or partitions[:1]
    part = partitions[0]
    total = int(part.get("TotalNodes", "0") or 0)
    if total < slurm.nodes:
        raise BadInput(f"{spec.source}: slurm.nodes is {slurm.nodes} but partition "
                       f"{part.get('PartitionName')} has {total} node(s): Slurm would keep the job queued "
                       f"for ever; nothing was submitted")


def run(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    out = out or sys.stdout
    request = LaunchRequest.from_args(args)
    prepared = prepare(request.with_changes(queued=True))
    spec, job_id = prepared.spec, prepared.job_id
    if spec.slurm is None:
        raise BadInput(f"{spec.source}: submit queues jobs on Slurm: the cluster file needs backend slurm "
                       f"(it has backend {spec.backend})")
    job_dir = prepared.job_dir.absolute()
    script_path = job_dir / SCRIPT
    script = template(SCRIPT + ".j2").render(job_id=job_id, cwd=str(Path.cwd()),
                                             argv=request.to_argv(spec.slurm.python, job_dir))
    command = sbatch_argv(spec, job_id, job_dir, script_path)
    if request.dry_run:
        out.write(f"sbatch command: {shlex.join(command)}\n")
        out.write(f"batch script:\n{script}\ndry run: nothing submitted\n")
        return 0
    check_partition(spec)
    plan = prepared.factory(0, None)
    job = JobDir.create(job_dir.parent, cluster=spec.name, stage=prepared.label,
                        spec=_spec_data(spec, request), cluster_file=str(request.cluster_path),
                        plan=plan.to_dict(), job_id=job_id, owned=False, request=request.to_dict())
    script_path.write_text(script + "\n")
    script_path.chmod(0o755)
    job.set_slurm(submitted=True, partition=spec.slurm.partition or "", script=str(script_path),
                  sbatch=command)
    result = slurm_run(command)
    if result.returncode != 0:
        shutil.rmtree(job.path, ignore_errors=True)
        raise BadInput(f"sbatch refused the job ({result.stderr.strip() or f'exit {result.returncode}'}); "
                       f"nothing was submitted")
    slurm_id = str(parse_sbatch_job_id(result.stdout))
    job.set_slurm(job_id=slurm_id)
    out.write(f"submitted: Slurm job {slurm_id}, job {job_id} ({job.path})\n"
              f"  refinenet-launch status {job_id}   |   refinenet-launch logs {job_id} --follow\n")
    out.flush()
    return 0
