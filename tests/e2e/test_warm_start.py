"""A restart from warm interpreters with the compile cache trains exactly as a cold restart does."""
import re

import numpy as np
import pytest

from refinenet import ckpt_reader
from tests.conftest import free_port
from tests.e2e import warm_job

pytestmark = pytest.mark.e2e

TRAIN = ("--stage", "r1", "--depth", "18", "--num-classes", "5", "--crop-size", "33", "--batch-size", "1",
         "--epochs", "2", "--save-epochs", "1", "--base-lr", "0.002", "--workers", "1")


def _train_args(train_list, out, *extra):
    return (*TRAIN, "--data", str(train_list), "--output-dir", str(out), *extra)


def _params(path):
    return ckpt_reader.read_checkpoint(path)


@pytest.mark.slow
def test_warm_restart_with_compile_cache_gives_the_checkpoints_of_a_cold_restart(tmp_path, train_list):
    env = warm_job.job_env({"GLOG_v": "2"})  # MindSpore's warnings say whether its cache was used
    cache = {"REFINENET_COMPILE_CACHE": str(tmp_path / "compile-cache")}
    first = warm_job.attempt_processes(free_port(), 2, _train_args(train_list, tmp_path / "first"), env,
                                       cache)
    # The next attempt's interpreters get ready while the first attempt runs, as a host agent keeps them.
    slots = warm_job.warm_slots(first, env, tmp_path)
    try:
        warm_job.wait_all(warm_job.start_cold(first, tmp_path), timeout=600)
        resume = tmp_path / "first" / "ckpt" / "refinenet-1_3.ckpt"
        assert resume.is_file()
        cold = warm_job.attempt_processes(free_port(), 2, _train_args(train_list, tmp_path / "cold",
                                                                         "--resume", str(resume)), env)
        warm_job.wait_all(warm_job.start_cold(cold, tmp_path), timeout=600)
        ready = [slot.wait_ready() for slot in slots]
        assert all(r["modules"] for r in ready)
        warm = warm_job.attempt_processes(free_port(), 2, _train_args(train_list, tmp_path / "warm",
                                                                         "--resume", str(resume)), env, cache)
        running = warm_job.start_warm(slots, warm, tmp_path)
        warm_job.wait_all(running, timeout=600)
    finally:
        for slot in slots:
            if slot.zygote.popen.poll() is None:
                slot.zygote.popen.kill()
                slot.zygote.popen.wait()
    # Each warm rank found the graphs the cold first attempt compiled (the train step and the state
    # check) and MindSpore loaded them: its entry-script hash matched the cold processes'.
    for proc in running[1:]:
        found = re.search(r"compile cache: \S+ \((\d+) graphs of rank (\d) cached\)", proc.text())
        assert found and int(found.group(1)) >= 1, proc.text()[-2000:]
        assert "Use the compilation cache" in proc.text()
        assert "dependency files hash failed" not in proc.text()
        assert f"resume point {resume}" in proc.text()
    finals = [tmp_path / run / "ckpt" / "refinenet-2_3.ckpt" for run in ("first", "cold", "warm")]
    params = [_params(path) for path in finals]
    assert params[0].keys() == params[1].keys() == params[2].keys()
    for name, value in params[0].items():
        for other in params[1:]:
            assert other[name].dtype == value.dtype and other[name].tobytes() == value.tobytes(), name
    start = _params(resume)
    assert any(not np.array_equal(start[n], params[2][n]) for n in start if n.endswith("weight"))
