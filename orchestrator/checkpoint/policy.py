"""When to checkpoint: every N steps, every M minutes, or `auto` (Young/Daly).

A preemption loses the work since the last checkpoint (half an interval on average) plus the
restart; each save costs its duration. For save time C and mean time between preemptions M, the
interval that minimises the expected waste is Young's sqrt(2*C*M) (Daly's refinement differs
only when C is a sizeable part of M). `auto` measures C from the saves it has done and takes M
from the config, updated by the preemptions this run has actually seen: the configured MTBF is
counted as one prior observation, so M = (mtbf_config + run_time) / (1 + preemptions).

Pure functions: the training loop asks `save_due` each step (on rank 0) and logs `interval_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INTERVAL_MODES = ("steps", "minutes", "auto")


def young_daly_interval_s(save_s: float, mtbf_s: float) -> float:
    """sqrt(2*C*M), with Daly's higher-order correction when C is not << M."""
    if save_s <= 0 or mtbf_s <= 0:
        raise ValueError("save time and MTBF must be positive")
    if save_s >= 2 * mtbf_s:
        return mtbf_s  # saving takes longer than the node lives: save as often as it lives
    # Daly (2006): sqrt(2CM) * [1 + 1/3 sqrt(C/2M) + C/(18M)] - C
    x = math.sqrt(save_s / (2 * mtbf_s))
    return math.sqrt(2 * save_s * mtbf_s) * (1 + x / 3 + save_s / (18 * mtbf_s)) - save_s


def observed_mtbf_s(mtbf_config_s: float, run_s: float, preemptions: int) -> float:
    """Mean time between preemptions: the configured value as one prior observation, updated
    by what this run has seen (run_s seconds of paid time with `preemptions` interruptions)."""
    return (mtbf_config_s + max(0.0, run_s)) / (1 + max(0, preemptions))


@dataclass(frozen=True)
class Interval:
    mode: str
    every_steps: int
    every_minutes: float | None
    mtbf_hours: float

    def seconds(self, save_s: float | None, run_s: float, preemptions: int) -> float | None:
        """The target time between saves (None: count steps only)."""
        if self.mode == "minutes":
            return (self.every_minutes or 0.0) * 60.0
        if self.mode == "auto" and save_s:
            mtbf = observed_mtbf_s(self.mtbf_hours * 3600.0, run_s, preemptions)
            return young_daly_interval_s(save_s, mtbf)
        return None

    def save_due(
        self,
        step: int,
        last_save_step: int,
        since_save_s: float,
        save_s: float | None,
        run_s: float,
        preemptions: int,
    ) -> bool:
        """Whether to save after `step`. `auto` saves by steps until it has measured a save."""
        if step <= last_save_step:
            return False
        seconds = self.seconds(save_s, run_s, preemptions)
        if seconds is None:
            return step - last_save_step >= self.every_steps
        return since_save_s >= seconds
