"""Per-step learning-rate schedules of the ModelZoo recipe (MODELZOO_FACTS §5).

Each function returns the learning rate of every step i = 0 … total_steps−1 as a list of
floats; the optimizer indexes it with its global step, which is what makes a resumed run
continue the schedule where it stopped.
"""
from __future__ import annotations

import math
from typing import List

LR_TYPES = ("cos", "poly", "exp", "cos_warmup")


def cosine(base_lr: float, total_steps: int) -> List[float]:
    return [base_lr * 0.5 * (1.0 + math.cos(math.pi * i / total_steps)) for i in range(total_steps)]


def poly(base_lr: float, total_steps: int, power: float = 0.9, end_lr: float = 0.0) -> List[float]:
    return [(base_lr - end_lr) * (1.0 - i / total_steps) ** power + end_lr for i in range(total_steps)]


def exponential(base_lr: float, total_steps: int, decay_rate: float = 0.8,
                decay_steps: int = 450) -> List[float]:
    """Staircase decay: base · rate^(i // decay_steps)."""
    return [base_lr * decay_rate ** (i // decay_steps) for i in range(total_steps)]


def cosine_warmup(base_lr: float, total_steps: int, warmup_steps: int) -> List[float]:
    """Linear warmup over `warmup_steps`, then the recipe's scaled cosine (0.47 of a period) plus 1e-5."""
    out = []
    decay_steps = total_steps - warmup_steps
    for i in range(total_steps):
        if i < warmup_steps:
            out.append(base_lr * (i + 1) / warmup_steps)
        else:
            frac = (total_steps - i) / decay_steps
            out.append(base_lr * (frac * 0.5 * (1.0 + math.cos(2 * math.pi * 0.47 * i / decay_steps)) + 1e-5))
    return out


def learning_rates(lr_type: str, base_lr: float, steps_per_epoch: int, epochs: int, *,
                   warmup_epochs: int = 10, decay_rate: float = 0.8, decay_steps: int = 450) -> List[float]:
    """The schedule of `lr_type` over `epochs` epochs of `steps_per_epoch` steps."""
    if lr_type not in LR_TYPES:
        raise ValueError(f"lr type {lr_type!r} is not one of {', '.join(LR_TYPES)}")
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps per epoch ({steps_per_epoch}) and epochs ({epochs}) must be at least 1")
    total = steps_per_epoch * epochs
    if lr_type == "cos":
        return cosine(base_lr, total)
    if lr_type == "poly":
        return poly(base_lr, total)
    if lr_type == "exp":
        if decay_steps < 1:
            raise ValueError(f"lr decay step must be at least 1, got {decay_steps}")
        return exponential(base_lr, total, decay_rate, decay_steps)
    warmup = warmup_epochs * steps_per_epoch
    if not 0 < warmup < total:
        raise ValueError(f"cos_warmup needs 0 < warmup epochs ({warmup_epochs}) < epochs ({epochs})")
    return cosine_warmup(base_lr, total, warmup)
