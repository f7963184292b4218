"""The README's main job: a synthetic VOC/SBD dataset, then r1, r2 and eval of RefineNet on 2 CPU ranks.

    python -m launcher.demo [--workdir DIR] [--images N]

The three stages run as one job, `refinenet-launch --cluster local-cpu --stage r1,r2,eval`
(cluster_configs/local-cpu.yaml: the dynamic backend, the launcher starting MindSpore's scheduler and
one worker per rank). At the
end: mean IoU beside an all-background predictor's, IoU per class, the job's HTML report (loss of
both training stages, evaluation) and prediction overlays of a few validation images.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from launcher import cli
from launcher.workload.refinenet import ALL_STAGES

DATA_DIR = Path("demo_data")
OUTPUT_DIR = Path("demo_output")
RUNS_DIR = Path("runs")
PREDICTIONS_DIR = OUTPUT_DIR / "predictions"
#: Image sizes of the synthetic set; the cluster file's crops and scales are chosen for them.
MIN_SIZE, MAX_SIZE = 48, 72
#: The network of the cluster file's stage overrides, for the predict tool.
DEPTH, EVAL_CROP = 18, 57
PREDICTED_IMAGES = 4
SYNTH_RECORD = DATA_DIR / "demo_synth.json"


def _data_tool(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "refinenet.data", *args], check=True)


def make_dataset(images: int) -> None:
    """`demo_data/` in the real VOC/SBD layouts and its list files; remade when its settings changed."""
    wanted = {"images": images, "min_size": MIN_SIZE, "max_size": MAX_SIZE, "seed": 0, "format": 2}
    if SYNTH_RECORD.is_file() and json.loads(SYNTH_RECORD.read_text()) == wanted \
            and (DATA_DIR / "sbd_train_lst.txt").is_file():
        print(f"demo: reusing {DATA_DIR}/ ({images} synthetic images)", flush=True)
        return
    if DATA_DIR.exists():
        print(f"demo: {DATA_DIR}/ was made with other settings; making it again", flush=True)
        shutil.rmtree(DATA_DIR)
    _data_tool("synth", "--out", str(DATA_DIR), "--images", str(images), "--seed", "0",
               "--min-size", str(MIN_SIZE), "--max-size", str(MAX_SIZE))
    _data_tool("lists", "--data-root", str(DATA_DIR))
    SYNTH_RECORD.write_text(json.dumps(wanted))


def clear_output() -> None:
    """Checkpoints of an earlier demo would be taken for this one's (`latest:` picks the newest)."""
    if OUTPUT_DIR.exists():
        print(f"demo: removing the previous demo's {OUTPUT_DIR}/", flush=True)
        shutil.rmtree(OUTPUT_DIR)


def _job_dirs() -> set:
    return set(RUNS_DIR.iterdir()) if RUNS_DIR.is_dir() else set()


def launch(stages: str) -> Path:
    """`refinenet-launch --cluster local-cpu --stage ALL_STAGES` (one job); the job directory it made."""
    print(f"\n===== refinenet-launch --cluster local-cpu --stage {stages} =====", flush=True)
    before = _job_dirs()
    code = cli.main(["--cluster", "local-cpu", "--stage", stages])
    if code != 0:
        raise SystemExit(f"demo: the job of stages {stages} failed (exit {code})")
    made = sorted(_job_dirs() - before)
    return made[-1] if made else RUNS_DIR


def background_baseline(hist: Sequence[Sequence[int]]) -> float:
    """Mean IoU of predicting background everywhere, over the classes present in the ground truth."""
    total = sum(sum(row) for row in hist)
    present = sum(1 for row in hist if sum(row) > 0)
    return sum(hist[0]) / total / present if total and present else float("nan")


def print_result(result: dict) -> None:
    names = result.get("class_names") or [str(c) for c in range(len(result["per_class_iou"]))]
    ious: List[Optional[float]] = result["per_class_iou"]
    scored = [v for v in ious if v is not None]
    print(f"\ndemo: mean IoU on the synthetic val set ({result['images']} images): {result['mean_iou']:.4f} "
          f"(an all-background predictor: {background_baseline(result['hist']):.4f}); "
          f"{sum(v > 0 for v in scored)} of {len(scored)} classes above zero")
    for name, value in zip(names, ious):
        print(f"  {name:<12} " + ("absent from the val set" if value is None else f"{value:.4f}"))


def predict(count: int) -> List[Path]:
    """refinenet-predict with the r2 checkpoint on the first `count` validation images."""
    lines = (DATA_DIR / "voc_val_lst.txt").read_text().split("\n")
    images = [line.split()[0] for line in lines if line.strip()][:count]
    print(f"\n===== refinenet-predict ({len(images)} val images) =====", flush=True)
    subprocess.run([sys.executable, "-m", "refinenet.predict", *images,
                    "--ckpt", f"latest:{OUTPUT_DIR / 'r2' / 'ckpt'}", "--depth", str(DEPTH),
                    "--crop-size", str(EVAL_CROP), "-o", str(PREDICTIONS_DIR)], check=True)
    return sorted(PREDICTIONS_DIR.glob("*_overlay.jpg"))


def report(job: Path) -> Path:
    print(f"\n===== refinenet-launch report {job.name} =====", flush=True)
    code = cli.main(["report", str(job)])
    if code != 0:
        raise SystemExit(f"demo: report failed (exit {code})")
    return job / "report" / "report.html"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".", help="where demo_data/, demo_output/ and runs/ go")
    parser.add_argument("--images", type=int, default=240, help="synthetic images to generate")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)
    started = time.monotonic()
    make_dataset(args.images)
    clear_output()
    job = launch(",".join(ALL_STAGES))
    result = json.loads((OUTPUT_DIR / "eval" / "eval.json").read_text())
    overlays = predict(PREDICTED_IMAGES)
    page = report(job)
    elapsed = time.monotonic() - started
    print(f"\ndemo: r1 -> r2 -> eval on 2 CPU ranks, prediction and report in {elapsed:.0f} s")
    print_result(result)
    here = Path.cwd()
    print(f"\njob directory ({', '.join(ALL_STAGES)} as one job): {here / job}")
    print(f"checkpoints:        {here / OUTPUT_DIR}/r1/ckpt, {here / OUTPUT_DIR}/r2/ckpt")
    print(f"report:             {here / page}")
    print(f"prediction overlays ({len(overlays)}): {here / PREDICTIONS_DIR}/*_overlay.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
