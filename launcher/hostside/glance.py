"""The host at a glance in one run, and a drain that waits on the host until no job holds a lease.

Runs on the host with only the standard library (Python 3.6+), sent as source like every host program.

* `glance JSON`: one JSON object out. It makes the change asked for first (cordon, uncordon, clear
  the exclusion records), then reads the host's shared state (`hoststate.snapshot`: leases, queue,
  cordon, exclusion records, load, memory, free disk of the state directory and of `paths`) and runs
  the device tool when asked (`tool`: its argv, looked up on PATH and in `dirs`), handing back its raw
  output for the launcher to parse. A change or state that fails is `state_error` in the answer (the
  tool's output still comes back). Exit 0 with an answer, 2 for a bad request (`{"error": ...}`).
* `drain JSON`: cordons the host (unless it is cordoned already), then watches its leases every
  `interval` seconds on the host's own clock, writing one JSON line per change: `{"event": "cordon"}`
  first, `{"event": "leases", "leases": [...]}` whenever the live leases change, and at the end
  `{"event": "drained"}` (exit 0), `{"event": "timeout"}` (exit 1) or `{"event": "error"}` (exit 2).
  End of input (the launcher hung up) ends it at once, leaving the cordon in place.

Request fields: `state_dir` (absolute path), `paths` (for free disk), `tool` ({"argv": [...], "dirs":
[...], "timeout": s} or null), `cordon` (a reason: cordon now), `uncordon` (a reason: clear the
cordon), `clear_exclusions` (true: forget the exclusion records); drain: `state_dir`, `why`,
`timeout` (seconds, null: no limit), `interval`.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

from launcher.hostside import hoststate

USAGE = 2
#: The most of a device tool's output handed back (its table for 16 chips is about 10 kB).
MAX_TOOL_BYTES = 1 << 20
DEFAULT_TOOL_TIMEOUT_S = 30.0
DRAIN_INTERVAL_S = 0.2


# -- requests

def _absolute(value, field):
    if not isinstance(value, str) or not value.startswith("/"):
        raise hoststate.RequestError(field, f"must be an absolute path, not {value!r}")
    return value


def _strings(value, field, empty=True):
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise hoststate.RequestError(field, "must be a list of non-empty strings")
    if not (empty or value):
        raise hoststate.RequestError(field, "must not be empty")
    return value


def _seconds(value, field, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise hoststate.RequestError(field, f"must be a number of seconds > 0, not {value!r}")
    return float(value)


def _reason(payload, field):
    value = payload.get(field)
    if value is not None and (not isinstance(value, str) or len(value) > hoststate.MAX_TEXT):
        raise hoststate.RequestError(field, f"must be a string of at most {hoststate.MAX_TEXT} characters")
    return value


def _load(argv):
    if len(argv) != 1:
        raise hoststate.RequestError("argument", "one JSON object expected")
    try:
        payload = json.loads(argv[0])
    except ValueError as e:
        raise hoststate.RequestError("argument", f"not valid JSON ({e})") from None
    if not isinstance(payload, dict):
        raise hoststate.RequestError("argument", "must be a JSON object")
    return payload


def _check_glance(payload):
    known = ("state_dir", "paths", "tool", "cordon", "uncordon", "clear_exclusions")
    unknown = sorted(set(payload) - set(known))
    if unknown:
        raise hoststate.RequestError(unknown[0], "unknown field (known: " + ", ".join(known) + ")")
    _absolute(payload.get("state_dir"), "state_dir")
    _strings(payload.get("paths", []), "paths")
    tool = payload.get("tool")
    if tool is not None:
        if not isinstance(tool, dict):
            raise hoststate.RequestError("tool", "must be an object or null")
        _strings(tool.get("argv"), "tool.argv", empty=False)
        _strings(tool.get("dirs", []), "tool.dirs")
        _seconds(tool.get("timeout", DEFAULT_TOOL_TIMEOUT_S), "tool.timeout")
    for field in ("cordon", "uncordon"):
        _reason(payload, field)
    if not isinstance(payload.get("clear_exclusions", False), bool):
        raise hoststate.RequestError("clear_exclusions", "must be true or false")
    if payload.get("cordon") is not None and payload.get("uncordon") is not None:
        raise hoststate.RequestError("cordon", "cordon or uncordon, not both")


# -- the device tool

def find_tool(name, dirs):
    """The executable `name` on PATH or in `dirs` (in that order); None when there is none."""
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for folder in os.environ.get("PATH", "").split(os.pathsep) + list(dirs):
        if folder:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def run_tool(argv, dirs=(), timeout=DEFAULT_TOOL_TIMEOUT_S):
    """Run the device tool `argv` to its end (in its own group, killed with it after `timeout`):
    {"argv", "found", "code", "stdout", "stderr", "timed_out"}; "found" False when not installed."""
    out = {"argv": list(argv), "found": False, "code": None, "stdout": "", "stderr": "", "timed_out": False}
    path = find_tool(argv[0], dirs)
    if path is None:
        return out
    out["found"] = True
    try:
        proc = subprocess.Popen([path] + list(argv[1:]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        out["stderr"] = f"cannot run {path}: {e.strerror or e}"
        return out
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        stdout, stderr = proc.communicate()
        out["timed_out"] = True
    out["code"] = proc.returncode
    out["stdout"] = stdout[:MAX_TOOL_BYTES].decode("utf-8", "replace")
    out["stderr"] = stderr[-4000:].decode("utf-8", "replace")
    return out


# -- glance

def _change(payload):
    """The change asked for, made before the snapshot: what it did ("was": the cordon before it)."""
    state_dir, done = payload["state_dir"], {}
    if any(payload.get(k) is not None for k in ("cordon", "uncordon")) or payload.get("clear_exclusions"):
        done["was"] = hoststate.read_state(state_dir).cordon()
    if payload.get("cordon") is not None:
        done["cordon"] = hoststate.cordon(state_dir, payload["cordon"])
    if payload.get("uncordon") is not None:
        done["cordon"] = hoststate.uncordon(state_dir, payload["uncordon"])
    if payload.get("clear_exclusions"):
        done["cleared"] = hoststate.clear_exclusions(state_dir, payload.get("uncordon") or "")
    return done


def glance(payload):
    """The answer of `glance_mode` for a checked request (see the module docstring)."""
    answer = {"version": hoststate.VERSION, "changed": None, "snapshot": None, "state_error": None,
              "tool": None}
    try:
        answer["changed"] = _change(payload)
        answer["snapshot"] = hoststate.snapshot(payload["state_dir"], payload.get("paths", []))
    except hoststate.HostStateError as e:
        answer["state_error"] = e.to_json()
    tool = payload.get("tool")
    if tool is not None:
        answer["tool"] = run_tool(tool["argv"], tool.get("dirs", []),
                                  float(tool.get("timeout", DEFAULT_TOOL_TIMEOUT_S)))
    return answer


def glance_mode(argv):
    """`glance JSON`: one JSON answer on stdout; exit 0, or 2 with {"error"} for a bad request."""
    try:
        payload = _load(argv)
        _check_glance(payload)
    except hoststate.HostStateError as e:
        sys.stdout.write(json.dumps({"error": e.to_json()}) + "\n")
        return USAGE
    sys.stdout.write(json.dumps(glance(payload), sort_keys=True) + "\n")
    return 0


# -- drain

def _emit(event, **fields):
    fields["event"] = event
    fields["now"] = time.time()
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def _hung_up(seconds):
    """Wait `seconds` for input; True when stdin reached its end (the launcher is gone)."""
    try:
        ready, _, _ = select.select([0], [], [], seconds)
    except (OSError, ValueError):
        time.sleep(seconds)
        return False
    if not ready:
        return False
    try:
        return not os.read(0, 4096)
    except OSError:
        return True


def _check_drain(payload):
    known = ("state_dir", "why", "timeout", "interval")
    unknown = sorted(set(payload) - set(known))
    if unknown:
        raise hoststate.RequestError(unknown[0], "unknown field (known: " + ", ".join(known) + ")")
    _absolute(payload.get("state_dir"), "state_dir")
    if not isinstance(payload.get("why"), str) or not payload["why"].strip():
        raise hoststate.RequestError("why", "must be a non-empty string")
    _seconds(payload.get("timeout"), "timeout", allow_none=True)
    _seconds(payload.get("interval", DRAIN_INTERVAL_S), "interval")


def drain(payload):
    """Cordon (unless cordoned), then watch until no lease is live; the exit code (see the module)."""
    state_dir = payload["state_dir"]
    timeout = payload.get("timeout")
    interval = float(payload.get("interval", DRAIN_INTERVAL_S))
    try:
        cordon = hoststate.read_state(state_dir).cordon()
        fresh = not cordon.get("cordoned")
        if fresh:
            cordon = hoststate.cordon(state_dir, payload["why"])
        _emit("cordon", cordon=cordon, fresh=fresh)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            leases = sorted(hoststate.read_state(state_dir).leases, key=lambda h: h.since)
            signature = [(h.job, h.uid, h.name) for h in leases]
            if signature != last:
                _emit("leases", leases=[h.to_json() for h in leases])
                last = signature
            if not leases:
                _emit("drained")
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                _emit("timeout", leases=[h.to_json() for h in leases])
                return 1
            pause = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
            if _hung_up(pause):
                return 0
    except hoststate.HostStateError as e:
        _emit("error", error=e.to_json())
        return USAGE


def drain_mode(argv):
    """`drain JSON`: JSON lines on stdout until the host holds no lease (see the module docstring)."""
    try:
        payload = _load(argv)
        _check_drain(payload)
    except hoststate.HostStateError as e:
        _emit("error", error=e.to_json())
        return USAGE
    return drain(payload)
