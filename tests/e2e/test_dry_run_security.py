"""Hostile values in a cluster file never execute: rendered commands and host scripts run through a
real bash (and a real mpirun) with a harmless `echo` workload, and no marker file appears."""
import os
import subprocess
from pathlib import Path

import pytest

from launcher.spec.load import parse_cluster
from launcher.workload import RefineNetWorkload
from tests.harness.specs import plan_of

pytestmark = pytest.mark.e2e


def hostile_spec(tmp_path: Path, backend: str, device: str):
    marker = tmp_path / "MARKER"
    m = str(marker)
    workdir = tmp_path / "w $(touch MARKER);`touch MARKER`'\"x"
    workdir.mkdir()
    host = {"name": "local", "python": "echo", "workdir": str(workdir),
            "env": {"H": f"'; touch {m}; '"} if backend != "mpirun" else {}}
    if device == "cpu":
        host["ranks"] = 2
    else:
        host["devices"] = [0, 1]
    if device == "ascend":
        host["device_ips"] = ["10.1.0.1", "10.1.0.2"]
    data = {
        "name": "evil", "backend": backend, "device": device, "hosts": [host], "master": {"port": 29999},
        "env": {"X": f"'; touch {m}; '", "Y": f"$(touch {m})\ntouch {m}", "Z": f'"; touch {m}; "',
                "W": f"`touch {m}`"},
        "job": {"data": f"; touch {m} #", "output_dir": f"$(touch {m})", "pretrained": f"`touch {m}`",
                "extra_args": [f"; touch {m}", f"$(touch {m})", f"`touch {m}`", "a'b\"c",
                               f"x\ny; touch {m}", "--flag=$HOME", f"&& touch {m}", f"| touch {m}"],
                "stage_overrides": {"r1": {"note": f"$(touch {m})",
                                           "many": [f"; touch {m}", f"`touch {m}`"]}}},
    }
    return parse_cluster(data, "evil.yaml"), marker


def run_plan(plan, tmp_path):
    for f in plan.files:
        path = Path(f.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.content)
    outputs = {}
    for proc in plan.processes:
        res = subprocess.run(["bash", "-c", proc.command], env={**os.environ, **proc.env}, cwd=proc.cwd,
                             capture_output=True, text=True, timeout=120)
        outputs[proc.name] = res
    for host, text in plan.scripts.items():
        script = tmp_path / f"{host}.sh"
        script.write_text(text)
        subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    return outputs


@pytest.mark.parametrize("backend, device", [("dynamic", "cpu"), ("rank_table", "ascend"), ("msrun", "cpu"),
                                             ("mpirun", "cpu")])
def test_hostile_values_never_execute(tmp_path, backend, device):
    spec, marker = hostile_spec(tmp_path, backend, device)
    plan = plan_of(spec, "r1", job_dir=str(tmp_path / "job"), job_id="evil-1")
    outputs = run_plan(plan, tmp_path)
    assert not marker.exists()
    assert list(tmp_path.glob("**/MARKER")) == []
    if backend in ("dynamic", "rank_table"):
        args = RefineNetWorkload("r1").arguments(spec, spec.hosts[0])
        res = outputs["r0"]
        assert res.returncode == 0, res.stderr
        assert res.stdout == " ".join(["-m", "refinenet.train", *args]) + "\n"
        assert "--flag=$HOME" in res.stdout
    if backend == "mpirun":
        res = outputs["mpirun"]
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.count("-m refinenet.train --stage r1") == 2


def test_env_values_reach_the_process_verbatim(tmp_path):
    spec, marker = hostile_spec(tmp_path, "dynamic", "cpu")
    plan = plan_of(spec, "r1", job_dir=str(tmp_path / "job"), job_id="evil-1")
    script = tmp_path / "print_env.sh"
    for name, text in plan.env_files.items():
        script.write_text(text + '\nprintf "%s\\0" "$X" "$Y" "$Z" "$W" "$H"\n')
        out = subprocess.run(["bash", str(script)], capture_output=True, timeout=30).stdout.decode()
        assert out.split("\0")[:5] == [spec.env["X"], spec.env["Y"], spec.env["Z"], spec.env["W"],
                                       spec.hosts[0].env["H"]], name
    assert not marker.exists()
