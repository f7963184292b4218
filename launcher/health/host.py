"""Host-side facts (memory, directories, rank processes, a port) read by the host's own python.

The launcher may run elsewhere, so it never asks its own psutil about a host: it runs `HOST_SCRIPT`
with the host's python (`python -c HOST_SCRIPT JSON_ARGS`) through the host's transport. The script
uses psutil where the host has it and /proc otherwise, and prints one JSON object.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from launcher.health.samples import plain

__all__ = ["HOST_SCRIPT", "host_argv", "parse_host_sample", "HostSample", "MemorySample", "DirSample",
           "ProcessSample", "PortSample", "GONE", "ZOMBIE"]

GONE = "gone"
ZOMBIE = "zombie"

HOST_SCRIPT = r"""
import json, os, socket, sys, tempfile, time
args = json.loads(sys.argv[1])
psutil = None
if args.get("pids"):
    try:
        import psutil
    except Exception:
        psutil = None
STATES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "Z": "zombie", "T": "stopped",
          "t": "tracing-stop", "X": "dead", "x": "dead", "I": "idle", "W": "waking", "P": "parked"}

def memory():
    if psutil is not None:
        m = psutil.virtual_memory()
        return {"total": m.total, "available": m.available}
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key] = int(value.split()[0]) * 1024
    return {"total": info["MemTotal"], "available": info.get("MemAvailable", info["MemFree"])}

def process(pid):
    if psutil is not None:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                t = p.cpu_times()
                return {"pid": pid, "status": p.status(), "rss": p.memory_info().rss,
                        "cpu_s": t.user + t.system, "started": p.create_time()}
        except psutil.NoSuchProcess:
            return {"pid": pid, "status": "gone"}
        except psutil.AccessDenied:
            return {"pid": pid, "status": "unknown", "error": "access denied"}
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return {"pid": pid, "status": "gone"}
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"pid": pid, "status": STATES.get(fields[0], fields[0]),
            "rss": int(fields[21]) * os.sysconf("SC_PAGE_SIZE"),
            "cpu_s": (int(fields[11]) + int(fields[12])) / ticks, "started": int(fields[19]) / ticks}

def directory(path):
    path = os.path.abspath(os.path.expanduser(path))
    out = {"path": path}
    probe = path
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    out["checked"] = probe
    try:
        st = os.statvfs(probe)
        out["free"], out["total"] = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except OSError as exc:
        out["error"] = "cannot stat %s: %s" % (probe, exc.strerror or exc)
    out["exists"] = probe == path
    if not os.path.isdir(probe):
        out["writable"], out["error"] = False, "%s exists and is not a directory" % probe
    elif probe == path:
        try:
            fd, name = tempfile.mkstemp(dir=path, prefix=".refinenet-health.")
            os.close(fd)
            os.unlink(name)
            out["writable"] = True
        except OSError as exc:
            out["writable"], out["error"] = False, "cannot write in %s: %s" % (path, exc.strerror or exc)
    else:
        out["writable"] = os.access(probe, os.W_OK | os.X_OK)
        if not out["writable"]:
            out["error"] = "cannot create it: %s is not writable" % probe
    return out

def bind(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))
        s.listen(1)
        return {"port": port, "free": True}
    except OSError as exc:
        return {"port": port, "free": False, "error": exc.strerror or str(exc)}
    finally:
        s.close()

out = {"time": time.time(), "hostname": socket.gethostname(), "psutil": psutil is not None,
       "memory": memory(), "dirs": [directory(p) for p in args.get("dirs", [])],
       "processes": [process(int(p)) for p in args.get("pids", [])]}
if args.get("port") is not None:
    out["port"] = bind(int(args["port"]))
facts = args.get("facts")
if facts is not None:
    import importlib.util, platform
    missing = {}
    for name in facts.get("modules", []):
        try:
            if importlib.util.find_spec(name) is None:
                missing[name] = "not found"
        except Exception as exc:
            missing[name] = "%s: %s" % (type(exc).__name__, exc)
    problem = None
    try:
        os.makedirs(facts["workdir"], exist_ok=True)
        fd, name = tempfile.mkstemp(dir=facts["workdir"], prefix=".refinenet-write-check.")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        problem = "%s: %s" % (type(exc).__name__, exc.strerror or exc)
    owners = {}
    for folder in facts.get("ckpt_dirs", []):
        jobs = set()
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        for name in names:
            if not (name.startswith("refinenet-") and name.endswith(".json")):
                continue
            try:
                with open(os.path.join(folder, name)) as f:
                    manifest = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(manifest, dict) and "checkpoint" in manifest:
                jobs.add(str(manifest.get("job_id") or ""))
        if jobs:
            owners[folder] = sorted(jobs)
    out["facts"] = {"python": sys.executable, "version": platform.python_version(),
                    "platform": platform.platform(), "machine": platform.machine(),
                    "cpus": str(os.cpu_count()), "missing": missing, "not_writable": problem,
                    "absent": [f for f in facts.get("files", []) if not os.path.exists(f)],
                    "ckpt_jobs": owners}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class MemorySample:
    total: int
    available: int

    @property
    def used_fraction(self) -> float:
        return 1.0 - self.available / self.total if self.total else 0.0


@dataclass(frozen=True)
class DirSample:
    """A directory the job needs: free space in its filesystem (via its nearest existing ancestor)."""

    path: str
    checked: str
    exists: bool
    writable: bool
    free: Optional[int] = None
    total: Optional[int] = None
    error: Optional[str] = None

    @property
    def free_gb(self) -> Optional[float]:
        return None if self.free is None else self.free / 1e9


@dataclass(frozen=True)
class ProcessSample:
    """A process on the host: psutil status name ('running', 'sleeping', 'zombie', ...) or 'gone'."""

    pid: int
    status: str
    rss: Optional[int] = None
    cpu_s: Optional[float] = None
    started: Optional[float] = None
    error: Optional[str] = None

    @property
    def alive(self) -> bool:
        return self.status not in (GONE, ZOMBIE, "dead")


@dataclass(frozen=True)
class PortSample:
    port: int
    free: bool
    error: Optional[str] = None


@dataclass(frozen=True)
class HostSample:
    """One answer of `HOST_SCRIPT`."""

    time: float
    hostname: str
    psutil: bool
    memory: MemorySample
    dirs: Tuple[DirSample, ...] = ()
    processes: Tuple[ProcessSample, ...] = ()
    port: Optional[PortSample] = None
    #: The launch's host check, when asked for (`host_argv(facts=...)`): python, version, missing
    #: modules, absent input files, whether the workdir could be written.
    facts: Optional[Mapping[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        return plain(self)


def host_argv(python: str, *, dirs: Sequence[str] = (), pids: Sequence[int] = (),
              port: Optional[int] = None, facts: Optional[Mapping[str, Any]] = None) -> list:
    """The command that samples a host; user values travel as one JSON argument, never in the code.
    With `facts` ({workdir, modules, files, ckpt_dirs}) it also answers the launch's host check in the same
    run, with the jobs whose checkpoint manifests are in each of `ckpt_dirs`."""
    args = {"dirs": [str(d) for d in dirs], "pids": [int(p) for p in pids], "port": port}
    if facts is not None:
        args["facts"] = {"workdir": str(facts["workdir"]),
                         "modules": [str(m) for m in facts.get("modules", ())],
                         "files": [str(f) for f in facts.get("files", ())],
                         "ckpt_dirs": [str(d) for d in facts.get("ckpt_dirs", ())]}
    return [python, "-c", HOST_SCRIPT, json.dumps(args)]


def _pick(cls, data: Mapping[str, Any]):
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in data.items() if k in names})


def parse_host_sample(text: str) -> HostSample:
    """Parse the script's JSON line; `ValueError` naming what is missing when it is not that."""
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError("host sample: no output")
    try:
        data = json.loads(lines[-1])
        return HostSample(
            time=float(data["time"]), hostname=str(data["hostname"]), psutil=bool(data["psutil"]),
            memory=_pick(MemorySample, data["memory"]),
            dirs=tuple(_pick(DirSample, {"writable": False, "exists": False, **d}) for d in data["dirs"]),
            processes=tuple(_pick(ProcessSample, p) for p in data["processes"]),
            port=_pick(PortSample, data["port"]) if data.get("port") else None,
            facts=data.get("facts"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"host sample: not the expected JSON object ({type(exc).__name__}: {exc}): "
                         f"{lines[-1][:200]!r}") from None
