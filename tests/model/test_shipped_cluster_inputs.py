"""Every shipped cluster file reads inputs that the data tools really write, where its comments say.

The data tools run as a user would run them (synth, lists, mindrecord) into one folder standing for
the data root; each cluster file's stage inputs (`job.data`, `job.val_data`, a stage's own `data`)
must then name files that exist there.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.resources import cluster_configs_dir
from launcher.spec.load import load_cluster
from launcher.workload.refinenet import ALL_STAGES, RefineNetWorkload

#: The data roots the shipped files use: relative `demo_data/` (made in the working directory, as
#: `python -m launcher.demo` does) and the absolute roots of the server examples.
ROOTS = ("demo_data/", "/data/refinenet/", "/shared/data/refinenet/")
INPUT_OPTION = {"r1": "data", "r2": "data", "eval": "data-lst"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data-root")
    for argv in (["synth", "--out", str(root), "--images", "16", "--seed", "1", "--max-size", "48"],
                 ["lists", "--data-root", str(root)],
                 ["mindrecord", "--data-root", str(root), "--list", str(root / "sbd_train_lst.txt"),
                  "--out", str(root / "mindrecord" / "sbd_voc.mindrecord")]):
        subprocess.run([sys.executable, "-m", "refinenet.data", *argv], check=True, capture_output=True,
                       timeout=300)
    return root


def stage_inputs(path: Path):
    spec = load_cluster(path)
    for stage in ALL_STAGES:
        workload = RefineNetWorkload(stage)
        options = workload.options(spec, spec.hosts[0])
        options.update(spec.job.stage_overrides.get(stage, {}))
        yield stage, options.get(INPUT_OPTION[stage])


@pytest.mark.parametrize("path", sorted(cluster_configs_dir().glob("*.yaml")), ids=lambda p: p.stem)
def test_every_stage_reads_what_the_data_tools_write(path, data_root):
    for stage, value in stage_inputs(path):
        assert isinstance(value, str) and value, f"{path.name}: stage {stage} has no input"
        root = next((r for r in ROOTS if value.startswith(r)), None)
        assert root is not None, f"{path.name}: stage {stage} reads {value}, under no known data root"
        made = data_root / value[len(root):]
        written = sorted(p.name for p in data_root.rglob("*") if p.is_file())
        assert made.is_file(), (f"{path.name}: stage {stage} reads {value}, which the data tools do not "
                                f"write (they wrote: {written[:12]})")
