"""The README's main job: a synthetic VOC/SBD dataset, then r1, r2 and eval of RefineNet on 2 CPU ranks.

    python -m launcher.demo [--workdir DIR] [--images N]

Everything runs through `refinenet-launch --cluster local-cpu` (cluster_configs/local-cpu.yaml:
the dynamic backend, the launcher starting MindSpore's scheduler and one worker per rank).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from launcher import cli

STAGES = ("r1", "r2", "eval")


def _data_tool(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "refinenet.data", *args], check=True)


def make_dataset(images: int) -> None:
    """`demo_data/` in the real VOC/SBD layouts, and the list files the cluster file points at."""
    if not Path("demo_data/sbd_train_lst.txt").exists():
        _data_tool("synth", "--out", "demo_data", "--images", str(images))
        _data_tool("lists", "--data-root", "demo_data")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".", help="where demo_data/, demo_output/ and runs/ go")
    parser.add_argument("--images", type=int, default=60, help="synthetic images to generate")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)
    started = time.monotonic()
    make_dataset(args.images)
    for stage in STAGES:
        print(f"\n===== refinenet-launch --cluster local-cpu --stage {stage} =====", flush=True)
        code = cli.main(["--cluster", "local-cpu", "--stage", stage])
        if code != 0:
            print(f"demo: stage {stage} failed (exit {code})", file=sys.stderr)
            return code
    result = json.loads(Path("demo_output/eval/eval.json").read_text())
    print(f"\ndemo: r1 -> r2 -> eval on 2 CPU ranks in {time.monotonic() - started:.0f} s; "
          f"mean IoU on the synthetic val set: {result['mean_iou']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
