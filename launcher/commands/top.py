"""`refinenet-launch top JOB`: a live view of a job's ranks, read from the job directory only.

On a terminal it redraws in place (curses; q or Ctrl-C quits). Otherwise it prints a block of plain
lines every `--interval` seconds and stops when the job is final or after `--iterations`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from launcher.jobs import RUNS_DIR_ENV, JobDir, JobRecord
from launcher.logs.format import rank_log_name
from launcher.report.data import JobData
from launcher.report.series import global_step, steps_per_epoch
from launcher.stragglers import step_interval

TAIL_BYTES = 1 << 19


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Live view of a job's ranks (q quits).")
    parser.add_argument("job", help="job id (or a unique prefix of it) or job directory")
    parser.add_argument("--runs-dir", help=f"where job directories live (default: ${RUNS_DIR_ENV} or ./runs)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="stop after this many refreshes (default: until q, or the job is final "
                             "when not on a terminal)")
    return parser


def _tail_jsonl(path: os.PathLike, max_bytes: int = TAIL_BYTES) -> List[Dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - max_bytes)
            f.seek(start)
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]
    out = []
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


@dataclass
class RankRow:
    rank: int
    host: str = "-"
    state: str = "-"
    epoch: Optional[int] = None
    step: Optional[int] = None
    loss: Optional[float] = None
    step_time: Optional[float] = None
    last_line_age: Optional[float] = None
    restarts: int = 0
    health: str = ""
    straggler: bool = False


@dataclass
class View:
    header: List[str] = field(default_factory=list)
    rows: List[RankRow] = field(default_factory=list)
    final: bool = False


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    s = int(max(0, s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _health_by_host(samples: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    latest: Dict[str, Dict[str, Any]] = {}
    for rec in samples:
        if isinstance(rec.get("host"), str):
            latest[rec["host"]] = rec
    return latest


def _rank_health(sample: Optional[Mapping[str, Any]], pid: Optional[int], local_index: int) -> str:
    if not sample:
        return ""
    parts = []
    devices = [d for d in sample.get("devices") or () if isinstance(d, dict)]
    if devices:
        d = devices[min(local_index, len(devices) - 1)]
        if d.get("temp_c") is not None:
            parts.append(f"{d['temp_c']:.0f}C")
        if d.get("util_pct") is not None:
            parts.append(f"util {d['util_pct']:.0f}%")
        if d.get("memory_used_mb") is not None and d.get("memory_total_mb"):
            parts.append(f"mem {100 * d['memory_used_mb'] / d['memory_total_mb']:.0f}%")
    for p in sample.get("processes") or ():
        if isinstance(p, dict) and p.get("pid") == pid:
            if p.get("cpu_percent") is not None:
                parts.append(f"cpu {p['cpu_percent']:.0f}%")
            if p.get("rss") is not None:
                parts.append(f"rss {p['rss'] / 2 ** 20:.0f}M")
    mem = sample.get("mem")
    if not devices and isinstance(mem, dict) and mem.get("total"):
        parts.append(f"host mem {100 * (1 - mem.get('available', 0) / mem['total']):.0f}%")
    if sample.get("verdict") not in (None, "HEALTHY"):
        parts.append(str(sample["verdict"]))
    return " ".join(parts)


def _step_times(records: List[Dict[str, Any]]) -> Dict[int, float]:
    """Rank -> median seconds per step over its last few intervals."""
    last: Dict[int, Dict[str, Any]] = {}
    times: Dict[int, List[float]] = {}
    for rec in records:
        rank = rec.get("rank")
        if not isinstance(rank, int):
            continue
        if rank in last:
            dt = rec.get("seconds") if isinstance(rec.get("seconds"), (int, float)) else step_interval(
                last[rank], rec)
            if dt is not None:
                times.setdefault(rank, []).append(float(dt))
        last[rank] = rec
    return {r: statistics.median(ts[-5:]) for r, ts in times.items() if ts}


def snapshot(job: JobDir, record: JobRecord, now: Optional[float] = None) -> View:
    """What `top` shows now: header lines and one row per rank of the current attempt."""
    now = time.time() if now is None else now
    records = [r for r in _tail_jsonl(job.metrics_file) if isinstance(r.get("rank"), int)]
    attempt = record.current_attempt
    number = attempt.number if attempt else 0
    current = [r for r in records if r.get("attempt") in (number, None)] or records
    latest = {r["rank"]: r for r in current}
    times = _step_times(current)
    per_epoch = steps_per_epoch(records)
    health = _health_by_host(_tail_jsonl(job.health_file, 1 << 17))
    flagged = {s.rank for s in job.read_stragglers() if s.attempt == number}
    # restarts of the stage in progress (a multi-stage job's earlier stages are not restarts)
    restarts = sum(1 for a in record.attempts[:-1] if attempt and a.stage == attempt.stage)
    rows: Dict[int, RankRow] = {}
    local_index: Dict[str, int] = {}
    for proc in (attempt.ranks if attempt else []):
        idx = local_index[proc.host] = local_index.get(proc.host, -1) + 1
        row = rows[proc.rank] = RankRow(proc.rank, proc.host, proc.state.value, restarts=restarts)
        row.health = _rank_health(health.get(proc.host), proc.pid, idx)
    for rank, rec in latest.items():
        row = rows.setdefault(rank, RankRow(rank, str(rec.get("host", "-")), restarts=restarts))
        row.epoch = rec.get("epoch") if isinstance(rec.get("epoch"), int) else None
        row.step = global_step(rec, per_epoch)
        row.loss = rec.get("loss") if isinstance(rec.get("loss"), (int, float)) else None
    for rank, row in rows.items():
        row.step_time = times.get(rank)
        row.straggler = rank in flagged
        try:
            row.last_line_age = now - os.stat(job.logs_dir / rank_log_name(rank)).st_mtime
        except OSError:
            row.last_line_age = None
    end = now if not record.is_final else max([record.updated] + [a.ended or 0 for a in record.attempts])
    elapsed = end - record.created if record.created else None
    eta = _eta(job.path, record, rows, times, per_epoch) if not record.is_final else None
    state = record.state.value
    stage = record.stage + (f" (now {attempt.stage})" if attempt and "," in record.stage else "")
    if record.stop_requested and not record.is_final:
        state += " (stop requested)"
    header = [f"job {record.job_id}  {state}  attempt {number}  elapsed {_fmt_seconds(elapsed)}  "
              f"ETA {_fmt_seconds(eta) if eta is not None else '-'}",
              f"cluster {record.cluster}  stage {stage}  {len(rows)} rank(s)"
              + (f"  stragglers: {', '.join(f'r{r}' for r in sorted(flagged))}" if flagged else "")]
    if record.message:
        header.append(record.message)
    return View(header, [rows[r] for r in sorted(rows)], record.is_final)


def _eta(job_path, record: JobRecord, rows: Mapping[int, RankRow], times: Mapping[int, float],
         per_epoch: Optional[int]) -> Optional[float]:
    epochs = JobData(path=job_path, record={"spec": record.spec, "stage": record.stage}).epochs
    steps = [r.step for r in rows.values() if r.step is not None]
    if not epochs or not per_epoch or not steps or not times:
        return None
    left = epochs * per_epoch - min(steps)
    return max(0.0, left * statistics.median(times.values()))


COLUMNS = ("RANK", "HOST", "STATE", "EPOCH", "STEP", "LOSS", "STEP TIME", "LAST LINE", "RESTARTS", "HEALTH")


def render(view: View) -> List[str]:
    rows: List[Tuple[str, ...]] = [COLUMNS]
    for r in view.rows:
        rows.append((f"r{r.rank}" + ("*" if r.straggler else ""), r.host, r.state,
                     "-" if r.epoch is None else str(r.epoch), "-" if r.step is None else str(r.step),
                     "-" if r.loss is None else f"{r.loss:.4g}",
                     "-" if r.step_time is None else f"{r.step_time:.3f}s",
                     "-" if r.last_line_age is None else f"{_fmt_seconds(r.last_line_age)} ago",
                     str(r.restarts), r.health or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    footer = ["* straggler"] if any(r.straggler for r in view.rows) else []
    return view.header + [""] + table + footer


def _read(job: JobDir, previous: Optional[JobRecord]) -> Optional[JobRecord]:
    try:
        return job.read()
    except (OSError, ValueError, KeyError):
        return previous


def _plain_loop(job: JobDir, interval: float, iterations: Optional[int]) -> int:
    record, count = None, 0
    while True:
        record = _read(job, record)
        if record is not None:
            view = snapshot(job, record)
            print(time.strftime("%H:%M:%S ") + "\n".join(render(view)) + "\n", flush=True)
            count += 1
            if view.final:
                return 0
        if iterations is not None and count >= iterations:
            return 0
        time.sleep(interval)


def _curses_loop(job: JobDir, interval: float, iterations: Optional[int]) -> int:
    import curses

    def loop(screen) -> None:
        curses.curs_set(0)
        screen.timeout(int(interval * 1000))
        record, count = None, 0
        while iterations is None or count < iterations:
            record = _read(job, record)
            screen.erase()
            height, width = screen.getmaxyx()
            lines = render(snapshot(job, record)) if record else [f"cannot read {job.job_file}"]
            lines.append("")
            lines.append("q: quit")
            for y, line in enumerate(lines[:height - 1]):
                screen.addnstr(y, 0, line, width - 1, curses.A_BOLD if y == 0 else curses.A_NORMAL)
            screen.refresh()
            count += 1
            key = screen.getch()
            if key in (ord("q"), ord("Q"), 27):
                return

    try:
        curses.wrapper(loop)
    except KeyboardInterrupt:
        pass
    return 0


def run(args: argparse.Namespace) -> int:
    job = JobDir.resolve(args.job, args.runs_dir)
    interval = max(0.1, args.interval)
    if sys.stdout.isatty() and sys.stdin.isatty():
        return _curses_loop(job, interval, args.iterations)
    try:
        return _plain_loop(job, interval, args.iterations)
    except KeyboardInterrupt:
        return 0
