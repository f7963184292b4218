"""RefineNet training, stages r1 and r2: `refinenet-train` / `python -m refinenet.train`.

One code path for a single process and for a rank of a data-parallel job. Everything that can be
wrong with the command line or its files is checked before the cluster forms, so a rank with bad
input exits 2 at once instead of leaving its peers waiting. The training loop is a custom loop
over a graph-mode `TrainOneStepCell`: one log line and one metrics record per step, epochs whose
batches depend only on (seed, epoch, rank, ranks), and atomic checkpoints that resume bit-exactly
from any step. A save request (REFINENET_SAVE_REQUEST file or SIGUSR1) stops every rank after the same
step with a checkpoint; phase events in the metrics JSONL time the start-up (docs/workload-contract.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, TextIO

from refinenet import checkpoints as ck
from refinenet import lr as lr_mod
from refinenet import metrics_log as ml
from refinenet import save_request
from refinenet.dist import ClusterInfo, LaunchEnv, LaunchEnvError, LaunchKind, detect_launch, prepare_env
from refinenet.presets import AMP_LEVELS, DEVICES, STAGES, TrainPreset, preset

DEPTHS = (18, 34, 50, 101, 152)
BN_MODES = ("frozen", "train")
AMP_DTYPES = ("float16", "bfloat16")
_DEVICE_TARGET = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}


class UsageError(ValueError):
    """Bad command-line input: reported as `error: ...` with exit code 2, before anything is written."""


@dataclass(frozen=True)
class TrainConfig:
    """A fully resolved training run: the stage preset with the command line's values applied."""

    stage: str
    data: str
    output_dir: str
    device: str
    mode: str
    pretrained: Optional[str]
    resume: str
    amp_dtype: str
    workers: int
    hp: TrainPreset


@dataclass(frozen=True)
class StartPoint:
    """Where the weights come from and the global step training continues after.

    `epoch` counts the epochs completed, `skip` the batches of the next epoch already trained (0 at an
    epoch boundary).
    """

    description: str
    epoch: int
    global_step: int
    skip: int = 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refinenet-train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", required=True, help="r1 (SBD from ImageNet ResNet) or r2 (VOC from r1)")
    p.add_argument("--data", required=True, help="training list file or MindRecord file")
    p.add_argument("--output-dir", required=True, help="checkpoints go to DIR/ckpt, metrics to DIR/metrics")
    p.add_argument("--pretrained", help="checkpoint or latest:DIR to start from (r1: ImageNet ResNet, "
                                        "r2: an r1 checkpoint); without it, random initialisation")
    p.add_argument("--resume", default="none",
                   help="auto (newest complete checkpoint in DIR/ckpt), none, a checkpoint, or latest:DIR")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--mode", default="graph", choices=("graph", "pynative"))
    p.add_argument("--amp-dtype", default="float16", choices=AMP_DTYPES)
    p.add_argument("--workers", type=int, default=2, help="data pipeline worker processes per rank")
    g = p.add_argument_group("stage preset overrides (default: the preset of stage, device and rank count)")
    g.add_argument("--depth", type=int, choices=DEPTHS)
    g.add_argument("--num-classes", type=int)
    g.add_argument("--crop-size", type=int)
    g.add_argument("--batch-size", type=int, help="per rank")
    g.add_argument("--epochs", type=int)
    g.add_argument("--base-lr", type=float)
    g.add_argument("--lr-type", choices=lr_mod.LR_TYPES)
    g.add_argument("--warmup-epochs", type=int)
    g.add_argument("--lr-decay-step", type=int)
    g.add_argument("--lr-decay-rate", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--loss-scale", type=float)
    g.add_argument("--amp-level", choices=AMP_LEVELS)
    g.add_argument("--save-epochs", type=int)
    g.add_argument("--keep-max", type=int)
    g.add_argument("--seed", type=int, help="seed of the initial weights (the same on every rank)")
    g.add_argument("--data-seed", type=int, help="seed of the sample order and augmentation")
    g.add_argument("--bn-mode", choices=BN_MODES)
    g.add_argument("--min-scale", type=float)
    g.add_argument("--max-scale", type=float)
    g.add_argument("--ignore-label", type=int)
    c = p.add_argument_group("checking inputs only (a launcher's preflight, before any stage runs)")
    c.add_argument("--check-inputs", type=int, metavar="RANKS",
                   help="check that --data exists and gives at least one global batch for RANKS ranks (and "
                        "that a --pretrained file that is not latest:DIR exists), print the steps per epoch "
                        "as JSON and exit: 0 fit, 2 not; nothing is imported of MindSpore, nothing written")
    return p


def check_inputs(args: argparse.Namespace) -> int:
    """`--check-inputs RANKS`: the inputs of this command line, checked without training (see its help)."""
    try:
        config = resolve_config(args, args.check_inputs)
        if not Path(config.data).is_file():
            raise UsageError(f"--data: {config.data} does not exist or is not a file")
        if config.pretrained and not config.pretrained.startswith(ck.LATEST) \
                and not Path(config.pretrained).is_file():
            raise UsageError(f"--pretrained: {config.pretrained} does not exist or is not a file")
        from refinenet.data.pipeline import dataset_size

        steps = dataset_size(config.data, config.hp.batch_size, args.check_inputs)
    except UsageError as exc:
        _say(f"error: {exc}", sys.stderr)
        return 2
    except ValueError as exc:  # DataError and the size checks of the data pipeline
        _say(f"error: --data: {exc}", sys.stderr)
        return 2
    _say(json.dumps({"steps_per_epoch": steps, "batch_size": config.hp.batch_size,
                     "ranks": args.check_inputs}))
    return 0


_OVERRIDES = ("depth", "num_classes", "crop_size", "batch_size", "epochs", "base_lr", "lr_type",
              "warmup_epochs", "lr_decay_step", "lr_decay_rate", "momentum", "weight_decay", "loss_scale",
              "amp_level", "save_epochs", "keep_max", "seed", "data_seed", "bn_mode", "min_scale",
              "max_scale", "ignore_label")


def resolve_config(args: argparse.Namespace, ranks: int) -> TrainConfig:
    """Apply the command line to the stage preset and check every value; `UsageError` on the first bad one."""
    if args.stage not in STAGES:
        raise UsageError(f"--stage: {args.stage!r} is not one of {', '.join(STAGES)}")
    hp = preset(args.stage, args.device, ranks, {k: getattr(args, k) for k in _OVERRIDES})
    positive = ("num_classes", "crop_size", "batch_size", "epochs", "save_epochs", "lr_decay_step")
    for name in positive:
        if getattr(hp, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(hp, name)}")
    if hp.keep_max < 1:
        raise UsageError(f"--keep-max: must be at least 1, got {hp.keep_max}")
    if hp.base_lr <= 0 or hp.loss_scale <= 0 or hp.weight_decay < 0 or not 0 <= hp.momentum < 1:
        raise UsageError("--base-lr and --loss-scale must be > 0, --weight-decay >= 0, 0 <= --momentum < 1")
    if not 0 < hp.min_scale <= hp.max_scale:
        raise UsageError(f"--min-scale/--max-scale: need 0 < min <= max, got {hp.min_scale}, {hp.max_scale}")
    if not 0 <= hp.ignore_label < 256 or hp.ignore_label < hp.num_classes:
        raise UsageError(f"--ignore-label: {hp.ignore_label} must be in [num classes, 256)")
    if hp.seed < 0 or hp.data_seed < 0:
        raise UsageError("--seed and --data-seed must be >= 0")
    if hp.lr_type == "cos_warmup" and not 0 < hp.warmup_epochs < hp.epochs:
        raise UsageError(f"--warmup-epochs: cos_warmup needs 0 < {hp.warmup_epochs} < epochs ({hp.epochs})")
    if args.workers < 1:
        raise UsageError(f"--workers: must be at least 1, got {args.workers}")
    if hp.amp_level == "O1":
        raise UsageError("--amp-level O1: MindSpore's O1 rewrites the network's Python source and fails on "
                         "RefineNet (ImportError inside mindspore.rewrite); use O2 or O3")
    if args.device == "cpu" and hp.amp_level != "O0" and args.amp_dtype == "bfloat16":
        raise UsageError("--amp-dtype bfloat16: MindSpore's CPU kernels do not run bfloat16 networks "
                         "(use --amp-dtype float16, or --amp-level O0)")
    return TrainConfig(stage=args.stage, data=args.data, output_dir=args.output_dir, device=args.device,
                       mode=args.mode, pretrained=args.pretrained, resume=args.resume,
                       amp_dtype=args.amp_dtype, workers=args.workers, hp=hp)


def check_paths(config: TrainConfig) -> None:
    """Files named on the command line exist and the output folder can be written; nothing is created."""
    if not Path(config.data).is_file():
        raise UsageError(f"--data: {config.data} does not exist or is not a file")
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir: {out} exists and is not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir: {existing} is not writable")
    if config.resume not in ("auto", "none") and not config.resume.startswith(ck.LATEST) \
            and not Path(config.resume).is_file():
        raise UsageError(f"--resume: {config.resume} does not exist or is not a file")


def resolve_refs(config: TrainConfig) -> tuple:
    """(pretrained path or None, resume CheckpointRef or None), each checked to be loadable."""
    pretrained = None
    if config.pretrained:
        ref = ck.resolve_ckpt_ref(config.pretrained, what="--pretrained")
        problem = _unreadable(ref.path)
        if problem:
            raise UsageError(f"--pretrained: {ref.path}: {problem}")
        pretrained = ref.path
    resume = None
    if config.resume == "auto":
        resume = ck.latest_complete(Path(config.output_dir) / "ckpt")
    elif config.resume != "none":
        resume = ck.resolve_ckpt_ref(config.resume, what="--resume")
        problem = ck.loadable(resume.path)
        if problem:
            raise UsageError(f"--resume: {resume.path}: {problem}")
    return pretrained, resume


def _unreadable(path: Path) -> Optional[str]:
    """None when the whole file parses as a checkpoint, else why not."""
    from refinenet import weights

    try:
        weights.read_checkpoint_names(path)
    except ck.CheckpointError as exc:
        return getattr(exc, "problem", str(exc))
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return None


def _say(line: str, stream: TextIO = sys.stdout) -> None:
    print(line, file=stream, flush=True)


def _set_context(config: TrainConfig, launch: LaunchEnv, lr_steps: int) -> None:
    import mindspore as ms

    from refinenet.dist import device_id

    ms.set_context(mode=ms.GRAPH_MODE if config.mode == "graph" else ms.PYNATIVE_MODE)
    target = _DEVICE_TARGET[config.device]
    if config.device == "cpu":
        ms.set_device(target)
    else:
        ms.set_device(target, device_id(launch))
    _use_compile_cache(config, launch, lr_steps, ms.__version__)


def _use_compile_cache(config: TrainConfig, launch: LaunchEnv, lr_steps: int, ms_version: str) -> None:
    """Graph mode with $REFINENET_COMPILE_CACHE set: compiled graphs are kept and reused under a key of
    everything that decides them (refinenet/compile_cache.py). A cache that cannot be used is reported
    and training goes on without it."""
    from refinenet import compile_cache as cc

    if not os.environ.get(cc.ENV_VAR):
        return
    if config.mode != "graph":
        _say(f"compile cache: not used in {config.mode} mode (MindSpore caches graph-mode graphs only)")
        return
    fields = cc.graph_key_fields(config.hp, mode=config.mode, device=config.device,
                                 amp_dtype=config.amp_dtype, ranks=launch.size, lr_steps=lr_steps,
                                 mindspore_version=ms_version, source=cc.source_digest(), environ=os.environ)
    try:
        folder = cc.enable(fields)
    except OSError as exc:
        _say(f"compile cache: cannot use {os.environ[cc.ENV_VAR]}: {exc.strerror or exc}; "
             "compiling without it")
        return
    cached = cc.cached_graphs(folder, launch.rank)
    _say(f"compile cache: {folder} ({cached} graphs of rank {launch.rank} cached)")


def build_train_cell(net, hp: TrainPreset, lrs: List[float]):
    """Momentum (weight decay on all but BN gamma/beta) under a fixed loss scale, in a TrainOneStepCell."""
    from mindspore import nn

    from refinenet.loss import NetWithLoss, SegmentationLoss

    params = net.trainable_params()
    decay = [p for p in params if "gamma" not in p.name and "beta" not in p.name]
    no_decay = [p for p in params if "gamma" in p.name or "beta" in p.name]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"order_params": params}]
    optimizer = nn.Momentum(groups, learning_rate=lrs, momentum=hp.momentum, loss_scale=hp.loss_scale)
    with_loss = NetWithLoss(net, SegmentationLoss(hp.num_classes, hp.ignore_label))
    cell = nn.TrainOneStepCell(with_loss, optimizer, sens=hp.loss_scale)
    cell.set_train()
    return cell, optimizer


def state_fingerprint(cell) -> bytes:
    """sha256 over every parameter except the LR vector: equal on all ranks iff their states are equal."""
    h = hashlib.sha256()
    for p in sorted(cell.get_parameters(), key=lambda q: q.name):
        if p.name == "learning_rate":
            continue
        h.update(p.name.encode())
        h.update(p.asnumpy().tobytes())
    return h.digest()


def check_same_state_on_all_ranks(cell, cluster: ClusterInfo) -> str:
    """Gather every rank's state fingerprint; raise if any rank's weights differ from rank 0's."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    digest = state_fingerprint(cell)

    class Gather(nn.Cell):
        def __init__(self):
            super().__init__()
            self.gather = ops.AllGather()

        def construct(self, x):
            return self.gather(x)

    local = np.frombuffer(digest, dtype=np.int32).reshape(1, -1)
    everyone = Gather()(ms.Tensor(local)).asnumpy()
    differ = [r for r in range(cluster.group_size) if not np.array_equal(everyone[r], everyone[0])]
    if differ:
        raise RuntimeError(f"initial state differs between ranks: ranks {differ} differ from rank 0 "
                           "(different pretrained/resume checkpoints on their hosts?)")
    return digest.hex()[:16]


def check_resume_matches(resume: Optional[ck.CheckpointRef], steps_per_epoch: int) -> None:
    """A resumed run must cut epochs where the interrupted one did."""
    m = resume.manifest if resume is not None else None
    if m is not None and m.steps_per_epoch != steps_per_epoch:
        raise UsageError(f"--resume: {resume.path} was taken at {m.steps_per_epoch} steps per epoch, this "
                         f"run has {steps_per_epoch} (batch size, rank count or data changed)")


def initial_weights(config: TrainConfig, net, pretrained: Optional[Path],
                    resume: Optional[ck.CheckpointRef]) -> str:
    """Before the cluster forms: load the pretrained weights, or check that the resume checkpoint fits.

    Returns the description of the start for the log. Errors here are bad input (exit 2).
    """
    from refinenet import weights

    if resume is not None:
        names = set(weights.read_checkpoint_names(resume.path))
        lacking = sorted(p.name for p in net.get_parameters() if p.name not in names)
        if lacking or "global_step" not in names:
            raise UsageError(f"--resume: {resume.path} is not a training checkpoint of this network "
                             f"(lacks {', '.join((lacking or ['global_step'])[:3])})")
        note = " (--pretrained ignored)" if pretrained else ""
        return f"resume point {resume.path}{note}"
    if pretrained is not None:
        report = weights.load_pretrained(net, os.fspath(pretrained))
        return f"pretrained weights {pretrained} ({report.summary()})"
    return f"random initialisation (no --pretrained; seed {config.hp.seed})"


def epoch_and_step(global_step: int, steps_per_epoch: int) -> tuple:
    """(epoch counted from 1, step within it) of a global step >= 1: the checkpoint naming."""
    return (global_step - 1) // steps_per_epoch + 1, (global_step - 1) % steps_per_epoch + 1


def start_point(global_step: int, steps_per_epoch: int) -> StartPoint:
    """Where a run restored at `global_step` continues: an epoch boundary, or batch `skip` of the next
    epoch."""
    epoch, skip = divmod(global_step, steps_per_epoch)
    if skip == 0:
        return StartPoint(f"epoch {epoch}, global step {global_step}", epoch, global_step)
    current, step = epoch_and_step(global_step, steps_per_epoch)
    return StartPoint(f"epoch {current} step {step}, global step {global_step}", epoch, global_step, skip)


def restore(cell, resume: ck.CheckpointRef, steps_per_epoch: int) -> StartPoint:
    """Load weights, optimizer moments and global step of the resume checkpoint into the train cell."""
    ck.restore_training_state(resume.path, cell)
    global_step = int(cell.optimizer.global_step.asnumpy().reshape(-1)[0])
    return start_point(global_step, steps_per_epoch)


def metrics_path(output: Path, rank: int) -> Path:
    """DIR/metrics/rank_<r>.jsonl"""
    return output / "metrics" / f"rank_{rank}.jsonl"


def train(config: TrainConfig, launch: LaunchEnv, pretrained: Optional[Path],
          resume: Optional[ck.CheckpointRef], steps_per_epoch: int, *, log: ml.MetricsLog,
          request: save_request.SaveRequest) -> int:
    """Build and initialise the network, form the cluster (when a rank), restore, run the epochs; stop
    after the step at which any rank had a save request, with a checkpoint."""
    import mindspore as ms
    import numpy as np

    from refinenet.data.pipeline import build_train_dataset
    from refinenet.dist import StopAgreement, init_cluster
    from refinenet.model import build_refinenet

    log.event(ml.IMPORTS)
    hp = config.hp
    lrs = lr_mod.learning_rates(hp.lr_type, hp.base_lr, steps_per_epoch, hp.epochs,
                                warmup_epochs=hp.warmup_epochs, decay_rate=hp.lr_decay_rate,
                                decay_steps=hp.lr_decay_step)
    _set_context(config, launch, len(lrs))
    ms.set_seed(hp.seed)
    net = build_refinenet(num_classes=hp.num_classes, depth=hp.depth, bn_mode=hp.bn_mode)
    origin = initial_weights(config, net, pretrained, resume)
    output = Path(config.output_dir)
    log.open(metrics_path(output, launch.rank))
    began = time.time()
    cluster = init_cluster(launch)
    log.event(ml.CLUSTER, rank=cluster.rank, ranks=cluster.group_size, init_s=time.time() - began)
    if cluster.rank != launch.rank:
        log.open(metrics_path(output, cluster.rank))
    if hp.amp_level != "O0":
        net = ms.amp.auto_mixed_precision(net, hp.amp_level, dtype=getattr(ms, config.amp_dtype))
    cell, _ = build_train_cell(net, hp, lrs)
    start = StartPoint(origin, 0, 0)
    if resume is not None:
        began = time.time()
        start = restore(cell, resume, steps_per_epoch)
        log.event(ml.CHECKPOINT_LOADED, checkpoint=str(resume.path), load_s=time.time() - began,
                  **position(start.global_step, steps_per_epoch))
    ckpt_dir = output / "ckpt"
    if cluster.saves_checkpoints:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ck.remove_stale_temporaries(ckpt_dir)
    _say(f"training starts from {origin}" + (f" at {start.description}" if resume is not None else ""))
    if config.resume == "auto" and resume is None:
        _say(f"--resume auto: no complete checkpoint in {ckpt_dir}, nothing to resume")
    if config.device == "cpu" and hp.amp_level != "O0":
        _say(f"note: amp level {hp.amp_level} on CPU computes in {config.amp_dtype}; MindSpore's CPU float16 "
             "kernels are not generally faster than float32 (docs/performance.md)")
    if cluster.distributed:
        fp = check_same_state_on_all_ranks(cell, cluster)
        _say(f"rank {cluster.rank}: initial state identical on all {cluster.group_size} ranks "
             f"(sha256 {fp}...)")
    _say(f"stage {config.stage}, device {config.device}, rank {cluster.rank} of {cluster.group_size}, "
         f"depth {hp.depth}, batch {hp.batch_size} per rank, crop {hp.crop_size}, "
         f"{steps_per_epoch} steps per epoch, epochs {hp.epochs}, lr {hp.lr_type} base {hp.base_lr}, "
         f"amp {hp.amp_level}, mode {config.mode}")
    if start.global_step >= hp.epochs * steps_per_epoch:
        _say(f"nothing to train: the start point is epoch {start.epoch} of {hp.epochs}")
        return 0
    agreement = StopAgreement(cluster)
    if cluster.rank == 0:
        _write_run_config(output, config, cluster, steps_per_epoch, start)
    dataset = build_train_dataset(config.data, batch_size=hp.batch_size, crop_size=hp.crop_size,
                                  rank=cluster.rank, group_size=cluster.group_size, epoch=start.epoch,
                                  seed=hp.data_seed, min_scale=hp.min_scale, max_scale=hp.max_scale,
                                  ignore_label=hp.ignore_label, workers=config.workers,
                                  skip_batches=start.skip)
    saver = _Saver(cell, config, cluster, ckpt_dir, steps_per_epoch)
    global_step = start.global_step
    stop = False
    iterator = dataset.create_tuple_iterator(num_epochs=hp.epochs - start.epoch)
    try:
        for epoch in range(start.epoch + 1, hp.epochs + 1):
            epoch_start = time.perf_counter()
            step = first = start.skip if epoch == start.epoch + 1 else 0
            for data, label in iterator:
                t0 = time.perf_counter()
                loss = float(np.asarray(cell(data, label).asnumpy()))
                seconds = time.perf_counter() - t0
                if not np.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} at epoch {epoch} step {step + 1}: training "
                                             "diverged (lower --base-lr, or check --loss-scale/--amp-level)")
                step += 1
                rate = lrs[global_step]
                global_step += 1
                _say(f"epoch: {epoch} step: {step}, loss is {loss:.7f}")
                log.step(step=global_step, epoch=epoch, loss=loss, lr=rate, seconds=seconds)
                if global_step == start.global_step + 1:
                    log.event(ml.FIRST_STEP, step_s=seconds, **position(global_step, steps_per_epoch))
                stop = agreement(request.pending())
                if stop:
                    break
            if stop and step < steps_per_epoch:
                break
            if step != steps_per_epoch:
                raise RuntimeError(f"epoch {epoch} gave {step} batches, expected {steps_per_epoch}")
            elapsed = (time.perf_counter() - epoch_start) * 1000.0
            _say(f"Train epoch time: {elapsed:.3f} ms, per step time: {elapsed / (step - first):.3f} ms")
            if epoch % hp.save_epochs == 0 or epoch == hp.epochs:
                saver.save(global_step, hp.keep_max)
            if stop:
                break
    finally:
        iterator.stop()
    if stop:
        saver.save_on_request(global_step, hp.keep_max, log)
        request.consume()
    return 0


def position(global_step: int, steps_per_epoch: int) -> dict:
    """The fields that place an event: global step, epoch (from 1) and step within that epoch."""
    epoch, step = epoch_and_step(global_step, steps_per_epoch)
    return {"step": global_step, "epoch": epoch, "epoch_step": step}


class _Saver:
    """Writes this host's checkpoints if this rank is the one that does (`ClusterInfo.saves_checkpoints`)."""

    def __init__(self, cell, config: TrainConfig, cluster: ClusterInfo, ckpt_dir: Path, steps_per_epoch: int):
        self.cell, self.config, self.cluster = cell, config, cluster
        self.ckpt_dir, self.steps_per_epoch = ckpt_dir, steps_per_epoch
        self.last: Optional[ck.CheckpointRef] = None

    def save(self, global_step: int, keep_max: int) -> Optional[ck.CheckpointRef]:
        """Save the state after `global_step` (once: a second call for the same step returns the first)."""
        if not self.cluster.saves_checkpoints:
            return None
        if self.last is not None and self.last.manifest.global_step == global_step:
            return self.last
        epoch, step = epoch_and_step(global_step, self.steps_per_epoch)
        self.last = ck.save_atomic(self.cell, self.ckpt_dir, stage=self.config.stage, epoch=epoch, step=step,
                                   steps_per_epoch=self.steps_per_epoch, global_step=global_step,
                                   rank=self.cluster.rank)
        removed = ck.prune(self.ckpt_dir, keep_max)
        _say(f"saved checkpoint {self.last.path}" + (f" (removed {len(removed)} old)" if removed else ""))
        return self.last

    def save_on_request(self, global_step: int, keep_max: int, log: ml.MetricsLog) -> None:
        """The checkpoint a save request asked for, its log line and its event."""
        began = time.time()
        ref = self.save(global_step, keep_max)
        epoch, step = epoch_and_step(global_step, self.steps_per_epoch)
        where = f"at epoch {epoch} step {step} (global step {global_step})"
        if ref is not None:
            _say(f"saved on request {where}: {ref.path}")
        else:
            writer = "rank 0" if self.cluster.shared_storage else "local rank 0 of this host"
            _say(f"stopped on request {where}: {writer} writes the checkpoint")
        log.event(ml.SAVED_ON_REQUEST, checkpoint=str(ref.path) if ref is not None else None,
                  save_s=time.time() - began, **position(global_step, self.steps_per_epoch))


def _write_run_config(output: Path, config: TrainConfig, cluster: ClusterInfo, steps_per_epoch: int,
                      start: StartPoint) -> None:
    from refinenet.manifest import write_json_atomic

    record = {"stage": config.stage, "data": config.data, "device": config.device, "mode": config.mode,
              "pretrained": config.pretrained, "resume": config.resume, "ranks": cluster.group_size,
              "steps_per_epoch": steps_per_epoch, "start": asdict(start),
              "hyperparameters": asdict(config.hp)}
    write_json_atomic(output / "train_config.json", record)


def main(argv: Optional[Sequence[str]] = None) -> int:
    request = save_request.install()  # first: from here on SIGUSR1 is a request, never a kill
    log = ml.MetricsLog()
    log.event(ml.PROCESS_START, at=log.started, pid=os.getpid(), main_s=time.time() - log.started)
    args = build_parser().parse_args(argv)
    if args.check_inputs is not None:
        return check_inputs(args)
    try:
        launch = detect_launch()
        config = resolve_config(args, launch.size)
        check_paths(config)
        pretrained, resume = resolve_refs(config)
        if launch.kind is LaunchKind.MPIRUN:
            prepare_env(launch)
        from refinenet.data.pipeline import dataset_size

        steps_per_epoch = dataset_size(config.data, config.hp.batch_size, launch.size)
        check_resume_matches(resume, steps_per_epoch)
    except (UsageError, ck.CheckpointError, LaunchEnvError) as exc:
        _say(f"error: {exc}", sys.stderr)
        return 2
    except ValueError as exc:  # DataError and argument checks of the data pipeline
        _say(f"error: --data: {exc}", sys.stderr)
        return 2
    try:
        return train(config, launch, pretrained, resume, steps_per_epoch, log=log, request=request)
    except (UsageError, ck.CheckpointError) as exc:
        _say(f"error: {exc}", sys.stderr)
        return 2
    except FloatingPointError as exc:
        _say(f"error: {exc}", sys.stderr)
        return 1
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
