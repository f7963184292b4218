"""`refinenet-launch report`: a page from a synthetic job directory, whole or damaged."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from launcher.cli import main
from launcher.report import write_report
from launcher.report.data import load_job
from launcher.report.series import by_rank_attempt, restart_steps, steps_per_epoch

T0 = 1_764_000_000.0
FIGURE_SECTIONS = ("loss", "step-time", "throughput", "attempts", "health", "eval", "predictions")
ALL_SECTIONS = FIGURE_SECTIONS + ("stragglers", "missing")


def _spec(workdir: Path, batch_size=None) -> dict:
    overrides = {"r1": {"batch-size": batch_size, "epochs": 2}} if batch_size else {}
    return {"name": "synthetic", "backend": "dynamic", "device": "gpu",
            "hosts": [{"name": "host-a", "ssh": None, "devices": [0], "workdir": str(workdir)},
                      {"name": "host-b", "ssh": {"user": "x"}, "devices": [0], "workdir": "/nowhere"}],
            "job": {"output_dir": "out", "stage_overrides": overrides, "extra_args": []}}


def _record(spec: dict) -> dict:
    def procs(attempt):
        return [{"name": f"r{r}", "rank": r, "host": h, "pid": 100 * attempt + r,
                 "pgid": 100 * attempt + r, "state": "STOPPED", "exit_code": None, "started": T0,
                 "ended": None}
                for r, h in ((0, "host-a"), (1, "host-b"))]

    return {"format": "refinenet-job/1", "job_id": "synthetic-r1-1", "cluster": "synthetic",
            "stage": "r1", "state": "SUCCEEDED", "created": T0, "updated": T0 + 60,
            "stop_requested": False, "message": "",
            "launcher": None, "cluster_file": "synthetic.yaml", "spec": spec, "plan": {},
            "attempts": [
                {"number": 1, "state": "FAILED", "started": T0 + 1, "ended": T0 + 20, "resume": None,
                 "failure": {"reason": "exit code 3", "rank": 1, "host": "host-b", "exit_code": 3,
                             "signal": None, "log_tail": ["Traceback", "rank 1 gives up"], "time": T0 + 19},
                 "processes": procs(1)},
                {"number": 2, "state": "SUCCEEDED", "started": T0 + 25, "ended": T0 + 60,
                 "resume": "/w/out/r1/ckpt/refinenet-1_10.ckpt", "failure": None, "processes": procs(2)}],
            "stragglers": [{"rank": 1, "host": "host-b", "ratio": 2.4, "step_time": 0.62,
                            "median_others": 0.26, "since": T0 + 30, "time": T0 + 33, "attempt": 2,
                            "epoch": 2, "epoch_step": 5}]}


def _metrics() -> list:
    out, t = [], T0 + 2
    for attempt, epochs in ((1, [(1, range(1, 11)), (2, range(1, 4))]), (2, [(2, range(1, 11))])):
        for epoch, steps in epochs:
            for step in steps:
                t += 0.3
                for rank in (0, 1):
                    out.append({"rank": rank, "source": f"r{rank}", "host": "host-a", "attempt": attempt,
                                "epoch": epoch, "epoch_step": step, "loss": 2.0 / (epoch * 10 + step),
                                "lr": 0.01 * (0.9 ** step), "time": round(t + 0.1 * rank * step, 3)})
    return out


def _health() -> list:
    out = []
    for i in range(6):
        for host in ("host-a", "host-b"):
            out.append({"time": T0 + 5 + 10 * i, "host": host,
                        "verdict": "HEALTHY" if i < 5 else "DEGRADED",
                        "devices": [{"device": 0, "temp_c": 50 + i, "util_pct": 80 + i,
                                     "memory_used_mb": 1000, "memory_total_mb": 4000, "verdict": "HEALTHY"}],
                        "mem": {"total": 8 << 30, "available": (4 << 30) - i * (1 << 28)},
                        "processes": [{"pid": 201, "status": "running", "rss": 300 << 20,
                                       "cpu_percent": 95.0}],
                        "errors": [], "failures": []})
    return out


def _jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_job(root: Path, batch_size=8) -> Path:
    job = root / "runs" / "synthetic-r1-1"
    (job / "logs").mkdir(parents=True)
    workdir = root / "host-a"
    spec = _spec(workdir, batch_size)
    (job / "job.json").write_text(json.dumps(_record(spec)))
    _jsonl(job / "metrics.jsonl", _metrics())
    _jsonl(job / "health.jsonl", _health())
    (job / "logs" / "job.log").write_text("[r0 host-a] epoch: 1 step: 1, loss is 1.0\n")
    (job / "eval.json").write_text(json.dumps({"mean_iou": 0.61, "per_class_iou": [0.9, 0.5, None, 0.43],
                                               "class_names": ["background", "aeroplane", "bicycle", "bird"],
                                               "images": 12}))
    predictions = workdir / "out" / "predict"
    predictions.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    (predictions / "2007_000033_overlay.jpg").write_bytes(buf.getvalue())
    return job


def sections(html: str) -> dict:
    return dict(re.findall(r'<section id="([a-z-]+)">(.*?)</section>', html, re.S))


def test_every_section_of_a_complete_job(tmp_path):
    job = make_job(tmp_path)
    path = write_report(job, tmp_path / "out", now=T0 + 100)
    html = path.read_text()
    found = sections(html)
    assert set(ALL_SECTIONS) <= set(found)
    for name in FIGURE_SECTIONS:
        pattern = r'<img [^>]*src="data:image/(png|jpeg);base64,[A-Za-z0-9+/]{100,}'
        assert re.search(pattern, found[name]), name
    assert "learning rate" in found["loss"] and "No learning rate" not in found["loss"]
    assert "median images/s" in found["throughput"] and "steps/s" not in found["throughput"]
    assert "exit code 3" in found["attempts"] and "refinenet-1_10.ckpt" in found["attempts"]
    assert "rank 1 gives up" in found["attempts"]
    assert "host-b" in found["stragglers"] and "2.40x" in found["stragglers"]
    assert "mean IoU 0.61" in found["eval"] and "2007_000033_overlay.jpg" in found["predictions"]
    assert "DEGRADED" in found["health"]
    assert "Every file the report reads was present" in found["missing"]
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["attempts.png", "eval_iou.png", "health.png", "loss.png", "step_time.png",
                    "throughput.png"]
    assert all((tmp_path / "out" / p).read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_without_a_batch_size_throughput_is_in_steps_per_second(tmp_path):
    job = make_job(tmp_path, batch_size=None)
    found = sections(write_report(job).read_text())
    assert "steps/s" in found["throughput"] and "batch size is not set" in found["throughput"]
    assert (job / "report" / "report.html").is_file()


def test_missing_and_truncated_files_still_render_and_are_named(tmp_path):
    job = make_job(tmp_path)
    text = (job / "job.json").read_text()
    (job / "job.json").write_text(text[: len(text) // 2])
    metrics = (job / "metrics.jsonl").read_text()
    (job / "metrics.jsonl").write_text(metrics[: len(metrics) - 40])
    (job / "health.jsonl").unlink()
    (job / "eval.json").write_text('{"mean_iou": 0.5, "per_cl')
    (job / "logs" / "job.log").unlink()
    (job / "logs").rmdir()
    html = write_report(job, tmp_path / "damaged").read_text()
    found = sections(html)
    assert set(ALL_SECTIONS) <= set(found)
    missing = found["missing"]
    for name in ("job.json", "metrics.jsonl", "health.jsonl", "eval.json", "logs"):
        assert str(job / name) in missing, name
    assert "truncated" in missing and "unreadable line" in missing
    assert re.search(r"<img [^>]*base64", found["loss"])
    assert "No health samples" in found["health"] and "attempts" in found["attempts"].lower()


def test_an_empty_or_absent_job_directory_still_renders(tmp_path):
    (tmp_path / "empty").mkdir()
    found = sections(write_report(tmp_path / "empty", tmp_path / "o1").read_text())
    assert set(ALL_SECTIONS) <= set(found) and "job.json" in found["missing"]
    data = load_job(tmp_path / "absent")
    assert data.missing and data.missing[0].problem == "job directory does not exist"


def test_global_steps_and_restarts_from_epoch_records():
    records = _metrics()
    assert steps_per_epoch(records) == 10
    loss = by_rank_attempt(records, "loss")
    assert [(s.rank, s.attempt) for s in loss] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert loss[0].steps[:3] == [1, 2, 3] and loss[0].steps[-1] == 13
    assert restart_steps(records) == {2: 11}


def test_the_report_command(tmp_path, capsys):
    job = make_job(tmp_path)
    runs, out = str(tmp_path / "runs"), str(tmp_path / "r")
    assert main(["report", "synthetic-r1", "--runs-dir", runs, "-o", out]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "report.html")
    assert main(["report", str(job)]) == 0


@pytest.mark.parametrize("lines", [0, 1])
def test_a_job_that_has_just_started(tmp_path, lines):
    job = make_job(tmp_path)
    record = json.loads((job / "job.json").read_text())
    record.update(state="RUNNING", attempts=record["attempts"][:1])
    record["attempts"][0].update(state="RUNNING", ended=None, failure=None)
    (job / "job.json").write_text(json.dumps(record))
    _jsonl(job / "metrics.jsonl", _metrics()[:lines])
    found = sections(write_report(job, tmp_path / "o", now=T0 + 30).read_text())
    assert set(ALL_SECTIONS) <= set(found) and "RUNNING" in found["attempts"]


def _stack_fixture(name: str) -> dict:
    path = Path(__file__).resolve().parents[1] / "fixtures" / "stacks" / f"{name}.json"
    doc = json.loads(path.read_text())
    return {(r["rank"], r["host"]): r["record"] for r in doc["ranks"]}


def test_stack_captures_are_listed_with_groups_and_suspects(tmp_path):
    from launcher import stacks

    job = make_job(tmp_path)
    assert "No stack captures" in sections(write_report(job, tmp_path / "o0").read_text())["stacks"]
    for attempt, name in ((1, "allreduce_stall"), (2, "peers_stall")):
        records = _stack_fixture(name)
        stacks.save(stacks.analyse(records), records, job, attempt, T0 + 10 * attempt)
    (job / "stacks" / "attempt_3-20251124-000000").mkdir()
    found = sections(write_report(job, tmp_path / "o1", now=T0 + 100).read_text())
    text = found["stacks"]
    assert text.index("<b>attempt 1</b>") < text.index("<b>attempt 2</b>")
    assert "rank 1 on host-b: in `load_batch` (allreduce_stall.py:" in text
    assert "1 other rank in AllReduce" in text
    assert "rank 3 on host-b: in `load_batch` (peers.py:" in text
    assert re.search(r"<td>2</td><td>3 \(host-b\)</td><td>suspect</td>", text)
    assert re.search(r"<td>1</td><td>0 \(host-a\), 1 \(host-a\), 2 \(host-b\)</td><td></td>", text)
    assert "<details><summary>group 1: 0 (host-a), 1 (host-a), 2 (host-b), thread MainThread" in text
    assert "wait_for_peers (peers.py:" in text and "Barrier.wait (threading.py:" in text
    assert "attempt_3-20251124-000000" in found["missing"]
    assert "stack capture is unreadable" in found["missing"]
