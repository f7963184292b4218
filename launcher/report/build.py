"""Build the report: job data -> sections with figures -> `report.html` plus the figures as PNG files."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from launcher.failures import Failure
from launcher.jobs import format_time
from launcher.report import figures
from launcher.report.data import JobData, Missing, attempt_stages, load_job
from launcher.report.page import Section, esc, img, note, page, table
from launcher.report.series import (
    by_rank_attempt,
    five_numbers,
    rank_step_times,
    restart_steps,
    step_time_series,
    throughput,
)

REPORT_FILE = "report.html"
REPORT_DIR = "report"
#: Python frames of a group's stack shown in the report (innermost first); the rest are counted.
STACK_LINES = 14


class _Figures:
    """Draws, writes `<name>.png` into the output folder and returns the inline <img>."""

    def __init__(self, out_dir: Path, missing: List[Missing]):
        self.out_dir, self.missing, self.written = out_dir, missing, []

    def add(self, name: str, fig, alt: str) -> str:
        data = figures.png(fig)
        path = self.out_dir / f"{name}.png"
        try:
            path.write_bytes(data)
            self.written.append(path)
        except OSError as exc:
            self.missing.append(Missing(str(path), f"cannot write the figure: {exc.strerror or exc}"))
        return img(data, alt)


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _summary(data: JobData, now: float) -> List[str]:
    r = data.record
    created = r.get("created") if isinstance(r.get("created"), (int, float)) else None
    end = max((a.get("ended") or 0 for a in data.attempts), default=0) if data.is_final else now
    rows = [("job", data.job_id), ("directory", str(data.path)),
            ("state", f"{r.get('state', 'unknown')}" + (f" - {r['message']}" if r.get("message") else "")),
            ("cluster", f"{r.get('cluster', '')} ({r.get('cluster_file', '')})"),
            ("stage", data.stage or "-"),
            ("created", format_time(created) or "-"),
            ("elapsed", f"{end - created:.0f} s" if created and end else "-"),
            ("attempts", str(len(data.attempts))), ("ranks", str(data.world_size or "-")),
            ("batch size per rank", str(data.batch_size or "unknown")),
            ("report made", format_time(now))]
    return [table(("", ""), rows)]


def _loss_section(data: JobData, figs: _Figures, restarts: Mapping[int, int]) -> Section:
    sec = Section("loss", "Loss and learning rate")
    loss = by_rank_attempt(data.metrics, "loss")
    lr = by_rank_attempt(data.metrics, "lr") or by_rank_attempt(data.workload_metrics, "lr")
    if not loss and not lr:
        return sec.add(note("No progress records: nothing to plot."))
    sec.add(figs.add("loss", figures.loss_and_lr(loss, lr, restarts), "loss and learning rate per rank"))
    if not lr:
        sec.add(note("No learning rate in the metrics records."))
    last = {}
    for s in loss:
        last[s.rank] = (s.attempt, s.steps[-1], s.values[-1])
    return sec.add(table(("rank", "attempt", "last global step", "last loss"),
                         [(rk, a, st, f"{v:.6g}") for rk, (a, st, v) in sorted(last.items())], (2, 3)))


def _step_time_section(data: JobData, figs: _Figures, seconds: Mapping[int, List[float]]) -> Section:
    sec = Section("step-time", "Step time per rank")
    if not any(seconds.values()):
        return sec.add(note("Fewer than two progress records per rank: no step times."))
    sec.add(figs.add("step_time", figures.step_time_box(seconds), "step time per rank"))
    rows = []
    for rank, values in sorted(seconds.items()):
        if values:
            f = five_numbers(values)
            rows.append((rank, len(values), *(f"{f[k]:.3f}" for k in ("min", "q1", "median", "q3", "max"))))
    return sec.add(table(("rank", "steps", "min s", "q1 s", "median s", "q3 s", "max s"), rows,
                         (1, 2, 3, 4, 5, 6)))


def _throughput_section(data: JobData, figs: _Figures, seconds: Mapping[int, List[float]],
                        restarts: Mapping[int, int]) -> Section:
    sec = Section("throughput", "Throughput")
    rate = throughput(seconds, data.batch_size)
    if rate is None:
        return sec.add(note("No step times: no throughput."))
    if rate.batch_size is None:
        sec.add(note("The batch size is not set in the job's stage options (job.stage_overrides or "
                     "job.extra_args --batch-size), so throughput is in steps/s, not images/s."))
    series = step_time_series(data.metrics)
    if series:
        sec.add(figs.add("throughput", figures.throughput_lines(series, rate.unit, rate.batch_size, restarts),
                         f"throughput per rank in {rate.unit}"))
    rows = [(rank, f"{v:.3f}") for rank, v in sorted(rate.per_rank.items())]
    rows.append(("all ranks", f"{rate.total:.3f}"))
    return sec.add(table(("rank", f"median {rate.unit}"), rows, (1,)))


def _failure_text(record: Mapping[str, Any]) -> str:
    """A recorded failure as `status` says it; a record it cannot read as its reason alone."""
    try:
        return Failure.from_dict(record).summary()
    except (ValueError, TypeError):
        return str(record.get("reason", ""))


def _attempts_section(data: JobData, figs: _Figures, t0: float, now: float) -> Section:
    sec = Section("attempts", "Attempts, failures and restarts")
    attempts = data.attempts
    if not attempts:
        return sec.add(note("The job record lists no attempts."))
    sec.add(figs.add("attempts", figures.attempt_timeline(attempts, t0, now), "timeline of attempts"))
    rows = []
    for a in attempts:
        f = a.get("failure") or {}
        cause = ""
        if f:
            how = f"exit code {f['exit_code']}" if f.get("exit_code") is not None else (
                f"signal {f['signal']}" if f.get("signal") is not None else "")
            reason = str(f.get("reason", ""))
            cause = _failure_text(f) + (f" ({how})" if how and how not in reason else "")
        rows.append((a.get("number"), a.get("state"), format_time(a.get("started")),
                     format_time(a.get("ended")), a.get("resume") or "-", cause or "-"))
    sec.add(table(("attempt", "state", "started", "ended", "resumed from", "root cause"), rows))
    for a in attempts:
        recovery = a.get("recovery")
        if recovery:
            sec.add(figs.add(f"recovery_{a.get('number')}", figures.recovery_timeline(recovery),
                             f"what attempt {a.get('number')}'s failure cost"))
            phases = (recovery.get("phases") or {}).items()
            rows = [(name, "-" if s is None else f"{s:.2f}") for name, s in phases]
            rows += [(f"workload: {k}", f"{v:.2f}") for k, v in (recovery.get("details") or {}).items()]
            sec.add(table(("phase", "seconds"), rows, (1,)))
    for a in attempts:
        tail = (a.get("failure") or {}).get("log_tail") or []
        if tail:
            sec.add(f"<p>attempt {esc(a.get('number'))}, last lines of the failing rank:</p>"
                    f"<pre>{esc(chr(10).join(str(x) for x in tail[-15:]))}</pre>")
    return sec


def _stragglers_section(data: JobData) -> Section:
    sec = Section("stragglers", "Stragglers")
    if not data.stragglers:
        return sec.add(note("No rank was flagged as a straggler."))
    rows = [(s.attempt, s.rank, s.host, f"{s.ratio:.2f}x", f"{s.step_time:.3f}", f"{s.median_others:.3f}",
             format_time(s.since)) for s in data.stragglers]
    return sec.add(table(("attempt", "rank", "host", "ratio", "step time s", "median of others s", "since"),
                         rows, (3, 4, 5)))


def _stacks_section(data: JobData) -> Section:
    sec = Section("stacks", "Stacks of hung ranks")
    if not data.stacks:
        return sec.add(note("No stack captures (taken from every rank when one stops progressing)."))
    for cap in data.stacks:
        report = cap.report
        suspects = set(report.suspects)
        sec.add(f"<p><b>attempt {esc(cap.attempt)}</b>, {esc(format_time(cap.time) or '-')} "
                f"({esc(cap.folder.name)}): {esc(len(cap.records))} rank(s), {esc(len(report.groups))} "
                f"distinct stack(s)</p>")
        sec.add(f"<pre>{esc(report.summary())}</pre>")
        rows = [(i + 1, _members(g.members), "suspect" if set(g.members) <= suspects else "", g.stack.where())
                for i, g in enumerate(report.groups)]
        for s in report.unknown:
            proc = f" (/proc: {s.proc_text()})" if s.proc_text() else ""
            rows.append(("-", _members([(s.rank, s.host)]), "suspect" if (s.rank, s.host) in suspects else "",
                         f"no stack: {s.reason or s.status}{proc}"))
        sec.add(table(("group", "ranks", "", "where"), rows))
        for i, g in enumerate(report.groups):
            shown = g.stack.python[:STACK_LINES]
            frames = "\n".join(f"{f.function} ({f.module_file}:{f.line})" for f in shown)
            more = len(g.stack.python) - STACK_LINES
            if more > 0:
                frames += f"\n... {more} outer frame(s)"
            sec.add(f"<details><summary>group {i + 1}: {esc(_members(g.members))}, "
                    f"thread {esc(g.stack.thread or '?')}, innermost first</summary><pre>{esc(frames)}</pre>"
                    "</details>")
    return sec


def _members(members) -> str:
    return ", ".join(f"{r} ({h})" for r, h in members)


def _pid_ranks(data: JobData) -> Dict[Tuple[str, int], str]:
    out = {}
    for a in data.attempts:
        for p in a.get("processes") or ():
            if isinstance(p, dict) and p.get("pid") is not None:
                out[(str(p.get("host")), int(p["pid"]))] = str(p.get("name"))
    return out


def _health_panels(data: JobData, t0: float) -> List[Dict[str, Any]]:
    dev: Dict[str, Dict[str, Tuple[List[float], List[float]]]] = {"temp": {}, "util": {}, "mem": {}}
    host_mem: Dict[str, Tuple[List[float], List[float]]] = {}
    cpu: Dict[str, Tuple[List[float], List[float]]] = {}
    rss: Dict[str, Tuple[List[float], List[float]]] = {}
    names = _pid_ranks(data)

    def add(where, label, x, y):
        if isinstance(y, (int, float)):
            xs, ys = where.setdefault(label, ([], []))
            xs.append(x)
            ys.append(float(y))

    for rec in data.health:
        if not isinstance(rec.get("time"), (int, float)):
            continue
        x, host = rec["time"] - t0, str(rec.get("host", "?"))
        for d in rec.get("devices") or ():
            if not isinstance(d, dict):
                continue
            label = f"{host} dev {d.get('device')}"
            add(dev["temp"], label, x, d.get("temp_c"))
            add(dev["util"], label, x, d.get("util_pct"))
            used, total = d.get("memory_used_mb"), d.get("memory_total_mb")
            if isinstance(used, (int, float)) and isinstance(total, (int, float)) and total:
                add(dev["mem"], label, x, 100.0 * used / total)
        mem = rec.get("mem") or {}
        if isinstance(mem, dict) and mem.get("total"):
            add(host_mem, host, x, 100.0 * (1 - float(mem.get("available", 0)) / float(mem["total"])))
        for p in rec.get("processes") or ():
            if not isinstance(p, dict) or p.get("pid") is None:
                continue
            label = f"{names.get((host, int(p['pid'])), 'pid')} {host} ({p['pid']})"
            add(cpu, label, x, p.get("cpu_percent"))
            if isinstance(p.get("rss"), (int, float)):
                add(rss, label, x, p["rss"] / 2 ** 20)
    panels = []
    for key, title, unit in (("temp", "device temperature", "°C"), ("util", "device utilisation", "%"),
                             ("mem", "device memory used", "%")):
        if dev[key]:
            panels.append({"title": title, "ylabel": unit, "lines": dev[key]})
    for lines, title, unit in ((host_mem, "host memory used", "%"), (cpu, "rank process CPU", "% of a core"),
                               (rss, "rank process resident memory", "MiB")):
        if lines:
            panels.append({"title": title, "ylabel": unit, "lines": lines})
    return panels


def _health_section(data: JobData, figs: _Figures, t0: float) -> Section:
    sec = Section("health", "Device and host health")
    panels = _health_panels(data, t0)
    if not panels:
        return sec.add(note("No health samples with readings (health.jsonl missing or empty)."))
    sec.add(figs.add("health", figures.health_over_time(panels), "device and host health over time"))
    bad = [r for r in data.health if r.get("verdict") not in (None, "HEALTHY")]
    if bad:
        rows = [(format_time(r.get("time")), r.get("host"), r.get("verdict"),
                 "; ".join(map(str, (r.get("failures") or []) + (r.get("errors") or []))) or "-")
                for r in bad[:30]]
        sec.add(table(("time", "host", "verdict", "why"), rows))
    return sec.add(note(f"{len(data.health)} sample(s)."))


def _eval_section(data: JobData, figs: _Figures) -> Section:
    sec = Section("eval", "Evaluation")
    if data.eval is None:
        where = ", ".join(data.eval_looked) or "-"
        return sec.add(note(f"No eval.json found (looked in: {where})."))
    ious = [v if isinstance(v, (int, float)) else None for v in data.eval["per_class_iou"]]
    names = data.eval.get("class_names")
    if not isinstance(names, list) or len(names) != len(ious):
        names = [f"class {i}" for i in range(len(ious))]
    mean = data.eval.get("mean_iou")
    mean = float(mean) if isinstance(mean, (int, float)) else None
    sec.add(f"<p><b>mean IoU {esc(_fmt(mean, 4))}</b> over {esc(data.eval.get('images', '?'))} image(s) "
            f"(from {esc(data.eval_path)})</p>")
    sec.add(figs.add("eval_iou", figures.per_class_iou([str(n) for n in names], ious, mean), "per-class IoU"))
    return sec


def _predictions_section(data: JobData) -> Section:
    sec = Section("predictions", "Predictions")
    if not data.overlays:
        return sec.add(note("No prediction overlays (*_overlay.jpg) in the job directory or local output."))
    items = []
    for path in data.overlays:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            data.missing.append(Missing(str(path), f"cannot read the overlay: {exc.strerror or exc}"))
            continue
        items.append(f"<figure>{img(raw, path.name, 'image/jpeg', 'overlay')}"
                     f"<figcaption>{esc(path.name)}</figcaption></figure>")
    return sec.add('<div class="overlays">' + "".join(items) + "</div>")


def _missing_section(data: JobData) -> Section:
    sec = Section("missing", "Missing data")
    if not data.missing:
        return sec.add(note("Every file the report reads was present and readable."))
    return sec.add(table(("file", "problem"), [(m.path, m.problem) for m in data.missing]))


def build_report(data: JobData, out_dir: Path, now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = _Figures(out_dir, data.missing)
    created = data.record.get("created")
    t0 = float(created) if isinstance(created, (int, float)) and created else min(
        [r["time"] for r in data.metrics if isinstance(r.get("time"), (int, float))] or [now])
    restarts = restart_steps(data.metrics)
    stages = attempt_stages(data)
    figures.ATTEMPT_LABELS.clear()
    for attempt in restarts:
        stage, before = stages.get(attempt, ""), stages.get(attempt - 1, "")
        if len(data.stages) > 1 and stage and stage != before:
            figures.ATTEMPT_LABELS[attempt] = f"stage {stage} (attempt {attempt})"
    seconds = rank_step_times(data.metrics)
    sections = [_loss_section(data, figs, restarts), _step_time_section(data, figs, seconds),
                _throughput_section(data, figs, seconds, restarts), _attempts_section(data, figs, t0, now),
                _stragglers_section(data), _stacks_section(data), _health_section(data, figs, t0),
                _eval_section(data, figs), _predictions_section(data)]
    sections.append(_missing_section(data))
    return page(f"Job {data.job_id}", _summary(data, now), sections)


def write_report(job_path: Union[str, os.PathLike], out_dir: Union[str, os.PathLike, None] = None,
                 now: Optional[float] = None) -> Path:
    """Write `<out_dir>/report.html` (default out_dir: `<job>/report`) and the figures next to it."""
    job_path = Path(job_path)
    out = Path(out_dir) if out_dir is not None else job_path / REPORT_DIR
    data = load_job(job_path)
    text = build_report(data, out, now)
    path = out / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
