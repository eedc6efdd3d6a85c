"""The cost meter a training loop carries: what the run has spent, what it will spend at the
pace measured so far, what preemptions wasted, and whether the next step may run under the
budget. The decisions are `budget.py`'s pure policies; the money comes from `RunContext.spent`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orchestrator.cost.budget import Spend, stop_before_next_step

if TYPE_CHECKING:
    from orchestrator.config.schema import BudgetConfig
    from orchestrator.storage.layout import RunContext


class CostMeter:
    def __init__(self, ctx: RunContext, budget: BudgetConfig) -> None:
        self.ctx = ctx
        self.budget = budget
        self.lost_steps = 0
        self.lost_s = 0.0
        """Seconds of paid work redone after preemptions and crashes (priced as wasted)."""

    def spent(self) -> Spend:
        """Dollars and cluster hours of the run so far (every launch)."""
        return self.ctx.spent(time.time())

    @property
    def usd_per_hour(self) -> float:
        return self.ctx.price_per_hour_usd

    def set_lost(self, steps: int, seconds: float) -> None:
        """Work after the checkpoint a run resumed from (and earlier redone work)."""
        self.lost_steps, self.lost_s = steps, seconds

    @property
    def usd_wasted(self) -> float:
        return self.lost_s / 3600.0 * self.usd_per_hour

    @property
    def scale_down_usd(self) -> float:
        """What the nodes cost after the launch until the autoscaler removes them (the bill's
        scale-down tail; at the cluster's rate, head included: a cap errs on the safe side)."""
        return self.ctx.scale_down_s / 3600.0 * self.usd_per_hour

    def projected_usd(
        self, steps_left: int, step_s: float, saves_left: int, save_s: float
    ) -> float:
        """Spent so far + the remaining steps, saves, tear-down and scale-down at the measured
        pace."""
        left_s = steps_left * step_s + saves_left * save_s + self.budget.teardown_s
        return self.spent().usd + left_s / 3600.0 * self.usd_per_hour + self.scale_down_usd

    def budget_stop(self, next_step_s: float, save_s: float) -> str | None:
        """The cap the next step (of `next_step_s`, a save included when one is due) plus
        stopping (a save of `save_s` and tear-down) would cross, or None to go on."""
        b = self.budget
        if b.max_usd is None and b.max_hours is None:
            return None
        return stop_before_next_step(
            b,
            self.spent(),
            next_step_s=next_step_s,
            stop_s=save_s + b.teardown_s,
            usd_per_hour=self.usd_per_hour,
            after_usd=self.scale_down_usd,
        )

    def metrics(self, tokens_so_far: int, projected_usd: float) -> dict[str, float]:
        usd = self.spent().usd
        return {
            "cost/usd_total": usd,
            "cost/usd_per_hour": self.usd_per_hour,
            "cost/usd_per_1m_tokens": usd / max(1, tokens_so_far) * 1e6,
            "cost/usd_wasted": self.usd_wasted,
            "cost/usd_projected_total": projected_usd,
            "lost_steps": float(self.lost_steps),
            "lost_time_s": self.lost_s,
        }
