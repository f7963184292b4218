"""A stand-in for the training workload: prints what a RefineNet rank prints, at a chosen pace, no MindSpore.

Run by the `python` wrapper of tests/harness/standin.py as `standin_workload.py ROLE ARGS...`, ROLE one
of `rank` (for `-m refinenet.train`), `scheduler` (`-m refinenet.scheduler`: waits until killed) or
`eval` (`-m refinenet.evaluate`: prints a mean IoU). It also runs as any program after `--`
(`standin_workload.py rank`), then its outputs go to $REFINENET_OUTPUT_DIR.

What a rank does is set through its environment (`env` of the cluster file):

    STANDIN_MODE          steps (default) or flood
    STANDIN_STEPS         steps per epoch (0: one endless epoch); STANDIN_EPOCHS epochs (default 1)
    STANDIN_STEP_S        seconds per step (default 0.5); STANDIN_SLOW_RANK takes STANDIN_SLOW_FACTOR times
                          as long (default 3)
    STANDIN_CHECKPOINTS   1: local rank 0 writes a checkpoint and its manifest (refinenet/manifest.py's
                          `mark_complete`) after every epoch into OUTPUT/ckpt ($REFINENET_CKPT_DIR)
    STANDIN_FAIL_RANK     that rank exits with STANDIN_FAIL_CODE (default 1) after global step
                          STANDIN_FAIL_AT (default 1), in stage STANDIN_FAIL_STAGE only when set, and only
                          while the file STANDIN_FAIL_ONCE (when set) does not exist: failing creates it
    STANDIN_FLOOD_S       flood: numbered, checksummed lines as fast as it can for that long (default 3)
                          or STANDIN_FLOOD_LINES lines (0: no limit), then `standin done r<rank> lines=<n>`

A rank resumes after the checkpoint given by `--resume` or $REFINENET_RESUME. Its rank is MS_NODE_ID
(dynamic), else RANK_ID, else OMPI_COMM_WORLD_RANK. Standard library only, but for the manifest module
where checkpoints are written or read.
"""
import argparse
import json
import os
import random
import sys
import time
import zlib

#: A line MindSpore's own logging prints at start (kept out of the live stream by the launcher).
FRAMEWORK_LINE = ("[INFO] DISTRIBUTED(%d,7f00aa,python):2026-11-29-10:00:00.000.000 "
                  "[mindspore/ccsrc/x.cc:1] f] Event base dispatch success!")


def setting(name, default):
    return os.environ.get("STANDIN_" + name, default)


def rank_id():
    for name in ("MS_NODE_ID", "RANK_ID", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def writes_checkpoints(rank):
    """Local rank 0 keeps its host's copy; rank 0 alone on shared storage or where no local rank is known."""
    local = os.environ.get("LOCAL_RANK", "")
    if os.environ.get("REFINENET_STORAGE") == "shared" or not local.isdigit():
        return rank == 0
    return int(local) == 0


def arguments(argv):
    p = argparse.ArgumentParser()
    for name in ("--stage", "--output-dir", "--resume", "--pretrained", "--ckpt", "--check-inputs"):
        p.add_argument(name)
    args, _ = p.parse_known_args(argv)
    args.output_dir = args.output_dir or os.environ.get("REFINENET_OUTPUT_DIR") or "."
    args.resume = args.resume or os.environ.get("REFINENET_RESUME") or None
    args.stage = args.stage or "command"
    return args


def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def flood(rank, seconds, limit):
    rng = random.Random(rank)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    seq, chunk, size = 0, [], 0
    end = time.monotonic() + seconds
    while True:
        payload = alphabet * (1 + rng.randrange(2))
        payload = payload[:rng.randrange(1, len(payload) + 1)]
        body = f"standin r{rank} #{seq} {payload}"
        line = f"{body} len={len(body)} crc={zlib.crc32(body.encode()):08x}\n".encode()
        chunk.append(line)
        size += len(line)
        seq += 1
        if size >= (1 << rng.randrange(6, 17)) or seq == limit:
            write_all(b"".join(chunk))
            chunk, size = [], 0
            if seq == limit or time.monotonic() >= end:
                break
    write_all(f"standin done r{rank} lines={seq}\n".encode())


class Failing:
    """Whether (and how) this rank fails at a global step."""

    def __init__(self, rank, stage):
        self.at = int(setting("FAIL_AT", "1"))
        self.code = int(setting("FAIL_CODE", "1"))
        self.once = setting("FAIL_ONCE", "")
        only_stage = setting("FAIL_STAGE", "")
        self.armed = rank == int(setting("FAIL_RANK", "-1")) and only_stage in ("", stage)
        self.rank = rank

    def due(self, global_step):
        if not self.armed or global_step != self.at:
            return False
        return not (self.once and os.path.exists(self.once))

    def fail(self, wait_for=None):
        """Exit with the code, once `wait_for` (a manifest another rank writes) exists or 10 s passed."""
        deadline = time.monotonic() + 10
        while wait_for and not os.path.exists(wait_for) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.once:
            open(self.once, "w").close()
            print(f"Traceback (most recent call last): rank {self.rank} fails once", flush=True)
        else:
            print(f"Traceback (most recent call last): rank {self.rank} gives up", flush=True)
        sys.exit(self.code)


def train(rank, args):
    steps = int(setting("STEPS", "0"))
    epochs = int(setting("EPOCHS", "1")) if steps > 0 else 1
    step_s = float(setting("STEP_S", "0.5"))
    if rank == int(setting("SLOW_RANK", "-1")):
        step_s *= float(setting("SLOW_FACTOR", "3"))
    checkpoints = setting("CHECKPOINTS", "0") == "1"
    if checkpoints or args.resume:
        from refinenet import manifest
    failing = Failing(rank, args.stage)
    ckpt_dir = os.environ.get("REFINENET_CKPT_DIR") or os.path.join(args.output_dir, "ckpt")

    print(FRAMEWORK_LINE % os.getpid(), flush=True)
    print(f"{args.stage} pretrained {args.pretrained}", flush=True)
    first_epoch, global_step = 1, 0
    if args.resume:
        epoch, step = manifest.parse_ckpt_name(os.path.basename(args.resume))
        first_epoch, global_step = epoch + 1, (epoch - 1) * steps + step
        print(f"resumed from {args.resume}", flush=True)
    else:
        print("training starts from random initialisation (stand-in)", flush=True)
    metrics = os.path.join(args.output_dir, "metrics")
    os.makedirs(metrics, exist_ok=True)
    with open(os.path.join(metrics, f"rank_{rank}.jsonl"), "a") as m:
        next_at = time.monotonic()
        for epoch in range(first_epoch, epochs + 1):
            step = 0
            while steps <= 0 or step < steps:
                step += 1
                global_step += 1
                started = time.time()
                next_at += step_s
                time.sleep(max(0.0, next_at - time.monotonic()))
                loss, lr = 2.0 / (global_step + 1), 0.01 * 0.95 ** global_step
                print(f"epoch: {epoch} step: {step}, loss is {loss:.4f}", flush=True)
                m.write(json.dumps({"step": global_step, "epoch": epoch, "loss": loss, "lr": lr,
                                    "seconds": time.time() - started, "time": time.time()}) + "\n")
                m.flush()
                saved = None
                if checkpoints and step == steps:
                    saved = os.path.join(ckpt_dir, manifest.ckpt_name(epoch, step))
                    if writes_checkpoints(rank):
                        os.makedirs(ckpt_dir, exist_ok=True)
                        with open(saved, "wb") as f:
                            f.write(b"weights %d" % epoch)
                        manifest.mark_complete(saved, epoch=epoch, step=step, steps_per_epoch=steps,
                                               stage=args.stage)
                if failing.due(global_step):
                    failing.fail(saved and str(manifest.manifest_path(saved)))
    print("Train epoch time: 1.0 ms, per step time: 1.0 ms", flush=True)


def main():
    role, argv = sys.argv[1], sys.argv[2:]
    if role == "scheduler":
        print("scheduler up", flush=True)
        while True:
            time.sleep(60)
    args = arguments(argv)
    if args.check_inputs is not None:  # the launcher's preflight: inputs fit, nothing runs
        print(json.dumps({"steps_per_epoch": 1, "ranks": args.check_inputs}))
        return
    if role == "eval":
        print(f"evaluating {args.ckpt}", flush=True)
        print("mean IoU 0.7311", flush=True)
        return
    rank = rank_id()
    if setting("MODE", "steps") == "flood":
        flood(rank, float(setting("FLOOD_S", "3")), int(setting("FLOOD_LINES", "0")))
    else:
        train(rank, args)


if __name__ == "__main__":
    main()
