"""A 2-rank MindSpore CPU job that hangs in its own code: the real-workload case of the hang check.

    allreduce_hang.py --steps N --stuck-rank R --stuck-at K [--step-s S] [--late-s L]

Every rank forms the cluster (`init()`, the launcher's dynamic backend started the scheduler) and loops
over AllReduce steps, printing a progress line per step (`epoch: 1 step: N, loss is X`). Before step K
rank R enters `load_batch`, which never returns (its data never comes), while the other ranks wait in
that step's AllReduce (for as long as MS_NODE_TIMEOUT allows MindSpore's CPU collectives). Nothing is
printed before the first step: MindSpore's import and the cluster's forming are silent, as in a real
job's start-up; with `--late-s`, rank R joins that long late (a slow host), and the others wait in
`init()` meanwhile.
"""
import argparse
import os
import time


def load_batch(rank: int, step: int, stuck_rank: int, stuck_at: int) -> float:
    """The batch of `step`; rank `stuck_rank` waits for its step `stuck_at` for ever."""
    while rank == stuck_rank and step == stuck_at:
        time.sleep(3600)
    return float(rank + step)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--stuck-rank", type=int, default=1)
    parser.add_argument("--stuck-at", type=int, default=4)
    parser.add_argument("--step-s", type=float, default=0.2)
    parser.add_argument("--late-s", type=float, default=0.0)
    args = parser.parse_args()
    if os.environ.get("MS_NODE_ID") == str(args.stuck_rank):
        time.sleep(args.late_s)

    import mindspore as ms
    import numpy as np
    from mindspore import ops
    from mindspore.communication import get_group_size, get_rank, init

    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    init()
    rank, size = get_rank(), get_group_size()
    all_reduce = ops.AllReduce()
    for step in range(1, args.steps + 1):
        value = load_batch(rank, step, args.stuck_rank, args.stuck_at)
        total = float(all_reduce(ms.Tensor(np.array([value], np.float32))).asnumpy()[0])
        print(f"epoch: 1 step: {step}, loss is {total / size:.4f}", flush=True)
        time.sleep(args.step_s)
    print(f"rank {rank}: done", flush=True)


if __name__ == "__main__":
    main()
