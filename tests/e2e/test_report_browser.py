"""`report` and straggler detection on a real 2-rank job of the stand-in workload, seen in Chromium.

The stand-in (tests/harness, run through each host's `python`) prints the workload's progress lines
and writes its metrics file with a learning rate; rank 1 takes three times longer per step, rank 0
fails once (a marker file makes the restarted attempt succeed).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.harness.cli import cli
from tests.harness.clusters import two_rank_cluster
from tests.harness.environment import REPO
from tests.harness.launched import LaunchedJob
from tests.harness.procs import tagged
from tests.harness.standin import steps_env

pytestmark = pytest.mark.e2e

ARTIFACTS_ENV = "REFINENET_TEST_ARTIFACTS"
FIGURE_SECTIONS = ("loss", "step-time", "throughput", "attempts", "health", "eval", "predictions")


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, standin_python, child_env):
    """A job whose rank 0 fails once at step 3; attempt 2 runs 14 steps with rank 1 three times slower."""
    root = tmp_path_factory.mktemp("report-job")
    runs = root / "runs"
    env = steps_env(0.1, 14, slow_rank=1, slow_factor=3.0, fail_rank=0, fail_at=3, fail_code=3,
                    fail_once=root / "failed-once")
    cluster = two_rank_cluster(root / "c", standin_python, env, restart={"max_restarts": 1})
    job = LaunchedJob(cluster, runs, "seen", child_env, "--set", "batch-size=4")
    try:
        assert job.wait(120) == 0, job.stderr
    finally:
        job.kill()
    assert tagged("seen") == []
    return job, root, runs


def test_the_slow_rank_is_flagged_and_the_others_are_not(finished_job, child_env):
    job, _, runs = finished_job
    log = (job.job_dir / "logs" / "job.log").read_text()
    warnings = [line for line in log.splitlines() if "straggler:" in line]
    assert len(warnings) == 1 and warnings[0].startswith("[launcher] straggler: rank 1 on local step time")
    assert re.search(r"= (\d+\.\d)x the median of the others", warnings[0])
    ratio = float(re.search(r"= (\d+\.\d)x", warnings[0]).group(1))
    assert 2.0 <= ratio <= 4.5
    records = [json.loads(line) for line in (job.job_dir / "stragglers.jsonl").read_text().splitlines()]
    assert [(r["rank"], r["attempt"]) for r in records] == [(1, 2)]
    assert [(s["rank"], s["attempt"]) for s in job.record()["stragglers"]] == [(1, 2)]
    status = cli("status", "seen", "--runs-dir", runs, env=child_env)
    assert status.returncode == 0, status.stderr
    lines = [line for line in status.stdout.splitlines() if "the median of the others" in line]
    assert len(lines) == 1 and "rank 1 on local" in lines[0]
    assert "Event base dispatch success!" in log
    rank_log = (job.job_dir / "logs" / "rank_0.log").read_text()
    assert "Event base dispatch success!" in rank_log


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed (make setup installs it)"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={user_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_the_report_renders_in_a_browser_with_every_section(finished_job, child_env, tmp_path):
    job, root, runs = finished_job
    (job.job_dir / "eval.json").write_text(json.dumps(
        {"mean_iou": 0.42, "per_class_iou": [0.9, 0.3, None, 0.06], "images": 4,
         "class_names": ["background", "aeroplane", "bicycle", "bird"]}))
    predictions = root / "c" / "local" / "out" / "predict"
    predictions.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 160, 60)).save(buf, "JPEG")
    (predictions / "2007_000129_overlay.jpg").write_bytes(buf.getvalue())
    out = tmp_path / "report"
    made = cli("report", "seen", "--runs-dir", runs, "-o", out, env=child_env)
    assert made.returncode == 0, made.stderr
    html_path = Path(made.stdout.strip())
    assert html_path == out / "report.html"
    assert sorted(p.name for p in out.glob("*.png")) == [  # recovery_1: what attempt 1's failure cost
        "attempts.png", "eval_iou.png", "health.png", "loss.png", "recovery_1.png", "step_time.png",
        "throughput.png"]

    dom = _chromium("--dump-dom", html_path.as_uri(), user_dir=tmp_path / "chrome-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = dict(re.findall(r'<section id="([a-z-]+)">(.*?)</section>', dom.stdout, re.S))
    assert set(FIGURE_SECTIONS) | {"stragglers", "missing"} <= set(found)
    for name in FIGURE_SECTIONS:
        images = re.findall(r'<img [^>]*src="data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)"', found[name])
        assert images and all(len(i) > 500 for i in images), name
    assert "learning rate" in found["loss"] and "median images/s" in found["throughput"]
    assert "batch size is not set" not in found["throughput"]
    assert "FAILED" in found["attempts"] and "rank 0 on local" in found["attempts"]
    assert "exit code 3" in found["attempts"] and "rank 0 fails once" in found["attempts"]
    # the attempts' timeline, and attempt 1's failure phase by phase (a figure and a table)
    assert len(re.findall(r"<img ", found["attempts"])) == 2
    assert all(f"<td>{phase}</td>" in found["attempts"] for phase in ("detect", "teardown", "first step"))
    assert "local" in found["stragglers"] and "mean IoU 0.42" in found["eval"]

    shot = tmp_path / "report.png"
    taken = _chromium(f"--screenshot={shot}", "--window-size=1280,4000", html_path.as_uri(),
                      user_dir=tmp_path / "chrome-shot")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    image = Image.open(shot)
    assert image.size == (1280, 4000)
    assert sum(1 for n in image.convert("L").histogram() if n) > 20
    artifacts = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "runs" / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "report_browser.png")
    shutil.copy(html_path, artifacts / "report_browser.html")
