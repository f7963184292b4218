"""RefineNet as a workload: stages r1 and r2 (training), eval and export of the `refinenet` package.

The only place in the launcher that names the stages.
"""
from __future__ import annotations

import posixpath
from typing import Dict, List, Optional, Tuple

from launcher.errors import ClusterFileError
from launcher.spec.model import OptionValue
from launcher.workload.base import Workload, node_path

STAGES = ("r1", "r2", "eval", "export")
TRAIN_STAGES = ("r1", "r2")
#: What `--stage all` runs.
ALL_STAGES = ("r1", "r2", "eval")


def parse_stages(text: str) -> Tuple[str, ...]:
    """`r1`, `r1,r2,eval` or `all` -> the stages in order; ValueError naming the problem otherwise."""
    names = list(ALL_STAGES) if text.strip() == "all" else [p.strip() for p in text.split(",")]
    for name in names:
        if name not in STAGES:
            raise ValueError(f"{name!r} is not a stage ({', '.join(STAGES)}, or all)")
    if len(set(names)) != len(names):
        raise ValueError(f"{text!r} names a stage twice")
    return tuple(names)


#: What a warm interpreter imports ahead of a restart, per role (see launcher/hostside/warm.py).
WARM_MODULES = {
    "rank": ("mindspore", "mindspore.communication", "mindspore.dataset", "refinenet.train",
             "refinenet.model", "refinenet.data.pipeline", "refinenet.loss"),
    "scheduler": ("mindspore", "mindspore.communication", "refinenet.scheduler"),
}

STAGE_MODULES = {"r1": "refinenet.train", "r2": "refinenet.train", "eval": "refinenet.evaluate",
                 "export": "refinenet.export"}
_REQUIRED = {"r1": ("data", "job.data"), "r2": ("data", "job.data"), "eval": ("data-lst", "job.val_data")}


class RefineNetWorkload(Workload):
    required_modules = ("refinenet", "mindspore")

    def __init__(self, stage: str):
        if stage not in STAGE_MODULES:
            raise ValueError(f"not a RefineNet stage: {stage!r}")
        self.stage = stage

    @property
    def resumable(self) -> bool:
        return self.stage in TRAIN_STAGES

    def warm_modules(self, role: str) -> Tuple[str, ...]:
        return WARM_MODULES.get(role, ()) if self.resumable else ()

    def check_spec(self, spec) -> None:
        for name in spec.job.stage_overrides:
            if name not in STAGES:
                raise ClusterFileError(spec.source, f"job.stage_overrides.{name}",
                                       f"unknown stage (stages: {', '.join(STAGES)})")

    @property
    def single_process(self) -> bool:
        return self.stage not in TRAIN_STAGES

    def stage_dir(self, spec, host, stage: str) -> str:
        """The output directory of `stage` on `host` (its `output-dir` override, else the default)."""
        override = spec.job.stage_overrides.get(stage, {}).get("output-dir")
        if isinstance(override, str) and override:
            return posixpath.normpath(posixpath.join(host.workdir, node_path(override, host)))
        return posixpath.normpath(posixpath.join(host.workdir, node_path(spec.job.output_dir, host), stage))

    def output_dir(self, spec, host) -> str:
        return self.stage_dir(spec, host, self.stage)

    def metrics_file(self, spec, host, rank: int) -> Optional[str]:
        return super().metrics_file(spec, host, rank) if self.resumable else None

    def options(self, spec, host) -> Dict[str, OptionValue]:
        job, stage = spec.job, self.stage

        def latest(of: str) -> str:
            return "latest:" + posixpath.join(self.stage_dir(spec, host, of), "ckpt")

        out = self.output_dir(spec, host)
        if stage == "r1":
            return {"stage": "r1", "device": spec.device, "data": job.data, "output-dir": out,
                    "pretrained": job.pretrained}
        if stage == "r2":
            return {"stage": "r2", "device": spec.device, "data": job.data, "output-dir": out,
                    "pretrained": latest("r1")}
        if stage == "eval":
            return {"device": spec.device, "data-lst": job.val_data, "ckpt": latest("r2"),
                    "output": posixpath.join(out, "eval.json")}
        return {"device": spec.device, "ckpt": latest("r2"), "format": "MINDIR",
                "output": posixpath.join(out, "refinenet")}

    def arguments(self, spec, host, resume: Optional[str] = None) -> List[str]:
        """Defaults from `job`, then `job.stage_overrides[stage]` (null or false drops an option, true
        makes it a bare flag, a list gives several values), then `--resume`, then `job.extra_args`
        for the training stages."""
        options = self.options(spec, host)
        options.update(spec.job.stage_overrides.get(self.stage, {}))
        if resume is not None:
            options["resume"] = resume
        required = _REQUIRED.get(self.stage)
        if required and options.get(required[0]) in (None, False, ""):
            raise ClusterFileError(spec.source, required[1],
                                   f"required for stage {self.stage} "
                                   f"(or set job.stage_overrides.{self.stage}.{required[0]})")
        args: List[str] = []
        for name, value in options.items():
            if value is None or value is False:
                continue
            args.append(f"--{name}")
            if value is True:
                continue
            if isinstance(value, tuple):
                args.extend(str(v) for v in value)
            else:
                args.append(str(value))
        if self.resumable:
            args.extend(spec.job.extra_args)
        return args

    def argv(self, spec, host, resume: Optional[str] = None) -> List[str]:
        return [host.python, "-m", STAGE_MODULES[self.stage], *self.arguments(spec, host, resume)]

    def input_check_argv(self, spec, host, world_size: int) -> Optional[List[str]]:
        """Training stages: `refinenet.train --check-inputs RANKS` (the list gives one global batch)."""
        if not self.resumable:
            return None
        return [*self.argv(spec, host), "--check-inputs", str(world_size)]

    def data_files(self, spec, host) -> List[str]:
        """Input files the stage reads on `host` (checked by the preflight before anything starts)."""
        options = self.options(spec, host)
        options.update(spec.job.stage_overrides.get(self.stage, {}))
        key = {"r1": "data", "r2": "data", "eval": "data-lst"}.get(self.stage)
        value = options.get(key) if key else None
        if not isinstance(value, str) or not value:
            return []
        return [posixpath.normpath(posixpath.join(host.workdir, value))]
