"""A data-parallel MindSpore program that refinenet-launch can run and restart (no refinenet model).

    refinenet-launch --cluster local-cpu -- python docs/examples/train_any.py --steps 40

Every rank fits y = 3x + 1 on its own shard of a synthetic dataset; gradients are averaged over the
ranks by MindSpore's data-parallel mode. Local rank 0 of each host saves a checkpoint every
`--save-every` steps into $REFINENET_CKPT_DIR and marks it complete with `refinenet.manifest`. When
the launcher restarts the job it sets $REFINENET_RESUME to the newest checkpoint every host holds;
the program then loads it and continues from the step after it.
"""
import argparse
import os
import time

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.communication import get_group_size, get_rank, init

from refinenet import manifest

STEPS_PER_EPOCH = 10


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--step-s", type=float, default=0.0, help="sleep this long after every step")
    args = parser.parse_args()

    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    init()
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    ms.set_seed(1)

    net = nn.Dense(1, 1)
    loss_fn = nn.MSELoss()
    optimizer = nn.SGD(net.trainable_params(), learning_rate=args.lr)
    step_cell = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), optimizer)

    start = 0
    resume = os.environ.get("REFINENET_RESUME")
    if resume:
        ms.load_param_into_net(net, ms.load_checkpoint(resume))
        epoch, step = manifest.parse_ckpt_name(os.path.basename(resume))
        start = (epoch - 1) * STEPS_PER_EPOCH + step
        print(f"rank {rank}: resumed from {resume} after global step {start}", flush=True)

    ckpt_dir = os.environ.get("REFINENET_CKPT_DIR", "ckpt")
    saver = int(os.environ.get("LOCAL_RANK", "0")) == 0
    for global_step in range(start + 1, args.steps + 1):
        rng = np.random.default_rng(global_step * size + rank)
        x = rng.uniform(-1, 1, (8, 1)).astype(np.float32)
        y = 3 * x + 1
        loss = step_cell(ms.Tensor(x), ms.Tensor(y))
        epoch, step = (global_step - 1) // STEPS_PER_EPOCH + 1, (global_step - 1) % STEPS_PER_EPOCH + 1
        print(f"epoch: {epoch} step: {step}, loss is {float(loss.asnumpy()):.6f}", flush=True)
        if saver and global_step % args.save_every == 0:
            os.makedirs(ckpt_dir, exist_ok=True)
            path = os.path.join(ckpt_dir, manifest.ckpt_name(epoch, step))
            ms.save_checkpoint(net, path)
            manifest.mark_complete(path, epoch=epoch, step=step, steps_per_epoch=STEPS_PER_EPOCH, rank=rank)
        time.sleep(args.step_s)
    weight = float(net.weight.asnumpy().ravel()[0])
    bias = float(net.bias.asnumpy().ravel()[0])
    print(f"rank {rank}: done, w={weight:.4f} b={bias:.4f}", flush=True)


if __name__ == "__main__":
    main()
