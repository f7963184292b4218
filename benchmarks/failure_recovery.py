"""Failure recovery, cold vs warm restart: the phases a failure costs, as the launcher records them.

One run is a real 2-rank CPU r1 job under `refinenet-launch` (dynamic cluster, depth-18 RefineNet, crop
33, batch 1, 3 steps per epoch on a synthetic set, graph mode by default), saving a checkpoint every
epoch and keeping them (`keep-max`), so that `--checkpoints` (5) are on each host when rank 1 is
SIGKILLed one step after the last of them. The launcher records what that failure cost in `job.json`
(`attempts[0].recovery`, launcher/recovery.py): detect, teardown, backoff, resume point (scan, verify the
chosen checkpoint), start, configure (imports, cluster, checkpoint load), first step; its own part
(`launcher_s`: detect..start less the backoff) and the steps computed again.

The run is made twice in one invocation on the same data: `restart.warm_start: false` (the resumed ranks
start cold) and `true` (from interpreters that imported the workload during the teardown and backoff);
the compile cache is on in both (graph mode). Printed side by side, with each job's first attempt (a
cold start filling the cache) start -> first step, the ratio of the resumed attempt's, and checks of the
record made without it: the processes of the failed attempt polled in /proc until all are gone, and the
first resumed step read from the ranks' metrics files, both from the moment of the kill.

    python benchmarks/failure_recovery.py              # local: scheduler and both ranks here
    python benchmarks/failure_recovery.py --ssh        # rank 1 on a simulated SSH host (real sshd)
    python benchmarks/failure_recovery.py --rounds 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.benchrun import run_in_folder  # noqa: E402
from tests.harness.cli import launcher_argv  # noqa: E402
from tests.harness.clusters import TINY_R1, cluster_file, local_host, ssh_host  # noqa: E402
from tests.harness.data import TRAIN_LIST, make_dataset  # noqa: E402
from tests.harness.environment import child_env  # noqa: E402
from tests.harness.procs import tagged  # noqa: E402

Lines = List[Tuple[float, str]]
PHASES = ("detect", "teardown", "backoff", "resume point", "start", "configure", "first step")
#: The workload's own durations in the record, as the table names them: `imports` is the process's start
#: to `main()`, which for a warm start counts from the warm interpreter's own start (its wait included).
#: `warm imports` is the part of the warm interpreters' imports that the start still waited for (not in
#: the launcher part).
DETAILS = {"imports": "process start -> main()", "cluster": "cluster formation",
           "checkpoint load": "checkpoint load", "warm imports": "warm imports the start waited for"}
#: Steps per epoch of the tiny job: 6 training images, batch 1 on each of 2 ranks.
STEPS_PER_EPOCH = 3


def collect(stream, into: Lines) -> None:
    for line in iter(stream.readline, ""):
        into.append((time.time(), line.rstrip("\n")))


def wait_for(lines: Lines, pattern: str, proc: subprocess.Popen, after: float = 0.0,
             timeout: float = 1200) -> float:
    """The arrival time of the first line matching `pattern` that came at or after `after`."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = next((t for t, line in list(lines) if t >= after and rx.search(line)), None)
        if hit is not None:
            return hit
        if proc.poll() is not None:
            raise RuntimeError(f"launcher ended ({proc.returncode}) waiting for {pattern!r}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {pattern!r}")


@dataclass
class RunResult:
    """One job: its recovery record, its first attempt's cold start and what was measured from outside."""

    warm_start: bool
    job_id: str
    state: str
    recovery: Dict[str, Any]
    cold_start_s: float
    killed_at: float
    gone_s: float
    resumed_first_step_at: float
    load: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def phases(self) -> Dict[str, float]:
        return {name: float(self.recovery["phases"][name]) for name in PHASES}

    @property
    def resumed_start_s(self) -> float:
        """The resumed attempt's processes started -> first step on every rank (configure + first step)."""
        return self.phases["configure"] + self.phases["first step"]

    def figures(self) -> Dict[str, Any]:
        rec = self.recovery
        out: Dict[str, Any] = dict(self.phases)
        out.update({
            "total": rec["total_s"],
            "launcher part": rec["launcher_s"],
            "steps computed again": rec.get("steps_rolled_back"),
            "start recorded": rec.get("start"),
            **{f"workload: {label}": (rec.get("details") or {}).get(k, 0.0) for k, label in DETAILS.items()},
            "first attempt (cold): start -> first step": self.cold_start_s,
            "resumed attempt: start -> first step": self.resumed_start_s,
            "resumed / cold start": self.resumed_start_s / self.cold_start_s,
            "failure -> first resumed step / cold start": rec["total_s"] / self.cold_start_s,
            "check: kill -> every process gone (/proc)": self.gone_s,
            "check: detect + teardown (record)": self.phases["detect"] + self.phases["teardown"],
            "check: kill -> first resumed step (metrics files)": self.resumed_first_step_at - self.killed_at,
            "check: sum of the phases - total": sum(self.phases.values()) - rec["total_s"],
            "check: kill -> failure seen by the agent": rec["failed_at"] - self.killed_at,
        })
        return out


def metrics_attempts(path: Path) -> List[Dict[str, float]]:
    """A rank's metrics file split by process (one `process_start` event each): event -> time, in order."""
    attempts: List[Dict[str, float]] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        name = record.get("event")
        if name == "process_start":
            attempts.append({})
        if name and attempts:
            attempts[-1].setdefault(name, float(record["time"]))
    return attempts


def first_steps(root: Path, output_dir: str, ranks: int) -> List[float]:
    """Per attempt (in order), when the last rank's first step was done, from the ranks' metrics files."""
    files = sorted(root.rglob(f"{output_dir}/**/metrics/rank_*.jsonl"))
    if len(files) != ranks:
        raise RuntimeError(f"expected {ranks} metrics files under {root}/**/{output_dir}, found {files}")
    per_rank = [metrics_attempts(f) for f in files]
    count = min(len(a) for a in per_rank)
    return [max(a[i]["first_step"] for a in per_rank) for i in range(count)]


def one_run(work: Path, train_list: Path, hosts: List[dict], *, mode: str, warm_start: bool,
            backoff: float, checkpoints: int) -> RunResult:
    """Run the job, kill rank 1 one step after checkpoint `checkpoints`, read what the launcher recorded."""
    job_id = f"recovery-{'warm' if warm_start else 'cold'}-{os.getpid()}-{int(time.time())}"
    output_dir = f"out-{job_id}"
    r1 = {**TINY_R1, "mode": mode, "epochs": checkpoints + 1, "save-epochs": 1, "keep-max": checkpoints}
    path = cluster_file(work / f"{job_id}.yaml", hosts, name="recovery",
                        job={"data": str(train_list), "output_dir": output_dir,
                             "stage_overrides": {"r1": r1}},
                        restart={"max_restarts": 1, "backoff_s": backoff, "backoff_max_s": max(backoff, 1),
                                 "warm_start": warm_start},
                        health={"interval_s": 10})
    runs = work / "runs"
    argv = launcher_argv("--cluster", path, "--stage", "r1", "--runs-dir", runs, "--job-id", job_id)
    proc = subprocess.Popen(argv, cwd=str(work), env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: Lines = []
    err: Lines = []
    for stream, into in ((proc.stdout, out), (proc.stderr, err)):
        threading.Thread(target=collect, args=(stream, into), daemon=True).start()
    job_json = runs / job_id / "job.json"
    try:
        saved = wait_for(out, rf"^\[r0 [^\]]*\] saved checkpoint .*refinenet-{checkpoints}_", proc)
        wait_for(out, rf"^\[r1 [^\]]*\] epoch: {checkpoints + 1} step: 1,", proc, after=saved)
        record = json.loads(job_json.read_text())
        victim = next(p["pid"] for p in record["attempts"][-1]["processes"] if p["name"] == "r1")
        before = set(tagged(job_id))
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        while before & set(tagged(job_id)):
            time.sleep(0.005)
        gone = time.time()
        load = os.getloadavg()
        code = proc.wait(1200)
    except (RuntimeError, subprocess.TimeoutExpired):
        time.sleep(0.5)
        sys.stderr.write("\n".join(line for _, line in err[-40:]) + "\n")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
    record = json.loads(job_json.read_text())
    attempts = record["attempts"]
    recovery = attempts[0].get("recovery") or {}
    if code != 0 or len(attempts) != 2 or recovery.get("total_s") is None:
        sys.stderr.write("\n".join(line for _, line in err[-40:]) + "\n")
        raise RuntimeError(f"{job_id}: exit {code}, {len(attempts)} attempt(s), recovery {recovery}")
    firsts = first_steps(work, output_dir, 2)
    started = max(p["started"] for p in attempts[0]["processes"])
    result = RunResult(warm_start=warm_start, job_id=job_id, state=record["state"], recovery=recovery,
                       cold_start_s=firsts[0] - started, killed_at=killed, gone_s=gone - killed,
                       resumed_first_step_at=firsts[1], load=load)
    for folder in work.rglob(f"{output_dir}/**/ckpt"):
        shutil.rmtree(folder, ignore_errors=True)  # 5 checkpoints of ~600 MB per host
    return result


def median_figures(results: Sequence[RunResult], keys: Sequence[str]) -> Dict[str, Any]:
    """Per figure, the median over the runs that have it."""
    rows = [r.figures() for r in results]
    out: Dict[str, Any] = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        numbers = [v for v in values if isinstance(v, (int, float))]
        out[key] = statistics.median(numbers) if numbers else next((v for v in values if v), None)
    return out


def show(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if key.startswith("steps"):
        return f"{value:g}"
    if "/ cold" in key:
        return f"{value:.2f}x"
    return f"{value:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ssh", action="store_true",
                   help="rank 1 on a simulated SSH host (real sshd on 127.0.0.2)")
    p.add_argument("--mode", default="graph", choices=("graph", "pynative"), help="workload execution mode")
    p.add_argument("--backoff", type=float, default=1.0, help="restart.backoff_s (default 1)")
    p.add_argument("--checkpoints", type=int, default=5,
                   help="checkpoints on each host at the kill (default 5)")
    p.add_argument("--rounds", type=int, default=1, help="cold and warm runs each (default 1; medians shown)")
    p.add_argument("--json", type=Path, help="write every run's figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (job folders, logs)")
    args = p.parse_args()
    results: Dict[bool, List[RunResult]] = {False: [], True: []}

    def measure(work: Path) -> None:
        train_list = make_dataset(work / "data") / TRAIN_LIST

        def rounds(hosts: List[dict]) -> None:
            for i in range(args.rounds):
                order = (False, True) if i % 2 == 0 else (True, False)
                for warm in order:
                    result = one_run(work, train_list, hosts, mode=args.mode, warm_start=warm,
                                     backoff=args.backoff, checkpoints=args.checkpoints)
                    results[warm].append(result)
                    print(f"  round {i + 1}, {'warm' if warm else 'cold'}: {result.job_id} {result.state}, "
                          f"recovery {result.recovery['total_s']:.1f} s, launcher part "
                          f"{result.recovery['launcher_s']:.2f} s (load {result.load[0]:.1f})", flush=True)

        local = work / "local"
        if args.ssh:
            from tests.harness.hosts import ClientKey, SshServer

            key = ClientKey.create(work / "client")
            with SshServer(work / "host-a", "host-a", "127.0.0.2", key) as server:
                rounds([local_host(local, python=sys.executable), ssh_host(server.host())])
        else:
            rounds([local_host(local, ranks=2, python=sys.executable)])

    interrupted = run_in_folder("failure-recovery-", args.keep, lambda root: root, measure, lambda root: None)
    if interrupted is not None:
        return interrupted
    where = "rank 1 on an SSH host" if args.ssh else "local"
    loads = [r.load[0] for rs in results.values() for r in rs]
    print(f"\nfailure recovery ({where}, 2 CPU ranks, depth 18, crop 33, {STEPS_PER_EPOCH} steps per epoch, "
          f"mode {args.mode}, {args.checkpoints} checkpoints kept, backoff {args.backoff:g} s, "
          f"{args.rounds} round(s), load average {min(loads):.1f}-{max(loads):.1f}); seconds:")
    keys = list(dict.fromkeys(k for rs in results.values() for r in rs for k in r.figures()))
    cold, warm = median_figures(results[False], keys), median_figures(results[True], keys)
    width = max(map(len, cold))
    print(f"  {'':<{width}}  {'cold restart':>13}  {'warm restart':>13}")
    for key in cold:
        print(f"  {key:<{width}}  {show(cold[key], key):>13}  {show(warm[key], key):>13}")
    part, ratio = "launcher part", "resumed / cold start"
    print(f"  goals: launcher part <= 2 s ({show(cold[part], '')} cold, {show(warm[part], '')} warm); "
          f"resumed start -> first step <= 0.6x of the cold start "
          f"({show(cold[ratio], ratio)} cold, {show(warm[ratio], ratio)} warm)")
    if args.json:
        args.json.write_text(json.dumps({("warm" if w else "cold"): [
            {"job_id": r.job_id, "load": r.load, "recovery": r.recovery, **r.figures()} for r in rs]
            for w, rs in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
