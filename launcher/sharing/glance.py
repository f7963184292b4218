"""The hosts' shared state read and changed from any machine, without a job: one login per host.

`glance_host` runs the host program's `glance` mode (launcher/hostside/glance.py) once on a host: the
change asked for (cordon, uncordon, clear the exclusion records), then the state's snapshot, free disk
of the state directory and the workdir, and the raw output of the device tool, in one answer.
`read_cluster` does that for every host and spare of a cluster file at once (`launch.fanout` wide) and
builds the `ClusterView`. `drain_host` runs the `drain` mode: it cordons the host and waits there until
no job holds a lease, streaming each change.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from launcher.errors import BadInput, HostError
from launcher.fanout import fan_out
from launcher.health.probes import TOOL_DIRS, device_probe
from launcher.sharing.hostview import HOST, SPARE, ClusterView, HostView, host_view, unreachable_view
from launcher.spec.model import ClusterSpec, HostSpec
from launcher.transport.base import Transport
from launcher.transport.hostprog import host_argv, host_stdin

__all__ = ["shared_cluster", "pick_host", "glance_request", "glance_host", "read_cluster", "drain_host",
           "TOOL_TIMEOUT_S"]

#: How long the device tool may take on a host.
TOOL_TIMEOUT_S = 30.0
#: What a host may take beyond its device tool to answer.
ANSWER_SLACK_S = 30.0


def shared_cluster(value: str) -> ClusterSpec:
    """The cluster file `value` (a path or a shipped name), validated; `BadInput` when it is wrong or
    its hosts are a Slurm allocation's (Slurm keeps that cluster's state)."""
    from launcher.planning.request import resolve_cluster_path
    from launcher.spec.load import load_cluster

    spec = load_cluster(resolve_cluster_path(value))
    if spec.slurm is not None:
        raise BadInput(f"{spec.source}: backend slurm: Slurm keeps the state of its nodes (sinfo, squeue; "
                       f"scontrol update nodename=NODE state=drain reason=...)")
    return spec


def pick_host(spec: ClusterSpec, name: str) -> HostSpec:
    """The host or spare called `name`; `BadInput` naming the argument and listing the file's hosts."""
    try:
        return spec.host(name)
    except KeyError:
        hosts = ", ".join(h.name for h in spec.hosts) or "none"
        spares = f"; spares: {', '.join(h.name for h in spec.spares)}" if spec.spares else ""
        raise BadInput(f"HOST: no host or spare {name!r} in {spec.source} (hosts: {hosts}{spares})") from None


def glance_request(spec: ClusterSpec, host: HostSpec, *, devices: bool = True,
                   **change: Any) -> Dict[str, Any]:
    """The `glance` request for `host`: its state directory, its workdir for free disk, the device tool
    when the cluster's devices are probed (and `devices`), and `change` (cordon=WHY, uncordon=WHY,
    clear_exclusions=True)."""
    request: Dict[str, Any] = {"state_dir": spec.state_dir(host), "paths": [host.workdir], "tool": None}
    probe = device_probe(spec.device)
    if probe is not None and devices and spec.health.check_devices:
        request["tool"] = {"argv": [probe.tool, *probe.args], "dirs": list(TOOL_DIRS),
                           "timeout": TOOL_TIMEOUT_S}
    request.update({k: v for k, v in change.items() if v is not None and v is not False})
    return request


def glance_host(transport: Transport, request: Mapping[str, Any]) -> Dict[str, Any]:
    """The host's `glance` answer to `request`; `HostError` when it cannot be reached or gives none."""
    timeout = (TOOL_TIMEOUT_S if request.get("tool") else 0.0) + ANSWER_SLACK_S
    code, out, err = transport.run_mode("glance", [json.dumps(dict(request))], timeout=timeout)
    answer = _last_json(out)
    if answer is None:
        detail = (err.strip() or out.strip())[-300:] or "no output"
        raise HostError(transport.host, f"the host program gave no answer (exit {code}): {detail}")
    if "error" in answer:
        raise HostError(transport.host, f"glance refused: {answer['error'].get('message')}")
    return answer


def _last_json(text: str) -> Optional[Dict[str, Any]]:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def read_cluster(spec: ClusterSpec, transports: Mapping[str, Transport],
                 clock: Callable[[], float] = time.time) -> ClusterView:
    """Every host and spare of `spec`, one `glance` each, `launch.fanout` at once."""
    everyone = [(h, HOST) for h in spec.hosts] + [(h, SPARE) for h in spec.spares]
    started = clock()

    def one(item) -> HostView:
        host, role = item
        try:
            return host_view(spec, host, role, glance_host(transports[host.name], glance_request(spec, host)))
        except HostError as exc:
            return unreachable_view(host, role, exc.cause)

    done = fan_out(one, everyone, key=lambda item: item[0].name, width=spec.launch.fanout)
    views = []
    for host, role in everyone:
        if host.name in done.succeeded:
            views.append(done.succeeded[host.name])
        else:
            exc = done.failed[host.name]
            views.append(unreachable_view(host, role, f"{type(exc).__name__}: {exc}"))
    return ClusterView(spec.name, spec.source, started, tuple(views))


def drain_host(transport: Transport, spec: ClusterSpec, host: HostSpec, why: str,
               timeout: Optional[float] = None) -> Iterator[Dict[str, Any]]:
    """Cordon `host` (unless cordoned) and wait on it until no job holds a lease there: the host's events
    as they come (`cordon`, `leases` on every change, then `drained`, `timeout` or `error`). `HostError`
    when the host cannot be reached or its program stops without a last event. Closing the iterator
    hangs up, which ends the wait on the host (the cordon stays)."""
    request = {"state_dir": spec.state_dir(host), "why": why, "timeout": timeout}
    stream = transport.start_agent(host_argv(host.python, "drain", json.dumps(request)), host_stdin())
    lines: queue.Queue[Optional[bytes]] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(stream, lines), name=f"drain {host.name}",
                              daemon=True)
    reader.start()
    seen = []
    try:
        while True:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                code = stream.exit_code(5.0)
                detail = b"".join(seen[-5:]).decode("utf-8", "replace").strip()[-300:] or "no output"
                raise HostError(host.name, f"the drain ended without an answer (exit {code}): {detail}")
            try:
                event = json.loads(line)
            except ValueError:
                seen.append(line)
                continue
            if not isinstance(event, dict):
                continue
            yield event
            if event.get("event") in ("drained", "timeout", "error"):
                return
    finally:
        stream.close()


def _read_lines(stream, lines: queue.Queue[Optional[bytes]]) -> None:
    pending = b""
    try:
        while True:
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for line in whole:
                lines.put(line)
    except Exception:  # a lost connection: the stream's end, as for EOF
        pass
    finally:
        if pending:
            lines.put(pending)
        lines.put(None)
