"""MindSpore's dynamic-cluster scheduler: `python -m refinenet.scheduler`.

The scheduler is the rendezvous of the workers (MS_SCHED_HOST:MS_SCHED_PORT). It runs inside
`mindspore.communication.init()` until every worker has finished, then this process exits 0;
it exits non-zero when the cluster fails (a worker lost, formation timed out).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

REQUIRED_ENV = ("MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refinenet.scheduler",
        description="Run MindSpore's dynamic-cluster scheduler until the cluster ends. Reads "
                    "MS_SCHED_HOST, MS_SCHED_PORT, MS_WORKER_NUM (and MS_TOPO_TIMEOUT, MS_NODE_TIMEOUT).")
    parser.add_argument("--device", choices=("cpu", "gpu", "ascend"), default="cpu",
                        help="device target of the workers (default cpu)")
    args = parser.parse_args(argv)
    missing = [n for n in REQUIRED_ENV if not os.environ.get(n)]
    if missing:
        print(f"error: environment variable(s) {', '.join(missing)} not set", file=sys.stderr)
        return 2
    role = os.environ.setdefault("MS_ROLE", "MS_SCHED")
    if role != "MS_SCHED":
        print(f"error: MS_ROLE={role!r}, the scheduler runs as MS_SCHED", file=sys.stderr)
        return 2

    import mindspore as ms
    from mindspore.communication import init

    ms.set_context(device_target={"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}[args.device])
    print(f"scheduler on {os.environ['MS_SCHED_HOST']}:{os.environ['MS_SCHED_PORT']} "
          f"for {os.environ['MS_WORKER_NUM']} workers", flush=True)
    try:
        init()
    except Exception as exc:  # noqa: BLE001  (MindSpore raises RuntimeError/ValueError alike)
        print(f"error: scheduler failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print("scheduler: cluster finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
