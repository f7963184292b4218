"""`refinenet-launch health --cluster FILE [--json]`: the health of every host and device, nothing launched.

Exit code 0 healthy (or only degraded), 1 a device or host is unhealthy, 2 bad input or a host that
cannot be reached.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from typing import Dict

from launcher.health.collect import check_cluster
from launcher.health.verdicts import HealthThresholds
from launcher.transport.base import HostError


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Check the hosts and devices of a cluster file without launching anything.")
    parser.add_argument("--cluster", required=True, metavar="FILE",
                        help="cluster file (YAML) or the name of a shipped one, e.g. local-cpu")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--max-temp", type=float, metavar="C", help="a device hotter than this is unhealthy")
    parser.add_argument("--max-memory-fraction", type=float, metavar="F",
                        help="a device with more than this fraction of its memory in use is unhealthy")
    parser.add_argument("--warning-fails", action="store_true",
                        help="count a device in Warning state as unhealthy (default: degraded)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="seconds each probe may take (default 60)")
    return parser


def run(args: argparse.Namespace) -> int:
    from launcher.errors import BadInput
    from launcher.planning.request import resolve_cluster_path
    from launcher.spec.load import load_cluster
    from launcher.transport.factory import open_transport

    if args.max_memory_fraction is not None and not 0 < args.max_memory_fraction <= 1:
        raise BadInput(f"--max-memory-fraction: {args.max_memory_fraction} is not in (0, 1]")
    if args.timeout <= 0:
        raise BadInput(f"--timeout: {args.timeout} must be > 0")
    spec = load_cluster(resolve_cluster_path(args.cluster))
    if spec.slurm is not None:
        from launcher.slurm.allocation import bind, current_allocation

        allocation = current_allocation()
        if allocation is None:
            command = f"salloc -N {spec.slurm.nodes} refinenet-launch health --cluster {args.cluster}"
            raise BadInput(f"{spec.source}: backend slurm: the nodes are known inside an allocation only: "
                           f"run `{command}`")
        spec = bind(spec, allocation)
    thresholds = HealthThresholds(max_temp_c=args.max_temp, max_memory_fraction=args.max_memory_fraction,
                                  warning_is_failure=args.warning_fails)
    with ExitStack() as stack:
        transports: Dict[str, object] = {}
        unreachable: Dict[str, str] = {}
        for host in spec.hosts:
            try:
                transports[host.name] = stack.enter_context(open_transport(host))
            except HostError as exc:
                unreachable[host.name] = exc.cause
        health = check_cluster(spec, transports, thresholds, unreachable=unreachable, timeout=args.timeout)
    if args.json:
        print(json.dumps(health.to_dict(), indent=1, default=str))
    else:
        print(health.render())
    if health.exit_code == 2:
        down = [r.host for r in health.reports if r.unreachable]
        print(f"refinenet-launch: error: cannot reach {', '.join(down)}", file=sys.stderr)
    return health.exit_code
