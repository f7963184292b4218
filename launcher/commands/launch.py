"""`refinenet-launch --cluster FILE --stage STAGE [--dry-run] [...]`: validate, place, render, launch.

Everything that can be wrong with the input is found before anything is written or started:
cluster file, overrides, device IPs, placement and rendering all run first. `--dry-run` then writes
the rendered plan into the job directory and prints it; a real launch hands the same plan factory
to `launcher.runner.run_job`.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import shlex
import socket
import sys
from pathlib import Path
from typing import IO, Callable, Dict, List, Mapping, Optional, Sequence

from launcher.errors import BadInput, HostError
from launcher.exclusion import HostPool, NoSpareLeft
from launcher.hccn import discover_device_ips, needs_discovery
from launcher.jobs import RUNS_DIR_ENV, new_job_id, resolve_runs_dir
from launcher.placement import RankSlot, place
from launcher.plan import PLAN_FILE, LaunchPlan, write_plan
from launcher.render import JOB_ID, render_plan
from launcher.resources import cluster_configs_dir
from launcher.spec import (
    STAGES,
    ClusterSpec,
    HostSpec,
    load_cluster,
    parse_override,
    with_master_port,
    with_max_restarts,
    with_stage_options,
)
from launcher.workload import Workload, workload_for

__all__ = ["build_parser", "run", "prepare", "make_plan_factory", "describe", "folder_reader", "host_reader",
           "resolve_cluster_path", "free_port"]


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Launch one stage of RefineNet training, evaluation or export on a cluster.",
        epilog="Any program instead of a RefineNet stage: refinenet-launch --cluster FILE [options] -- "
               "COMMAND [ARGS...] (docs/workload-contract.md). Subcommands: logs, status, stop, list, "
               "health, report, top (refinenet-launch SUBCOMMAND --help).")
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
    parser.add_argument("--max-restarts", type=_non_negative, metavar="N",
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
    parser.add_argument("--hccn-conf-dir", metavar="DIR",
                        help="read device IPs from DIR/<host name>.conf (or DIR/hccn.conf) on this machine "
                             "instead of each host's hccn_conf")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="run this command as every rank instead of a RefineNet stage")
    return parser


#: What `--stage all` runs.
ALL_STAGES = ("r1", "r2", "eval")


def _stages(text: str) -> str:
    """`r1`, `r1,r2,eval` or `all` -> the comma-separated stages; each must be a stage, none twice."""
    names = list(ALL_STAGES) if text.strip() == "all" else [p.strip() for p in text.split(",")]
    for name in names:
        if name not in STAGES:
            raise argparse.ArgumentTypeError(f"{name!r} is not a stage ({', '.join(STAGES)}, or all)")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a stage twice")
    return ",".join(names)


def stages_of(args: argparse.Namespace) -> List[str]:
    """The stages a launch runs in order (one for a single stage or a command)."""
    return args.stage.split(",") if getattr(args, "stage", None) else []


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def resolve_cluster_path(value: str) -> Path:
    """A path, or the name of a shipped cluster file (`local-cpu`, `8xascend.yaml`)."""
    path = Path(value)
    if path.exists() or "/" in value:
        return path
    for candidate in (value, f"{value}.yaml"):
        shipped = cluster_configs_dir() / candidate
        if shipped.is_file():
            return shipped
    return path


# ---------------------------------------------------------------------------------------------
# Reading hccn.conf


ReadFile = Callable[[HostSpec, str], str]


def folder_reader(folder: str) -> ReadFile:
    """Read `<folder>/<host name>.conf`, else `<folder>/hccn.conf`, on this machine."""
    def read(host: HostSpec, path: str) -> str:
        root = Path(folder)
        for candidate in (root / f"{host.name}.conf", root / "hccn.conf"):
            if candidate.is_file():
                return candidate.read_text(encoding="utf-8")
        raise FileNotFoundError(2, f"no {host.name}.conf or hccn.conf in {folder}", str(root))
    return read


def host_reader() -> ReadFile:
    """Read the file on its host: through the transport factory when there is one, else locally for local
    hosts (an SSH host then needs `device_ips` or --hccn-conf-dir)."""
    open_transport = _optional("launcher.transport.factory", "open_transport")

    def read(host: HostSpec, path: str) -> str:
        if open_transport is not None:
            try:
                transport = open_transport(host)
                try:
                    return transport.read_file(path).decode("utf-8")
                finally:
                    transport.close()
            except HostError as exc:
                raise BadInput(f"host {host.name}: cannot read {path}: {exc.cause}") from None
        if host.is_local:
            return Path(path).read_text(encoding="utf-8")
        raise BadInput(f"host {host.name}: cannot read {path} over SSH here; give hosts[].device_ips "
                       f"or --hccn-conf-dir")
    return read


def _optional(module_name: str, attr: str):
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
    return getattr(module, attr)


# ---------------------------------------------------------------------------------------------
# Preparing a launch


def free_port() -> int:
    """A TCP port free on this machine now (for `master.port: auto`)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def workload_of(args: argparse.Namespace) -> Workload:
    """The workload the arguments ask for: `--stage STAGE` or `-- COMMAND ...`, exactly one."""
    command = list(getattr(args, "command", None) or [])
    if command and command[0] != "--":
        raise BadInput(f"unexpected argument {command[0]!r}: a command to run goes after --")
    command = command[1:]
    if command and args.stage:
        raise BadInput(f"give --stage or a command after --, not both (--stage {args.stage}, "
                       f"command {' '.join(command)!r})")
    if not command and not args.stage:
        raise BadInput("nothing to run: give --stage r1|r2|eval|export, or a command after --")
    if command and args.set:
        raise BadInput("--set gives options of a RefineNet stage; with a command, put options on its "
                       "command line")
    if not command and "," in args.stage and args.set:
        raise BadInput("--set applies to one stage: with several, use job.stage_overrides in the cluster "
                       "file")
    return workload_for(args.stage.split(",")[0] if args.stage else "", command)


def prepare(args: argparse.Namespace, read_file: Optional[ReadFile] = None):
    """(spec, slots, job_id, job_dir, plan_factory) from the parsed arguments; raises on any bad input."""
    workload = workload_of(args)
    stage = workload.stage
    cluster_path = resolve_cluster_path(args.cluster)
    overrides: Dict[str, object] = dict(parse_override(o) for o in args.override)
    spec = load_cluster(cluster_path, overrides or None)
    if args.max_restarts is not None:
        spec = with_max_restarts(spec, args.max_restarts)
    if args.set:
        spec = with_stage_options(spec, stage, args.set)
    if spec.slurm is not None:
        spec = _in_allocation(spec, args)
    pool = _host_pool(spec, getattr(args, "exclude_host", None) or [])
    spec = pool.spec if pool is not None else spec
    device_ips = {}
    everyone = dataclasses.replace(spec, hosts=spec.hosts + spec.spares)
    if _stand_in_nodes(spec):
        # a dry run outside an allocation: the nodes and their device IPs are not known yet
        device_ips = {h.name: {d: f"<{h.name} device {d} ip>" for d in h.devices} for h in spec.hosts}
    elif needs_discovery(everyone):
        reader = read_file or (folder_reader(args.hccn_conf_dir) if args.hccn_conf_dir else host_reader())
        device_ips = discover_device_ips(everyone, reader)
    slots = place(spec, device_ips)
    _check_ranks(args.ranks, len(slots))

    job_id = args.job_id
    if job_id is None and args.job_dir and JOB_ID.fullmatch(Path(args.job_dir).name):
        job_id = Path(args.job_dir).name
    if job_id is None:
        job_id = new_job_id(spec.name, "-".join(stages_of(args)) if "," in (args.stage or "") else stage)
    if not JOB_ID.fullmatch(job_id):
        raise BadInput(f"--job-id: {job_id!r} is not a job id (letters, digits, '.', '_', '-')")
    job_dir = Path(args.job_dir) if args.job_dir else resolve_runs_dir(args.runs_dir) / job_id
    factory = make_plan_factory(spec, slots, stage, str(job_dir.absolute()), job_id, workload)
    factory.device_ips, factory.pool = device_ips, pool
    return spec, slots, job_id, job_dir, factory


def _in_allocation(spec: ClusterSpec, args: argparse.Namespace) -> ClusterSpec:
    """A `backend: slurm` spec bound to the allocation this runs in; outside one only a dry run goes on,
    with placeholder nodes."""
    from launcher.slurm.allocation import bind, current_allocation

    allocation = None if getattr(args, "queued", False) else current_allocation()
    if allocation is not None:
        args.allocation = allocation
        return bind(spec, allocation)
    if args.dry_run:
        return spec
    raise BadInput(f"{spec.source}: backend slurm runs inside a Slurm allocation and this is not one "
                   f"(SLURM_JOB_ID is not set): run `salloc -N {spec.slurm.nodes} refinenet-launch ...`, or "
                   f"`refinenet-launch submit --cluster ...` to queue it with sbatch")


def _stand_in_nodes(spec: ClusterSpec) -> bool:
    """A `backend: slurm` spec not bound to an allocation: its hosts stand for nodes not known yet."""
    return spec.slurm is not None and not spec.hosts[0].srun


def _host_pool(spec: ClusterSpec, exclude: Sequence[str]) -> Optional[HostPool]:
    """The job's host pool when it has spares (or hosts to exclude): `--exclude-host` applied."""
    if not spec.spares and not exclude:
        return None
    pool = HostPool(spec, list(spec.spares))
    names = {h.name for h in spec.hosts}
    for name in exclude:
        if name not in names:
            known = ", ".join(sorted(names))
            raise BadInput(f"--exclude-host: {name!r} is not a host of {spec.name} (hosts: {known})")
        try:
            pool.exclude(name, "excluded by --exclude-host")
        except NoSpareLeft as exc:
            raise BadInput(f"--exclude-host: {exc}") from None
    return pool


class PlanFactory:
    """`factory(attempt=0, resume=None) -> LaunchPlan`. With `master.port: auto` every attempt gets a
    port `pick_port()` found free (on this machine unless the runner points it at the master host)."""

    def __init__(self, spec: ClusterSpec, slots: Sequence[RankSlot], stage: str, job_dir: str, job_id: str,
                 workload: Optional[Workload] = None):
        self.spec, self.slots, self.stage, self.job_dir, self.job_id = spec, slots, stage, job_dir, job_id
        self.workload = workload or workload_for(stage)
        self.pick_port: Callable[[], int] = free_port
        self.device_ips: Mapping[str, Mapping[int, str]] = {}
        self.pool: Optional[HostPool] = None

    def for_stage(self, stage: str) -> PlanFactory:
        """The factory of another RefineNet stage of the same job (same hosts, placement, job)."""
        other = copy.copy(self)
        other.stage, other.workload = stage, workload_for(stage)
        return other

    def with_spec(self, spec: ClusterSpec) -> PlanFactory:
        """The same factory for `spec` (hosts changed: an excluded host's ranks on a spare)."""
        other = copy.copy(self)
        other.spec, other.slots = spec, place(spec, self.device_ips)
        return other

    def __call__(self, attempt: int = 0, resume: Optional[str] = None) -> LaunchPlan:
        spec = self.spec
        if spec.master.port == "auto":
            spec = with_master_port(spec, self.pick_port())
        return render_plan(spec, self.slots, self.stage, self.job_dir, job_id=self.job_id, attempt=attempt,
                           resume=resume, workload=self.workload)


def make_plan_factory(spec: ClusterSpec, slots: Sequence[RankSlot], stage: str, job_dir: str,
                      job_id: str, workload: Optional[Workload] = None) -> PlanFactory:
    return PlanFactory(spec, slots, stage, job_dir, job_id, workload)


def _check_ranks(text: Optional[str], world: int) -> None:
    if not text:
        return
    parse_ranks = _optional("launcher.logs.format", "parse_ranks")
    ranks = parse_ranks(text) if parse_ranks else {int(p) for p in text.split(",") if p.strip().isdigit()}
    outside = sorted(r for r in ranks if r >= world)
    if outside:
        raise BadInput(f"--ranks: {', '.join(map(str, outside))} not in this job (ranks 0..{world - 1})")


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
            w(f"    host agent started as a Slurm step: {_agent_step(hosts[host], spec)}\n")
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


def _agent_step(host: HostSpec, spec: ClusterSpec) -> str:
    """The srun line that starts `host`'s agent (the agent's own source goes on its stdin)."""
    from launcher.slurm.allocation import node_srun
    from launcher.slurm.transport import AGENT_STEP

    srun = host.srun or node_srun("$SLURM_JOB_ID", host.name, spec.slurm.srun_options if spec.slurm else ())
    return shlex.join([*srun, *AGENT_STEP, host.python]) + " -S -c <host agent>"


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
    spec, slots, job_id, job_dir, factory = prepare(args)
    if args.dry_run:
        if (job_dir / "job.json").exists():
            raise BadInput(f"--job-dir: {job_dir} holds a launched job (job.json); choose another directory")
        plan = factory(0, None)
        written = write_plan(plan, job_dir)
        describe(plan, spec, written, out)
        for stage in stages_of(args)[1:]:
            later = factory.for_stage(stage)(0, None)
            out.write(f"\nthen stage {stage} (same job, after {plan.stage} succeeded):\n")
            for p in later.processes:
                out.write(f"  [{p.host}] {p.name}: {p.command}\n")
        if _stand_in_nodes(spec):
            out.write(f"\noutside a Slurm allocation: {spec.hosts[0].name}..{spec.hosts[-1].name} stand for "
                      f"its nodes (their addresses and device IPs are read inside it: salloc, or submit)\n")
        out.write(f"\ndry run: nothing started; plan in {job_dir / PLAN_FILE}\n")
        return 0
    run_job = _optional("launcher.runner", "run_job")
    if run_job is None:
        raise BadInput("launching needs launcher.runner, which this installation does not have; "
                       "use --dry-run to render the plan")
    args.job_id, args.job_dir = job_id, str(job_dir)
    args.cluster_path = str(resolve_cluster_path(args.cluster))
    return int(run_job(spec, factory, args) or 0)
