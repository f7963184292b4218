"""`refinenet-launch --cluster FILE --stage STAGE [--dry-run] [...]`: the command line of a launch.

It only translates: the arguments become a `LaunchRequest`, `launcher.planning.prepare` checks
everything that can be wrong with the input before anything is written or started, and then either
`--dry-run` writes the rendered plan into the job directory and prints it, or `launcher.runner` runs
the job.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Optional, Sequence

from launcher.commands import SUBCOMMANDS
from launcher.commands.args import non_negative, wait_seconds
from launcher.errors import BadInput
from launcher.jobs import RUNS_DIR_ENV
from launcher.plan import PLAN_FILE, LaunchPlan, write_plan
from launcher.planning.prepare import PreparedLaunch, prepare
from launcher.planning.request import LaunchRequest
from launcher.slurm.allocation import agent_step_line
from launcher.spec.model import ClusterSpec, HostSpec
from launcher.workload.refinenet import ALL_STAGES, STAGES, parse_stages

__all__ = ["build_parser", "run", "dry_run", "describe"]


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Launch RefineNet stages, or any program, on a cluster.",
        epilog="Any program instead of a RefineNet stage: refinenet-launch --cluster FILE [options] -- "
               "COMMAND [ARGS...] (docs/workload-contract.md). Subcommands: "
               f"{', '.join(SUBCOMMANDS)} (refinenet-launch SUBCOMMAND --help).")
    parser.add_argument("--cluster", required=True, metavar="FILE",
                        help="cluster file (YAML, see docs/cluster-config.md) or the name of a shipped one, "
                             "e.g. local-cpu")
    parser.add_argument("--stage", type=_stages, metavar="STAGE[,STAGE...]",
                        help=f"the RefineNet stage(s) to run, in order, as one job: {', '.join(STAGES)}, "
                             f"e.g. r1,r2,eval, or all (= {','.join(ALL_STAGES)}); or a command after --")
    parser.add_argument("--dry-run", action="store_true",
                        help="render everything into the job directory and print the plan; start nothing")
    parser.add_argument("--job-dir", metavar="DIR", help="job directory (default: RUNS_DIR/JOB_ID)")
    parser.add_argument("--job-id", help="job id (default: <cluster>-<stage>-<time>-<hex>)")
    parser.add_argument("--runs-dir", metavar="DIR",
                        help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    parser.add_argument("--max-restarts", type=non_negative, metavar="N",
                        help="restarts after a failure (default: restart.max_restarts of the cluster file)")
    parser.add_argument("--ranks", metavar="LIST",
                        help="show only these ranks in the log stream, e.g. 0,3 or 0-3")
    parser.add_argument("--show-framework-logs", action="store_true",
                        help="show MindSpore's own INFO/DEBUG lines in the live stream too (they are always "
                             "kept in the rank logs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="workload option for this stage, e.g. --set epochs=3 (repeatable; "
                             "null drops an option, true makes a flag)")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a cluster file field before validation, e.g. master.port=9000 or "
                             "'hosts[0].device_ips=[10.0.0.1, 10.0.0.2]' (repeatable)")
    parser.add_argument("--exclude-host", action="append", default=[], metavar="NAME",
                        help="a host known to be bad: its ranks go to a spare of the cluster file from the "
                             "start (repeatable)")
    parser.add_argument("--wait", nargs="?", const="", type=wait_seconds, metavar="SECONDS",
                        help="when the devices or slots are held by other jobs, queue for them (first come, "
                             "first served) instead of exiting 2; at most SECONDS when given")
    parser.add_argument("--hccn-conf-dir", metavar="DIR",
                        help="read device IPs from DIR/<host name>.conf (or DIR/hccn.conf) on this machine "
                             "instead of each host's hccn_conf")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="run this command as every rank instead of a RefineNet stage")
    return parser


def _stages(text: str) -> str:
    """`r1`, `r1,r2,eval` or `all` -> the comma-separated stages; each must be a stage, none twice."""
    try:
        return ",".join(parse_stages(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Output


def describe(plan: LaunchPlan, spec: ClusterSpec, written: Sequence[Path], out: IO[str]) -> None:
    """The readable plan: placement, files, and the commands of each host."""
    hosts = {h.name: h for h in spec.hosts}
    port_note = " (picked: master.port is auto)" if spec.master.port == "auto" else ""
    n_hosts = len({s.host for s in plan.slots})
    w = out.write
    w(f"job {plan.job_id}: stage {plan.stage} of cluster {plan.cluster} (backend {plan.backend}, device "
      f"{plan.device}), {plan.world_size} rank(s) on {n_hosts} host(s), attempt {plan.attempt}\n")
    if any(p.role != "rank" for p in plan.processes):
        w(f"master {plan.master_addr}:{plan.master_port} on host {plan.master_host}{port_note}\n")
    w("\n")
    w("placement:\n")
    rows = [("rank", "node", "local", "host", "address", "device", "device_ip")]
    rows += [(str(s.rank), str(s.node_rank), str(s.local_rank), s.host, hosts[s.host].address,
              str(s.device_id), s.device_ip or "-") for s in plan.slots]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        w("  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() + "\n")
    job_dir = Path(plan.job_dir)
    w(f"\nfiles written to {job_dir}:\n")
    for p in written:
        w(f"  {_relative(p, job_dir)}\n")
    if plan.files:
        w("\nfiles copied to hosts before start:\n")
        for f in plan.files:
            w(f"  {f.host}: {f.path}  ({f.local_name})\n")
    w("\ncommands (run as `bash -c COMMAND` in CWD with the env file's variables):\n")
    for host in plan.hosts:
        procs = plan.processes_on(host)
        if not procs:
            continue
        w(f"  [{host}] {hosts[host].address}{_reached_by(hosts[host])}, script scripts/{host}.sh\n")
        if hosts[host].srun is not None:
            w(f"    host agent started as a Slurm step: {agent_step_line(hosts[host], spec)}\n")
        for p in procs:
            env_file = f"env/rank_{p.ranks[0]}.env" if p.role == "rank" else \
                "env/scheduler.env" if p.role == "scheduler" else "env/rank_<r>.env"
            what = f"rank {p.ranks[0]}" if p.role == "rank" else \
                f"{p.role}, ranks {_ranks_text(p.ranks)}" if p.ranks else p.role
            w(f"    {p.name} ({what}) cwd {p.cwd}, env {env_file}, log {p.log_name}\n")
            for line in p.command.splitlines():
                w(f"      {line}\n")


def _reached_by(host: HostSpec) -> str:
    if host.srun is not None:
        return " (Slurm node)"
    return "" if host.is_local else " (ssh)"


def _ranks_text(ranks: Sequence[int]) -> str:
    if len(ranks) > 2 and list(ranks) == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    out = out or sys.stdout
    request = LaunchRequest.from_args(args)
    prepared = prepare(request)
    if request.dry_run:
        return dry_run(prepared, out)
    from launcher.runner import run_job

    return run_job(prepared)


def dry_run(prepared: PreparedLaunch, out: IO[str]) -> int:
    """Write the plan of the first attempt into the job directory and print it; start nothing."""
    job_dir, spec = prepared.job_dir, prepared.spec
    if (job_dir / "job.json").exists():
        raise BadInput(f"--job-dir: {job_dir} holds a launched job (job.json); choose another directory")
    plan = prepared.factory(0, None)
    written = write_plan(plan, job_dir)
    describe(plan, spec, written, out)
    for factory in prepared.factories[1:]:
        later = factory(0, None)
        out.write(f"\nthen stage {factory.stage} (same job, after {plan.stage} succeeded):\n")
        for p in later.processes:
            out.write(f"  [{p.host}] {p.name}: {p.command}\n")
    if prepared.stand_in_nodes:
        out.write(f"\noutside a Slurm allocation: {spec.hosts[0].name}..{spec.hosts[-1].name} stand for "
                  f"its nodes (their addresses and device IPs are read inside it: salloc, or submit)\n")
    out.write(f"\ndry run: nothing started; plan in {job_dir / PLAN_FILE}\n")
    return 0
