"""Any program as the workload: `refinenet-launch --cluster FILE -- COMMAND [ARGS...]`.

Every rank runs COMMAND with the backend's rank environment. Resume contract: before a restart the
launcher looks for complete checkpoints (checkpoint file + manifest, `refinenet.manifest`) in the
directory it gave the program as `REFINENET_CKPT_DIR`; the newest one complete on every host is
passed back as `REFINENET_RESUME=PATH` and in place of `{resume}` in the arguments. With nothing to
resume, an argument that is just `{resume}` is dropped (with the option before it when that is
`--something`) and `{resume}` inside a longer argument becomes empty.
"""
from __future__ import annotations

import posixpath
from typing import Dict, List, Optional

from launcher.workload.base import Workload

COMMAND_STAGE = "command"
RESUME_PLACEHOLDER = "{resume}"


class CommandWorkload(Workload):
    stage = COMMAND_STAGE
    required_modules = ("mindspore",)

    def __init__(self, command):
        if not command:
            raise ValueError("empty command")
        self.command = tuple(str(a) for a in command)

    @property
    def resumable(self) -> bool:
        return True

    @property
    def takes_resume(self) -> bool:
        """Whether the program is told where to resume by argument (it is always told by env)."""
        return any(RESUME_PLACEHOLDER in a for a in self.command)

    def argv(self, spec, host, resume: Optional[str] = None) -> List[str]:
        out: List[str] = []
        for arg in self.command:
            if RESUME_PLACEHOLDER not in arg:
                out.append(arg)
            elif resume is not None:
                out.append(arg.replace(RESUME_PLACEHOLDER, resume))
            elif arg == RESUME_PLACEHOLDER:
                if out and out[-1].startswith("--"):
                    out.pop()
            else:
                out.append(arg.replace(RESUME_PLACEHOLDER, ""))
        return out

    def env(self, spec, host, resume: Optional[str] = None) -> Dict[str, str]:
        out = self.output_dir(spec, host)
        env = {"REFINENET_OUTPUT_DIR": out, "REFINENET_CKPT_DIR": posixpath.join(out, "ckpt")}
        if resume is not None:
            env["REFINENET_RESUME"] = resume
        return env

    def describe(self) -> str:
        return " ".join(self.command)
