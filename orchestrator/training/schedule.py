"""Learning-rate schedules as pure functions of the step (so resume needs no scheduler state)."""

from __future__ import annotations

import math


def warmup_steps_for(total_steps: int, warmup_ratio: float, warmup_steps: int | None) -> int:
    if warmup_steps is not None:
        return min(warmup_steps, total_steps)
    return math.ceil(total_steps * warmup_ratio)


def lr_at(
    step: int,
    *,
    peak_lr: float,
    total_steps: int,
    warmup: int,
    schedule: str,
    min_lr_ratio: float = 0.0,
) -> float:
    """LR used for optimizer step `step` (0-based): linear warmup from peak/warmup to peak over
    `warmup` steps (as HF's get_cosine_schedule_with_warmup, but never 0 at step 0), then
    cosine/linear decay to `min_lr_ratio * peak` at the last step, or constant."""
    if warmup > 0 and step < warmup:
        return peak_lr * (step + 1) / warmup
    if schedule == "constant":
        return peak_lr
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    if schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        factor = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * factor)
