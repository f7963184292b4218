"""refinenet-eval scores a model trained on the synthetic set well above a trivial predictor."""
import json
import subprocess
import sys

import numpy as np
import pytest

from refinenet.evaluate import main
from tests.harness.data import make_dataset

TRAIN = ["--depth", "18", "--crop-size", "33", "--batch-size", "4", "--epochs", "30", "--save-epochs", "30",
         "--base-lr", "0.01", "--workers", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, child_env):
    root = make_dataset(tmp_path_factory.mktemp("synth"), images=24, seed=0, max_size=96)
    out = root / "run"
    proc = subprocess.run([sys.executable, "-m", "refinenet.train", "--stage", "r1", "--data",
                           str(root / "sbd_train_lst.txt"), "--output-dir", str(out), *TRAIN],
                          env=child_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, out


def _background_only_miou(hist: np.ndarray) -> float:
    """Mean IoU of predicting background everywhere, over the classes that occur."""
    present = (hist.sum(axis=1) > 0).sum()
    return float(hist[0].sum() / hist.sum() / present)


@pytest.mark.slow
def test_trained_model_scores_well_above_a_trivial_predictor(trained, tmp_path):
    root, out = trained
    result_path = tmp_path / "eval" / "result.json"
    proc = subprocess.run([sys.executable, "-m", "refinenet.evaluate",
                           "--data-lst", str(root / "sbd_train_lst.txt"), "--ckpt", f"latest:{out / 'ckpt'}",
                           "--depth", "18", "--crop-size", "65",
                           "--batch-size", "4", "--output", str(result_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "per-class IoU [" in proc.stdout
    printed = float(proc.stdout.split("mean IoU ")[-1].split()[0])
    result = json.loads(result_path.read_text())
    assert result["mean_iou"] == pytest.approx(printed)
    assert len(result["per_class_iou"]) == 21 and result["images"] == 12
    trivial = _background_only_miou(np.array(result["hist"]))
    print(f"mean IoU {printed:.4f}, background-only predictor {trivial:.4f}")
    assert printed > 2.5 * trivial


def test_bad_inputs(tmp_path, capsys):
    lst = tmp_path / "val.txt"
    lst.write_text("")
    ckpt = tmp_path / "refinenet-1_1.ckpt"
    ckpt.write_bytes(b"junk")
    cases = [
        (["--data-lst", str(tmp_path / "none.txt"), "--ckpt", str(ckpt)], "none.txt"),
        (["--data-lst", str(lst), "--ckpt", str(tmp_path / "no.ckpt")], "no.ckpt"),
        (["--data-lst", str(lst), "--ckpt", f"latest:{tmp_path}"], "no complete checkpoint"),
        (["--data-lst", str(lst), "--ckpt", str(ckpt), "--scales", "0"], "--scales"),
        (["--data-lst", str(lst), "--ckpt", str(ckpt)], "no entries"),
    ]
    for argv, needle in cases:
        assert main(argv + ["--output", str(tmp_path / "out" / "r.json")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "out").exists()
