"""The environment is real: two MindSpore CPU processes form a cluster and AllReduce."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.procs import wait_all

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).parent / "scripts" / "allreduce.py"


def _results(out_dir: Path) -> list:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


def _assert_reduced(out_dir: Path) -> None:
    for r, res in enumerate(_results(out_dir)):
        assert res == {"rank": r, "size": 2, "values": [3.0, 3.0, 3.0, 3.0]}


def test_allreduce_through_msrun(tmp_path, port, child_env):
    msrun = Path(sys.executable).with_name("msrun")
    cmd = [str(msrun), "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", f"--log_dir={tmp_path / 'msrun_log'}", "--join=True",
           "--cluster_time_out=60", str(SCRIPT), str(tmp_path)]
    proc = subprocess.run(cmd, env=child_env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "msrun_log").glob("*.log")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    _assert_reduced(tmp_path)


def test_allreduce_with_dynamic_cluster_env(tmp_path, port, child_env):
    base = dict(child_env, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(port), MS_WORKER_NUM="2")
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path)],
                              env=dict(base, MS_ROLE="MS_SCHED"), cwd=tmp_path,
                              stdout=open(tmp_path / "sched.log", "w"), stderr=subprocess.STDOUT)]
    for r in range(2):
        worker_env = dict(base, MS_ROLE="MS_WORKER", MS_NODE_ID=str(r))
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path)], env=worker_env,
                                      cwd=tmp_path, stdout=open(tmp_path / f"worker{r}.log", "w"),
                                      stderr=subprocess.STDOUT))
    codes = wait_all(procs, 240)
    logs = "".join(f.read_text() for f in sorted(tmp_path.glob("*.log")))
    assert codes == [0, 0, 0], logs
    _assert_reduced(tmp_path)
