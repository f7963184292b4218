"""`refinenet-launch cordon|uncordon|drain --cluster FILE HOST`: take a host out for repair and put it back.

* `cordon HOST [--reason TEXT]`: new launches refuse the host (or give its ranks to a spare), for every
  user and launcher; jobs running there keep it.
* `uncordon HOST`: clears the cordon and the host's exclusion records (the bad-host memory), so
  launches place jobs there again at once.
* `drain HOST [--reason TEXT] [--timeout S]`: cordons it (unless cordoned), then waits on the host until
  no job holds a lease there, saying whom it waits for (once, then on each change). Exit 1 when
  `--timeout` passes first; the cordon stays either way.

HOST is a host or a spare of the file. One login on the host per command. Exit 2 (nothing changed)
for bad input: an unknown HOST, a host that cannot be reached, or a shared state that cannot be read
(the message names the host and the file).
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import IO, Any, Dict, Optional

from launcher.commands.args import seconds
from launcher.errors import BadInput, HostError

DESCRIPTIONS = {
    "cordon": "Take a host out of new placements, for every user, until uncordon; running jobs keep it.",
    "uncordon": "Put a host back into service: clears its cordon and its exclusion records.",
    "drain": "Cordon a host, then wait until no job holds a lease there.",
}


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of `prog`, whose last word is the command (cordon, uncordon or drain)."""
    name = prog.split()[-1]
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTIONS[name])
    parser.add_argument("--cluster", required=True, metavar="FILE",
                        help="cluster file (YAML) or the name of a shipped one, e.g. ssh-cpu")
    parser.add_argument("host", metavar="HOST", help="a host or spare of the cluster file")
    if name in ("cordon", "drain"):
        parser.add_argument("--reason", metavar="TEXT", help="why (shown to everyone who meets the cordon)")
    if name == "drain":
        parser.add_argument("--timeout", type=seconds, metavar="S",
                            help="give up waiting after S seconds (exit 1; the host stays cordoned)")
    parser.set_defaults(action=name)
    return parser


def run(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    from launcher.sharing.glance import pick_host, shared_cluster
    from launcher.transport.factory import open_transport

    out = out or sys.stdout
    reason = getattr(args, "reason", None)
    if reason is not None and not reason.strip():
        raise BadInput("--reason: empty; say why, or leave it out")
    spec = shared_cluster(args.cluster)
    host = pick_host(spec, args.host)
    transport = open_transport(host)
    try:
        if args.action == "drain":
            return _drain(spec, host, transport, reason, args.timeout, out)
        return _change(spec, host, transport, args.action, reason, out)
    finally:
        transport.close()


def _default_reason(action: str) -> str:
    return f"{action} from {socket.gethostname()}, no reason given"


def _glance(spec, host, transport, **change: Any) -> Dict[str, Any]:
    from launcher.sharing.glance import glance_host, glance_request

    try:
        answer = glance_host(transport, glance_request(spec, host, devices=False, **change))
    except HostError as exc:
        raise BadInput(f"{host.name} ({host.address}): {exc.cause}; nothing changed") from None
    error = answer.get("state_error")
    if error:
        raise BadInput(f"{host.name}: cannot use its shared state: {error.get('message')}")
    return answer


def _change(spec, host, transport, action: str, reason: Optional[str], out: IO[str]) -> int:
    from launcher.sharing.render import describe_cordon, describe_leases

    if action == "cordon":
        answer = _glance(spec, host, transport, cordon=reason or _default_reason("cordoned"))
    else:
        answer = _glance(spec, host, transport, uncordon=f"uncordoned from {socket.gethostname()}",
                         clear_exclusions=True)
    snapshot, changed = answer["snapshot"], answer.get("changed") or {}
    clock = float(snapshot.get("now") or time.time())
    was = changed.get("was") or {}
    if action == "cordon":
        out.write(f"{host.name} {describe_cordon(snapshot['cordon'], clock)}\n")
        if was.get("cordoned"):
            out.write(f"  (it was already {describe_cordon(was, clock)})\n")
        leases = snapshot.get("leases") or []
        if leases:
            out.write(f"  jobs running there keep it until they end: {describe_leases(leases, clock)}\n"
                      f"  (refinenet-launch drain --cluster {spec.source} {host.name} waits for them)\n")
        out.write(f"  new launches refuse it or give its ranks to a spare, until: refinenet-launch uncordon "
                  f"--cluster {spec.source} {host.name}\n")
        return 0
    before = f"it was {describe_cordon(was, clock)}" if was.get("cordoned") else "it was not cordoned"
    cleared = int(changed.get("cleared") or 0)
    out.write(f"{host.name} uncordoned ({before}); {cleared} exclusion record{'s' if cleared != 1 else ''} "
              f"cleared: launches place jobs there again\n")
    return 0


def _drain(spec, host, transport, reason: Optional[str], timeout: Optional[float], out: IO[str]) -> int:
    from launcher.sharing.glance import drain_host
    from launcher.sharing.hostview import lease_note
    from launcher.sharing.render import describe_cordon, describe_leases

    note = lease_note(spec, host)
    if note:
        out.write(f"note: {note}\n")
    started, last = time.monotonic(), None
    events = drain_host(transport, spec, host, reason or _default_reason("drained"), timeout)
    try:
        for event in events:
            clock = float(event.get("now") or time.time())
            kind = event.get("event")
            if kind == "cordon":
                already = "" if event.get("fresh") else "already "
                out.write(f"{host.name} {already}{describe_cordon(event.get('cordon') or {}, clock)}\n")
            elif kind == "leases" and event.get("leases"):
                holders = [(h.get("job"), h.get("uid"), h.get("file")) for h in event["leases"]]
                if holders != last:
                    last, count = holders, len(holders)
                    out.write(f"waiting for {count} job{'s' if count != 1 else ''} on {host.name}: "
                              f"{describe_leases(event['leases'], clock)}\n")
            elif kind == "drained":
                out.write(f"{host.name} drained: no job holds a lease there (after "
                          f"{time.monotonic() - started:.0f} s); it stays cordoned until: refinenet-launch "
                          f"uncordon --cluster {spec.source} {host.name}\n")
            elif kind == "timeout":
                out.write(f"{host.name} not drained within {timeout:g} s: still "
                          f"{describe_leases(event.get('leases') or [], clock)}; it stays cordoned\n")
            elif kind == "error":
                error = event.get("error") or {}
                raise BadInput(f"{host.name}: cannot use its shared state: {error.get('message')}")
            out.flush()
            if kind in ("drained", "timeout"):
                return 0 if kind == "drained" else 1
    except HostError as exc:
        raise BadInput(f"{host.name} ({host.address}): {exc.cause}") from None
    except KeyboardInterrupt:
        out.write(f"stopped waiting; {host.name} stays cordoned until: refinenet-launch uncordon --cluster "
                  f"{spec.source} {host.name}\n")
        out.flush()
        raise
    finally:
        events.close()
    raise BadInput(f"{host.name}: the drain ended without an answer")
