"""A data-parallel MindSpore program that refinenet-launch can run, restart and stop with a checkpoint
(no refinenet model).

    refinenet-launch --cluster local-cpu -- python docs/examples/train_any.py --steps 40

Every rank fits y = 3x + 1 on its own shard of a synthetic dataset; gradients are averaged over the
ranks by MindSpore's data-parallel mode. It follows the whole workload contract
(docs/workload-contract.md):

- resume: the checkpoint saver (local rank 0 of each host; rank 0 alone with REFINENET_STORAGE=shared)
  saves every `--save-every` steps into $REFINENET_CKPT_DIR and marks it complete with
  `refinenet.manifest`; on a restart the launcher sets $REFINENET_RESUME to the newest checkpoint every
  host holds, and the program continues from the step after it;
- save request: SIGUSR1 or the file named by $REFINENET_SAVE_REQUEST asks it to stop; after every step
  the ranks agree (AllReduce of a one-element flag), so all of them stop after the same step, the
  saver writes a checkpoint, and every rank exits 0;
- events: $REFINENET_OUTPUT_DIR/metrics/rank_<r>.jsonl gets a record per step and the phase events
  (process start, imports, cluster, checkpoint loaded, first step, saved on request).
"""
import argparse
import os
import time

from refinenet import manifest, save_request
from refinenet import metrics_log as ml

STEPS_PER_EPOCH = 10


def main():
    request = save_request.install()  # first, before the heavy imports: SIGUSR1 is a request from here on
    log = ml.MetricsLog()
    log.event(ml.PROCESS_START, at=log.started, pid=os.getpid(), main_s=time.time() - log.started)
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--step-s", type=float, default=0.0, help="sleep this long after every step")
    args = parser.parse_args()

    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops
    from mindspore.communication import get_group_size, get_rank, init

    log.event(ml.IMPORTS)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    began = time.time()
    init()
    rank, size = get_rank(), get_group_size()
    output_dir = os.environ.get("REFINENET_OUTPUT_DIR", ".")
    log.open(os.path.join(output_dir, "metrics", f"rank_{rank}.jsonl"))
    log.event(ml.CLUSTER, rank=rank, ranks=size, init_s=time.time() - began)
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    ms.set_seed(1)

    net = nn.Dense(1, 1)
    loss_fn = nn.MSELoss()
    optimizer = nn.SGD(net.trainable_params(), learning_rate=args.lr)
    step_cell = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), optimizer)
    all_reduce = ops.AllReduce()  # sum: MindSpore's CPU AllReduce sums only; any nonzero sum means stop

    def any_rank_stops(stop):
        flag = ms.Tensor(np.array([1.0 if stop else 0.0], dtype=np.float32))
        return float(all_reduce(flag).asnumpy()[0]) > 0

    def position(global_step):
        epoch, step = (global_step - 1) // STEPS_PER_EPOCH + 1, (global_step - 1) % STEPS_PER_EPOCH + 1
        return epoch, step

    start = 0
    resume = os.environ.get("REFINENET_RESUME")
    if resume:
        began = time.time()
        ms.load_param_into_net(net, ms.load_checkpoint(resume))
        epoch, step = manifest.parse_ckpt_name(os.path.basename(resume))
        start = (epoch - 1) * STEPS_PER_EPOCH + step
        log.event(ml.CHECKPOINT_LOADED, checkpoint=resume, load_s=time.time() - began, step=start,
                  epoch=epoch, epoch_step=step)
        print(f"rank {rank}: resumed from {resume} after global step {start}", flush=True)

    ckpt_dir = os.environ.get("REFINENET_CKPT_DIR", "ckpt")
    shared = os.environ.get("REFINENET_STORAGE") == "shared"
    saver = rank == 0 if shared else int(os.environ.get("LOCAL_RANK", "0")) == 0

    def save(global_step):
        epoch, step = position(global_step)
        os.makedirs(ckpt_dir, exist_ok=True)
        path = os.path.join(ckpt_dir, manifest.ckpt_name(epoch, step))
        ms.save_checkpoint(net, path)
        manifest.mark_complete(path, epoch=epoch, step=step, steps_per_epoch=STEPS_PER_EPOCH, rank=rank)
        return path

    for global_step in range(start + 1, args.steps + 1):
        rng = np.random.default_rng(global_step * size + rank)
        x = rng.uniform(-1, 1, (8, 1)).astype(np.float32)
        y = 3 * x + 1
        t0 = time.perf_counter()
        loss = float(step_cell(ms.Tensor(x), ms.Tensor(y)).asnumpy())
        seconds = time.perf_counter() - t0
        epoch, step = position(global_step)
        print(f"epoch: {epoch} step: {step}, loss is {loss:.6f}", flush=True)
        log.step(step=global_step, epoch=epoch, loss=loss, lr=args.lr, seconds=seconds)
        if global_step == start + 1:
            log.event(ml.FIRST_STEP, step_s=seconds, step=global_step, epoch=epoch, epoch_step=step)
        saved = save(global_step) if saver and global_step % args.save_every == 0 else None
        if any_rank_stops(request.pending()):
            began = time.time()
            if saver:
                path = saved or save(global_step)
                print(f"saved on request at epoch {epoch} step {step} (global step {global_step}): {path}",
                      flush=True)
            else:
                path = None
                print(f"stopped on request at epoch {epoch} step {step} (global step {global_step}): "
                      "another rank writes the checkpoint", flush=True)
            log.event(ml.SAVED_ON_REQUEST, checkpoint=path, save_s=time.time() - began, step=global_step,
                      epoch=epoch, epoch_step=step)
            request.consume()
            log.close()
            return
        time.sleep(args.step_s)
    weight = float(net.weight.asnumpy().ravel()[0])
    bias = float(net.bias.asnumpy().ravel()[0])
    print(f"rank {rank}: done, w={weight:.4f} b={bias:.4f}", flush=True)
    log.close()


if __name__ == "__main__":
    main()
