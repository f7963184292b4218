"""Everything a report shows, read from a job directory without contacting any host.

Every file is optional: a missing, truncated or unreadable file becomes a `Missing` entry, and the
report renders what is left. Local hosts' output directories (`<workdir>/<job.output_dir>/<stage>`,
as launcher.render lays them out) are read when they exist on this machine, for the workload's own
metrics (learning rate), `eval.json` and prediction overlays.
"""
from __future__ import annotations

import json
import os
import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from launcher import stacks
from launcher.jobs import HEALTH_FILE, JOB_FILE, LOGS_DIR, METRICS_FILE, STRAGGLERS_FILE
from launcher.stragglers import Straggler

OVERLAY_GLOB = "*_overlay.jpg"
MAX_OVERLAYS = 12
EVAL_FILE = "eval.json"


@dataclass(frozen=True)
class Missing:
    """A file the report wanted and could not use, and why."""

    path: str
    problem: str


@dataclass
class JobData:
    path: Path
    record: Dict[str, Any] = field(default_factory=dict)
    metrics: List[Dict[str, Any]] = field(default_factory=list)
    workload_metrics: List[Dict[str, Any]] = field(default_factory=list)
    health: List[Dict[str, Any]] = field(default_factory=list)
    stragglers: List[Straggler] = field(default_factory=list)
    stacks: List[stacks.SavedCapture] = field(default_factory=list)
    eval: Optional[Dict[str, Any]] = None
    eval_path: Optional[str] = None
    eval_looked: List[str] = field(default_factory=list)
    overlays: List[Path] = field(default_factory=list)
    missing: List[Missing] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return str(self.record.get("job_id") or self.path.name)

    @property
    def stage(self) -> str:
        return str(self.record.get("stage") or "")

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.record.get("spec")
        return spec if isinstance(spec, Mapping) else {}

    @property
    def attempts(self) -> List[Dict[str, Any]]:
        attempts = self.record.get("attempts")
        return [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []

    @property
    def plan(self) -> Mapping[str, Any]:
        plan = self.record.get("plan")
        return plan if isinstance(plan, Mapping) else {}

    @property
    def world_size(self) -> Optional[int]:
        ranked = [len({p.get("name") for p in a.get("processes") or () if isinstance(p, Mapping)
                       and p.get("rank") is not None}) for a in self.attempts]
        if len(self.stages) > 1 and any(ranked):
            return max(ranked)
        if isinstance(self.plan.get("world_size"), int):
            return self.plan["world_size"]
        hosts = self.spec.get("hosts")
        if not isinstance(hosts, list):
            return None
        try:
            return sum(len(h.get("devices") or ()) or int(h.get("ranks") or 0) for h in hosts) or None
        except (TypeError, ValueError, AttributeError):
            return None

    def _planned_option(self, name: str) -> Any:
        """`--name VALUE` from the first rank's command line in the plan (what really ran)."""
        for proc in self.plan.get("processes") or ():
            if not isinstance(proc, Mapping) or proc.get("role") != "rank":
                continue
            try:
                return option_in(shlex.split(str(proc.get("command") or "")), name)
            except ValueError:
                return None
        return None

    @property
    def is_final(self) -> bool:
        return self.record.get("state") in ("SUCCEEDED", "FAILED", "STOPPED")

    def stage_option(self, name: str, stage: Optional[str] = None) -> Any:
        """A workload option of the stage: from the plan's rank command when it is this job's stage,
        else from the cluster file's `job.stage_overrides` or `job.extra_args`; None if not set."""
        if stage is None and len(self.stages) > 1:
            stage = self.stages[0]
        if stage in (None, self.stage, self.plan.get("stage")):
            planned = self._planned_option(name)
            if planned is not None:
                return planned
        job = self.spec.get("job") if isinstance(self.spec.get("job"), Mapping) else {}
        overrides = (job.get("stage_overrides") or {}).get(stage or self.stage) or {}
        if isinstance(overrides, Mapping) and overrides.get(name) not in (None, False):
            return overrides[name]
        return option_in([str(a) for a in job.get("extra_args") or ()], name)

    @property
    def batch_size(self) -> Optional[int]:
        return _positive_int(self.stage_option("batch-size"))

    @property
    def epochs(self) -> Optional[int]:
        return _positive_int(self.stage_option("epochs"))

    @property
    def stages(self) -> List[str]:
        """The stages the job ran (several for `--stage r1,r2,eval`)."""
        return [s for s in self.stage.split(",") if s]

    def local_workdirs(self) -> List[Path]:
        """The workdir of each host without `ssh` (the launcher's machine) that exists here: the cluster
        file's, or, where it gives none (the launcher's directory), the one the plan ran the ranks in."""
        found: List[Path] = []
        local = set()
        for host in self.spec.get("hosts") or ():
            if not isinstance(host, Mapping) or host.get("ssh") is not None:
                continue
            local.add(str(host.get("name")))
            if host.get("workdir"):
                path = Path(os.path.expanduser(str(host["workdir"])))
                if path.is_dir() and path not in found:
                    found.append(path)
        processes = self.plan.get("processes") if isinstance(self.plan, Mapping) else None
        for proc in processes or ():
            if isinstance(proc, Mapping) and str(proc.get("host")) in local and proc.get("cwd"):
                path = Path(str(proc["cwd"]))
                if path.is_dir() and path not in found:
                    found.append(path)
        return found

    @property
    def output_dir(self) -> str:
        job = self.spec.get("job") if isinstance(self.spec.get("job"), Mapping) else {}
        return str(job.get("output_dir") or "output")

    def local_output_dirs(self, stage: Optional[str] = None) -> List[Path]:
        """`<workdir>/<job.output_dir>[/<stage>]` of each local host (launcher.render's layout)."""
        found: List[Path] = []
        for workdir in self.local_workdirs():
            parts = [str(workdir), self.output_dir] + ([stage] if stage else [])
            path = Path(posixpath.normpath(posixpath.join(*parts)))
            if path.is_dir() and path not in found:
                found.append(path)
        return found


def option_in(argv: List[str], name: str) -> Optional[str]:
    """The value of `--name VALUE` or `--name=VALUE` in `argv`, else None."""
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _positive_int(value: Any) -> Optional[int]:
    try:
        n = int(str(value))
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def read_jsonl(path: Path, what: str, missing: List[Missing], required: bool = True
               ) -> List[Dict[str, Any]]:
    """Records of a JSONL file; bad or torn lines are skipped and counted in `missing`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            missing.append(Missing(str(path), f"no {what} ({path.name} does not exist)"))
        return []
    except OSError as exc:
        missing.append(Missing(str(path), f"cannot read {what}: {exc.strerror or exc}"))
        return []
    records, bad = [], 0
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    if bad:
        torn = "" if raw.endswith(b"\n") else " (the file ends mid-line: truncated or still being written)"
        missing.append(Missing(str(path), f"{bad} unreadable line(s) of {what} skipped{torn}"))
    return records


def read_json(path: Path, what: str, missing: List[Missing], required: bool = True) -> Optional[Dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        if required:
            missing.append(Missing(str(path), f"no {what} ({path.name} does not exist)"))
        return None
    except (OSError, ValueError) as exc:
        missing.append(Missing(str(path), f"{what} is unreadable (truncated or not JSON: {exc})"))
        return None
    if not isinstance(data, dict):
        missing.append(Missing(str(path), f"{what} is not a JSON object"))
        return None
    return data


def _workload_metrics(data: JobData) -> List[Dict[str, Any]]:
    """The ranks' own metrics files on local hosts (they carry `lr`), limited to this job's time span."""
    start = float(data.record.get("created") or 0.0) - 1.0
    attempts = data.attempts
    ends = [a.get("ended") for a in attempts]
    end = max((e for e in ends if isinstance(e, (int, float))), default=None)
    if end is None or not data.is_final:
        end = float("inf")
    out: List[Dict[str, Any]] = []
    offset = 0
    for stage in data.stages:
        last = 0
        for folder in data.local_output_dirs(stage):
            for path in sorted((folder / "metrics").glob("rank_*.jsonl")):
                try:
                    rank = int(path.stem.split("_", 1)[1])
                except ValueError:
                    continue
                for rec in read_jsonl(path, "workload metrics", data.missing):
                    t = rec.get("time")
                    if isinstance(t, (int, float)) and start <= t <= end + 1.0:
                        if isinstance(rec.get("step"), int):
                            last = max(last, rec["step"])
                            rec = {**rec, "step": rec["step"] + offset}
                        out.append({**rec, "rank": rank})
        offset += last
    return out


def _eval_candidates(data: JobData) -> Iterator[Path]:
    yield data.path / EVAL_FILE
    yield from sorted(p for p in data.path.glob(f"*/{EVAL_FILE}"))
    override = data.stage_option("output", "eval")
    for workdir in data.local_workdirs():
        if isinstance(override, str) and override.endswith(".json"):
            yield workdir / override
        yield Path(posixpath.normpath(posixpath.join(str(workdir), data.output_dir, "eval", EVAL_FILE)))


def _find_eval(data: JobData) -> None:
    seen: List[str] = []
    for path in _eval_candidates(data):
        if str(path) in seen:
            continue
        seen.append(str(path))
        if path.is_file():
            result = read_json(path, "evaluation result", data.missing)
            if result is not None and isinstance(result.get("per_class_iou"), list):
                data.eval, data.eval_path = result, str(path)
                break
            if result is not None:
                data.missing.append(Missing(str(path), "evaluation result has no per_class_iou list"))
    data.eval_looked = seen
    if data.eval is None and "eval" in data.stages:
        data.missing.append(Missing(", ".join(seen), "no eval.json for this eval job"))


def _find_overlays(data: JobData) -> None:
    found: List[Path] = []
    for folder in [data.path, *data.local_output_dirs()]:
        for path in sorted(folder.rglob(OVERLAY_GLOB)):
            if path not in found:
                found.append(path)
            if len(found) >= MAX_OVERLAYS:
                data.overlays = found
                return
    data.overlays = found


def load_job(path: Path) -> JobData:
    """Read a job directory (running, finished, or copied elsewhere)."""
    data = JobData(path=Path(path))
    if not data.path.is_dir():
        data.missing.append(Missing(str(path), "job directory does not exist"))
        return data
    data.record = read_json(data.path / JOB_FILE, "job record", data.missing) or {}
    if not (data.path / LOGS_DIR).is_dir():
        data.missing.append(Missing(str(data.path / LOGS_DIR), "no logs directory"))
    data.metrics = [r for r in read_jsonl(data.path / METRICS_FILE, "progress records", data.missing)
                    if isinstance(r.get("rank"), int)]
    data.metrics = _stages_in_sequence(data, data.metrics)
    data.health = read_jsonl(data.path / HEALTH_FILE, "health samples", data.missing)
    data.workload_metrics = _workload_metrics(data)
    data.stragglers = _stragglers(data)
    data.stacks = _stack_captures(data)
    _find_eval(data)
    _find_overlays(data)
    return data


def attempt_stages(data: JobData) -> Dict[int, str]:
    """Attempt number -> the stage it ran (a multi-stage job runs its stages as attempts in order)."""
    return {int(a["number"]): str(a.get("stage") or "") for a in data.attempts if "number" in a}


def _stages_in_sequence(data: JobData, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """For a multi-stage job, each later stage's epochs continue after the earlier stages' (so the
    figures show r1, r2, ... one after the other); the records also get their `stage`."""
    stages = attempt_stages(data)
    if len(data.stages) < 2:
        return records
    last_epoch: Dict[str, int] = {}
    for rec in records:
        stage = stages.get(int(rec.get("attempt") or 0), "")
        if isinstance(rec.get("epoch"), int):
            last_epoch[stage] = max(last_epoch.get(stage, 0), rec["epoch"])
    offset, total = {}, 0
    for stage in data.stages:
        offset[stage] = total
        total += last_epoch.get(stage, 0)
    out = []
    for rec in records:
        stage = stages.get(int(rec.get("attempt") or 0), "")
        rec = dict(rec, stage=stage)
        if isinstance(rec.get("epoch"), int):
            rec["epoch"] += offset.get(stage, 0)
        out.append(rec)
    return out


def _stragglers(data: JobData) -> List[Straggler]:
    found: Dict[Tuple[int, int], Straggler] = {}
    raw = read_jsonl(data.path / STRAGGLERS_FILE, "straggler records", data.missing, required=False)
    for rec in [*raw, *(data.record.get("stragglers") or ())]:
        try:
            s = Straggler.from_dict(rec)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        found.setdefault(s.key, s)
    return sorted(found.values(), key=lambda s: (s.time, s.rank))



def _stack_captures(data: JobData) -> List[stacks.SavedCapture]:
    """The stack captures under `JOB/stacks/`, oldest first; an unreadable one is named in `missing`."""
    found = []
    for folder in stacks.captures(data.path):
        try:
            found.append(stacks.load(folder))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            data.missing.append(Missing(str(folder), f"stack capture is unreadable: {exc}"))
    return found
