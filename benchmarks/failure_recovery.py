"""Failure recovery: a rank is SIGKILLed mid-training; how fast is the job torn down and training resumed?

A real 2-rank CPU job (dynamic cluster, tiny RefineNet, synthetic data) runs under
`refinenet-launch`; after its first checkpoint and one more step, rank 1 is killed with SIGKILL.
Every launcher output line is timestamped on arrival. Reported, from the kill:

  detected    the launcher notices (all gone minus its own teardown time, which it reports)
  all gone    every process the job had at the kill has exited (polled in /proc, every host)
  reported    the launcher prints the failed attempt (after teardown and the job record update)
  chosen      the resume point is chosen (after the restart backoff and the hosts' manifest scans)
  restarted   the next attempt's processes start
  first step  the resumed attempt prints its first training step

and the resumed attempt's own start-up (start -> the workload's configuration line: imports,
network, cluster formation, checkpoint restore) and compile + first step, next to the same figures
of the first attempt in the same run (the cold start: baseline of the ratio).

    python benchmarks/failure_recovery.py              # local: scheduler and both ranks here
    python benchmarks/failure_recovery.py --ssh        # rank 1 on a simulated SSH host (real sshd)
    python benchmarks/failure_recovery.py --mode graph --backoff 0
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.cli import launcher_argv  # noqa: E402
from tests.harness.clusters import TINY_R1, cluster_file, local_host, ssh_host  # noqa: E402
from tests.harness.data import TRAIN_LIST, make_dataset  # noqa: E402
from tests.harness.environment import child_env  # noqa: E402
from tests.harness.procs import tagged  # noqa: E402

Lines = List[Tuple[float, str]]


def collect(stream, into: Lines) -> None:
    for line in iter(stream.readline, ""):
        into.append((time.monotonic(), line.rstrip("\n")))


def first(lines: Lines, pattern: str, after: float = 0.0) -> Optional[float]:
    rx = re.compile(pattern)
    return next((t for t, line in list(lines) if t >= after and rx.search(line)), None)


def wait_first(lines: Lines, pattern: str, proc: subprocess.Popen, after: float = 0.0,
               timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = first(lines, pattern, after)
        if t is not None:
            return t
        if proc.poll() is not None:
            raise RuntimeError(f"launcher ended ({proc.returncode}) waiting for {pattern!r}")
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {pattern!r}")


def pid_of(job_dir: Path, name: str) -> int:
    record = json.loads((job_dir / "job.json").read_text())
    return next(p["pid"] for p in record["attempts"][-1]["processes"] if p["name"] == name)


def attempt_marks(out: Lines, number: int) -> Dict[str, float]:
    """Start, configuration line (latest rank) and first step (latest rank) of an attempt."""
    start = first(out, rf"^=== attempt {number} started")
    end = first(out, rf"^=== attempt {number + 1} started") or float("inf")
    marks = {"start": start}
    for key, pattern in (("configured", r"\] stage r1, device"), ("first step", r"\] epoch: \d+ step: 1,")):
        times = [first([x for x in out if x[0] < end], rf"^\[r{r} [^\]]*{pattern}", start) for r in (0, 1)]
        marks[key] = max(t for t in times if t is not None)
    return marks


def scenario(work: Path, train_list: Path, hosts: List[dict], mode: str, backoff: float) -> Dict[str, float]:
    job_id = f"recovery-{os.getpid()}-{int(time.time())}"
    r1 = {**TINY_R1, "mode": mode}
    path = cluster_file(work / f"{job_id}.yaml", hosts, name="recovery",
                        job={"data": str(train_list), "output_dir": f"out-{job_id}",
                             "stage_overrides": {"r1": r1}},
                        restart={"max_restarts": 1, "backoff_s": backoff, "backoff_max_s": max(backoff, 1)},
                        health={"interval_s": 10})
    runs = work / "runs"
    launched = time.monotonic()
    argv = launcher_argv("--cluster", path, "--stage", "r1", "--runs-dir", runs, "--job-id", job_id)
    proc = subprocess.Popen(argv, cwd=str(work), env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out: Lines = []
    err: Lines = []
    for stream, into in ((proc.stdout, out), (proc.stderr, err)):
        threading.Thread(target=collect, args=(stream, into), daemon=True).start()
    try:
        saved = wait_first(out, r"^\[r0 [^\]]*\] saved checkpoint .*refinenet-1_", proc)
        wait_first(out, r"^\[r1 [^\]]*\] epoch: 2 step: 1,", proc, after=saved)
        before = set(tagged(job_id))
        victim = pid_of(runs / job_id, "r1")
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while before & set(tagged(job_id)):
            time.sleep(0.005)
        gone = time.monotonic()
        reported = wait_first(err, r"attempt 1 failed", proc, after=killed)
        chosen = wait_first(err, r"resuming from", proc, after=killed)
        wait_first(out, r"^\[r[01] [^\]]*\] epoch: \d+ step: 1,", proc,
                   after=wait_first(out, r"^=== attempt 2 started", proc))
        teardown = float(re.search(r"stopped ([0-9.]+) s after", next(
            line for _, line in err if "every process stopped" in line)).group(1))
    except RuntimeError:
        time.sleep(0.5)
        sys.stderr.write("\n".join(line for _, line in err[-40:]) + "\n")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    a1, a2 = attempt_marks(out, 1), attempt_marks(out, 2)
    return {
        "kill -> detected (all gone - teardown)": gone - killed - teardown,
        "launcher teardown (detected -> all stopped)": teardown,
        "kill -> every process of the job gone": gone - killed,
        "kill -> failure reported": reported - killed,
        "kill -> resume point chosen (backoff, manifest scans)": chosen - killed,
        "kill -> next attempt started": a2["start"] - killed,
        "kill -> first step of the resumed attempt": a2["first step"] - killed,
        "resumed attempt: start-up (start -> configured)": a2["configured"] - a2["start"],
        "resumed attempt: compile + first step": a2["first step"] - a2["configured"],
        "first attempt: launch -> attempt start (host checks, preflight)": a1["start"] - launched,
        "first attempt: start-up (start -> configured)": a1["configured"] - a1["start"],
        "first attempt: compile + first step": a1["first step"] - a1["configured"],
        "first attempt: start -> first step (baseline)": a1["first step"] - a1["start"],
        "restart backoff": backoff,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ssh", action="store_true",
                   help="rank 1 on a simulated SSH host (real sshd on 127.0.0.2)")
    p.add_argument("--mode", default="pynative", choices=("graph", "pynative"),
                   help="workload execution mode")
    p.add_argument("--backoff", type=float, default=1.0, help="restart.backoff_s (default 1)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="failure-recovery-") as tmp:
        work = Path(tmp)
        train_list = make_dataset(work / "data") / TRAIN_LIST
        local = work / "local"
        if args.ssh:
            from tests.harness.hosts import ClientKey, SshServer

            key = ClientKey.create(work / "client")
            with SshServer(work / "host-a", "host-a", "127.0.0.2", key) as server:
                hosts = [local_host(local, python=sys.executable), ssh_host(server.host())]
                figures = scenario(work, train_list, hosts, args.mode, args.backoff)
        else:
            hosts = [local_host(local, ranks=2, python=sys.executable)]
            figures = scenario(work, train_list, hosts, args.mode, args.backoff)
    where = "rank 1 on an SSH host" if args.ssh else "local"
    print(f"failure recovery ({where}, 2 CPU ranks, depth 18, crop 33, mode {args.mode}, "
          f"backoff {args.backoff:g} s):")
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"  {name:<{width}}  {value:7.2f} s")
    base = figures["first attempt: start -> first step (baseline)"]
    resumed = figures["kill -> first step of the resumed attempt"]
    print(f"  {'recovery / cold start (kill -> first step vs. start -> first step)':<{width}}  "
          f"{resumed / base:7.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
