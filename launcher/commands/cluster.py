"""`refinenet-launch cluster --cluster FILE [--json] [--watch [SECONDS]]`: every host and spare at a glance.

One login per host per answer (the host program's `glance` mode), all hosts at once (`launch.fanout`):
reachable or why not, cordon, cooldown after exclusions, load, memory, free disk, each device's health
and holder (cpu hosts with `slots`: slots used and their holders), and each host's queue. `--watch`
reads again every SECONDS until Ctrl-C, over the same connections: on a terminal it redraws the screen,
otherwise it prints one block (or one JSON line) per reading.

Exit code 0 every host and spare reachable and healthy, 1 one is not, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import IO, Dict, Optional

from launcher.commands.args import count, seconds
from launcher.errors import BadInput

CLEAR = "\x1b[H\x1b[2J"
DEFAULT_WATCH_S = 5.0


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Every host and spare of a cluster file at a glance: who holds which device "
                               "or slot, who waits, what is cordoned or cooling down, load, memory, disk, "
                               "device health. Nothing is changed.")
    parser.add_argument("--cluster", required=True, metavar="FILE",
                        help="cluster file (YAML) or the name of a shipped one, e.g. ssh-cpu")
    parser.add_argument("--json", action="store_true", help="one JSON object (with --watch: one per line)")
    parser.add_argument("--watch", nargs="?", const=DEFAULT_WATCH_S, type=seconds, metavar="SECONDS",
                        help=f"read again every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C")
    parser.add_argument("--iterations", type=count, metavar="N",
                        help="with --watch: stop after N readings")
    return parser


def run(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    from launcher.sharing.glance import read_cluster, shared_cluster
    from launcher.sharing.render import render
    from launcher.transport.factory import open_transport

    out = out or sys.stdout
    if args.iterations is not None and args.watch is None:
        raise BadInput("--iterations: only with --watch")
    spec = shared_cluster(args.cluster)
    transports: Dict[str, object] = {h.name: open_transport(h) for h in (*spec.hosts, *spec.spares)}
    redraw = args.watch is not None and not args.json and out.isatty()
    code, done = 0, 0
    try:
        while True:
            view = read_cluster(spec, transports)
            code, done = view.exit_code, done + 1
            if args.json:
                out.write(json.dumps(view.to_dict(), indent=None if args.watch else 1, default=str) + "\n")
            else:
                out.write((CLEAR if redraw else "") + render(view) + "\n")
            out.flush()
            if args.watch is None or (args.iterations is not None and done >= args.iterations):
                return code
            if not redraw and not args.json:
                out.write("\n")
            time.sleep(args.watch)
    except KeyboardInterrupt:
        if args.watch is None:
            raise
        return code
    finally:
        for transport in transports.values():
            transport.close()

