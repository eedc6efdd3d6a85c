"""The budget cap as pure decisions: what the loop and the launcher carry out.

A run's spend is in dollars and in cluster wall-clock hours, both summed over every launch of
the run. `budget.max_usd` caps the first and `budget.max_hours` the second, each on its own (a
$0/h local cluster still stops on time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.contract.records import Spend

if TYPE_CHECKING:  # a type only
    from orchestrator.config.schema import BudgetConfig


def over_cap(cap: BudgetConfig, spend: Spend) -> str | None:
    """The cap `spend` crosses ("max_usd" / "max_hours"), or None."""
    if cap.max_usd is not None and spend.usd > cap.max_usd:
        return "max_usd"
    if cap.max_hours is not None and spend.hours > cap.max_hours:
        return "max_hours"
    return None


def stop_before_next_step(
    cap: BudgetConfig, spent: Spend, next_step_s: float, stop_s: float, usd_per_hour: float,
    after_usd: float = 0.0,
) -> str | None:  # fmt: skip
    """Stop now if the next step plus stopping (a save and tear-down, `stop_s`, then
    `after_usd` paid after the launch: its nodes until the autoscaler removes them) would cross
    a cap: the run's bill then ends inside it. Returns the cap, or None to go on."""
    end = spent.after(next_step_s + stop_s, usd_per_hour)
    return over_cap(cap, Spend(end.usd + after_usd, end.hours))


def restart_allowed(cap: BudgetConfig, spent: Spend) -> str | None:
    """After a failed try: None to restart, else the cap already reached (a restart would only
    spend past it)."""
    if cap.max_usd is not None and spent.usd >= cap.max_usd:
        return "max_usd"
    if cap.max_hours is not None and spent.hours >= cap.max_hours:
        return "max_hours"
    return None
