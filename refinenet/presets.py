"""Stage presets r1/r2 per device and rank count, from the ModelZoo recipe (MODELZOO_FACTS §5, §6).

r1 trains on SBD from an ImageNet ResNet-101; r2 fine-tunes on VOC from an r1 checkpoint with
a tenth (Ascend, GPU single) or a hundredth (GPU 8p) of the learning rate. The ModelZoo has no
CPU scripts: CPU follows the GPU rows. Every value is a default that a command-line option overrides.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

STAGES = ("r1", "r2")
DEVICES = ("cpu", "gpu", "ascend")
AMP_LEVELS = ("O0", "O1", "O2", "O3")


@dataclass(frozen=True)
class TrainPreset:
    """Hyper-parameters of one stage on one device kind and rank count."""

    batch_size: int
    base_lr: float
    epochs: int = 200
    crop_size: int = 513
    min_scale: float = 0.5
    max_scale: float = 3.0
    lr_type: str = "cos"
    warmup_epochs: int = 10
    lr_decay_step: int = 450
    lr_decay_rate: float = 0.8
    momentum: float = 0.9
    weight_decay: float = 5e-4
    loss_scale: float = 1024.0
    amp_level: str = "O0"
    save_epochs: int = 5
    keep_max: int = 200
    depth: int = 101
    num_classes: int = 21
    ignore_label: int = 255
    bn_mode: str = "frozen"
    seed: int = 1
    data_seed: int = 1000

    def override(self, values: Mapping[str, object]) -> TrainPreset:
        """A copy with every non-None value of `values` (field names) replacing the preset's."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


# (device, distributed) -> (batch per device, r1 base lr, r2 base lr)
_TABLE = {
    ("ascend", False): (32, 0.0015, 0.00015),
    ("ascend", True): (32, 0.0032, 0.00032),
    ("gpu", False): (16, 0.001, 0.0001),
    ("gpu", True): (8, 0.004, 0.00004),
}
_AMP = {"ascend": "O3", "gpu": "O2", "cpu": "O0"}


def preset(stage: str, device: str = "cpu", ranks: int = 1, overrides: Optional[Mapping[str, object]] = None
           ) -> TrainPreset:
    """The preset of `stage` on `device` with `ranks` data-parallel ranks, with `overrides` applied."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if ranks < 1:
        raise ValueError(f"rank count must be at least 1, got {ranks}")
    table_device = "gpu" if device == "cpu" else device
    batch, lr_r1, lr_r2 = _TABLE[(table_device, ranks > 1)]
    base = TrainPreset(batch_size=batch, base_lr=lr_r1 if stage == "r1" else lr_r2, amp_level=_AMP[device])
    return base.override(overrides or {})
