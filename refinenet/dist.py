"""How this process was launched (single, dynamic cluster, rank table, mpirun) and cluster set-up.

`detect_launch` reads the environment only; `init_cluster` imports MindSpore, forms the cluster
with `mindspore.communication.init()` and sets data parallelism with gradient mean.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Mapping, MutableMapping, Optional


class LaunchKind(str, enum.Enum):
    """Who started this process: nobody (single), MindSpore's dynamic cluster, a rank table, or mpirun."""

    SINGLE = "single"
    DYNAMIC = "dynamic"
    RANK_TABLE = "rank_table"
    MPIRUN = "mpirun"


class LaunchEnvError(ValueError):
    """The launch environment is inconsistent (e.g. a non-integer rank variable)."""


@dataclass(frozen=True)
class LaunchEnv:
    """The launch as the environment describes it, before any cluster is formed."""

    kind: LaunchKind
    rank: int
    size: int
    local_rank: Optional[int]  # None: the launcher did not say; the rank is then its own local rank

    @property
    def distributed(self) -> bool:
        return self.kind is not LaunchKind.SINGLE


@dataclass(frozen=True)
class ClusterInfo:
    """Rank and group size as the formed cluster reports them."""

    rank: int
    group_size: int
    local_rank: int
    distributed: bool

    shared_storage: bool = False

    @property
    def saves_checkpoints(self) -> bool:
        """Local rank 0 of each host keeps that host's copy of the checkpoints; on storage every host
        shares (`REFINENET_STORAGE=shared`) rank 0 alone writes the one copy."""
        return self.rank == 0 if self.shared_storage else self.local_rank == 0


def _int(env: Mapping[str, str], name: str, default: Optional[int] = None) -> Optional[int]:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise LaunchEnvError(f"environment variable {name}={value!r} is not an integer") from None
    if number < 0:
        raise LaunchEnvError(f"environment variable {name}={value!r} is negative")
    return number


def _local_rank(env: Mapping[str, str], kind: LaunchKind) -> Optional[int]:
    for name in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"):
        value = _int(env, name)
        if value is not None:
            return value
    if kind is LaunchKind.DYNAMIC and "RANK_SIZE" in env and "DEVICE_ID" in env:
        return _int(env, "DEVICE_ID")  # msrun: DEVICE_ID is the index on the host
    return None


def detect_launch(env: Mapping[str, str] = os.environ) -> LaunchEnv:
    """Classify the launch from MS_ROLE, RANK_TABLE_FILE + RANK_SIZE, or OMPI_COMM_WORLD_* variables."""
    role = env.get("MS_ROLE")
    if role:
        if role != "MS_WORKER":
            raise LaunchEnvError(f"MS_ROLE={role!r}: training runs as MS_WORKER (the scheduler is "
                                 "python -m refinenet.scheduler)")
        rank = _int(env, "MS_NODE_ID", _int(env, "RANK_ID", 0))
        size = _int(env, "MS_WORKER_NUM", _int(env, "RANK_SIZE", 1))
        return LaunchEnv(LaunchKind.DYNAMIC, rank, size, _local_rank(env, LaunchKind.DYNAMIC))
    if _int(env, "OMPI_COMM_WORLD_SIZE", 0) > 1:
        rank = _int(env, "OMPI_COMM_WORLD_RANK", 0)
        size = _int(env, "OMPI_COMM_WORLD_SIZE")
        return LaunchEnv(LaunchKind.MPIRUN, rank, size, _local_rank(env, LaunchKind.MPIRUN))
    if env.get("RANK_TABLE_FILE") and _int(env, "RANK_SIZE", 1) > 1:
        rank = _int(env, "RANK_ID", 0)
        size = _int(env, "RANK_SIZE")
        return LaunchEnv(LaunchKind.RANK_TABLE, rank, size, _local_rank(env, LaunchKind.RANK_TABLE))
    return LaunchEnv(LaunchKind.SINGLE, 0, 1, 0)


def prepare_env(launch: LaunchEnv, env: MutableMapping[str, str] = os.environ) -> None:
    """Map mpirun's rank variables onto MindSpore's dynamic-cluster ones before `init()`."""
    if launch.kind is LaunchKind.MPIRUN:
        env["MS_ROLE"] = "MS_WORKER"
        env["MS_NODE_ID"] = str(launch.rank)
        env["MS_WORKER_NUM"] = str(launch.size)
        missing = [n for n in ("MS_SCHED_HOST", "MS_SCHED_PORT") if not env.get(n)]
        if missing:
            raise LaunchEnvError(f"launched by mpirun but {' and '.join(missing)} not set: start "
                                 "python -m refinenet.scheduler and forward them with mpirun -x")


def device_id(launch: LaunchEnv, env: Mapping[str, str] = os.environ) -> int:
    """The accelerator this rank uses: DEVICE_ID when set, else its local rank."""
    return _int(env, "DEVICE_ID", launch.local_rank if launch.local_rank is not None else launch.rank)


def init_cluster(launch: LaunchEnv) -> ClusterInfo:
    """Form the cluster when launched as a rank and set data parallelism; a no-op for one process."""
    if not launch.distributed:
        return ClusterInfo(rank=0, group_size=1, local_rank=0, distributed=False)
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    prepare_env(launch)
    init()
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    local = rank if launch.local_rank is None else launch.local_rank
    shared = os.environ.get("REFINENET_STORAGE") == "shared"
    return ClusterInfo(rank=rank, group_size=size, local_rank=local, distributed=True, shared_storage=shared)


class StopAgreement:
    """After the same step every rank learns whether any rank wants to stop: an AllReduce (sum) of a
    one-element float32 flag. Sum, not max: MindSpore's CPU AllReduce only sums (and only floats);
    any nonzero sum means stop. Every rank builds it at the same point of the run: its first call
    (compilation, and a barrier) is made here, every rank voting to continue. One process: no
    collective, its own vote is the answer."""

    def __init__(self, cluster: ClusterInfo):
        self._reduce = None
        if cluster.distributed:
            from mindspore import nn, ops

            class _Sum(nn.Cell):
                def __init__(self):
                    super().__init__()
                    self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)

                def construct(self, x):
                    return self.all_reduce(x)

            self._reduce = _Sum()
            self(False)

    def __call__(self, stop: bool) -> bool:
        """The same answer on every rank: True when at least one rank called this with `stop` True."""
        if self._reduce is None:
            return bool(stop)
        import mindspore as ms
        import numpy as np

        flag = ms.Tensor(np.array([1.0 if stop else 0.0], dtype=np.float32))
        return float(self._reduce(flag).asnumpy()[0]) > 0.0
