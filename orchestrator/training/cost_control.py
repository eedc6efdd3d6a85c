"""Cost control, one part of the trainer: after every step, what every rank does next.

The trainer asks once per step (`decide`); rank 0 owns the time-based policies, so ranks never
diverge: the checkpoint interval (`checkpoint/policy.py: Interval`) and the budget cap
(`cost/meter.py`, `cost/budget.py`: would the next step, a save due now, and stopping cross
`budget.max_usd` / `max_hours`?); any rank may hold a spot notice (SIGTERM, the metadata
endpoint, a Ray drain: `checkpoint/notice.py`). The three flags are agreed in one MAX
collective, passed in as `agree` so that this part is tested without a process group or a
model (tests/unit/test_cost_control.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.checkpoint.policy import Interval
from orchestrator.cost.meter import CostMeter


@dataclass(frozen=True)
class Control:
    """The ranks' agreement after a step (one collective): save, stop for the budget, notice."""

    save: bool
    budget_stop: bool
    notice: bool


@dataclass
class CostControl:
    meter: CostMeter
    interval: Interval
    notice: Callable[[], Any]
    """This rank's spot notice, or None (NoticeWatcher.notice)."""
    save_blocked_s: Callable[[], list[float]]
    """Seconds training was blocked by each save so far (the checkpointer's stats)."""
    say: Callable[[str], None] = print
    started_at: float = field(default_factory=time.time)
    """When this process started (the interval's observed MTBF counts from it)."""
    checkpoint_s: list[float] = field(default_factory=list)
    """Seconds each save took until committed (what stopping costs)."""
    preemptions: int = 0

    def recent_save_s(self) -> float | None:
        return max(self.save_blocked_s()[-3:], default=None)

    def decide(
        self,
        *,
        rank: int,
        step: int,
        last_save_step: int,
        since_save_s: float,
        step_times: list[float],
        agree: Callable[[list[int]], list[int]],
    ) -> tuple[Control, Any]:
        """(what every rank does next, this rank's notice or None)."""
        save = budget = 0
        if rank == 0:
            save = int(
                self.interval.save_due(
                    step,
                    last_save_step,
                    since_save_s,
                    self.recent_save_s(),
                    run_s=time.time() - self.started_at,
                    preemptions=self.preemptions,
                )
            )
            budget = int(self.budget_stop(step_times, saving=bool(save)))
        notice = self.notice()
        flags = agree([save, budget, int(notice is not None)])
        return Control(
            save=bool(flags[0]), budget_stop=bool(flags[1]), notice=bool(flags[2])
        ), notice

    def budget_stop(self, step_times: list[float], saving: bool) -> bool:
        """Rank 0: would the next step (after the save now due, if any) plus stopping cross
        budget.max_usd / max_hours? The meter decides (cost/meter.py, cost/budget.py)."""
        save_s = max(self.checkpoint_s, default=0.0)
        next_s = (max(step_times[-5:]) if step_times else 0.0) + (save_s if saving else 0.0)
        cap = self.meter.budget_stop(next_s, save_s)
        if cap is not None:
            spent = self.meter.spent()
            self.say(
                f"budget: the next step would cross {cap}={getattr(self.meter.budget, cap)} "
                f"(spent ${spent.usd:.4f}, {spent.hours:.3f} h); saving and stopping"
            )
        return cap is not None

    def interval_steps(self, recent_step_s: list[float]) -> int:
        """The checkpoint interval in steps, at the current pace (for projections and logs)."""
        seconds = self.interval.seconds(
            self.recent_save_s(), time.time() - self.started_at, self.preemptions
        )
        if seconds is None or not recent_step_s:
            return self.interval.every_steps
        return max(1, round(seconds / (sum(recent_step_s) / len(recent_step_s))))

    def projected_usd(self, step: int, total_steps: int, step_times: list[float]) -> float:
        """The bill at the pace measured so far: remaining steps, saves and tear-down."""
        recent = step_times[-20:] or [0.0]
        saves_left = (total_steps - step) // self.interval_steps(recent) + 1
        return self.meter.projected_usd(
            total_steps - step,
            sum(recent) / len(recent),
            saves_left,
            max(self.checkpoint_s, default=0.0),
        )
