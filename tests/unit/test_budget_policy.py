"""The budget cap as pure decisions (orchestrator/cost/budget.py)."""

from orchestrator.config.schema import BudgetConfig
from orchestrator.cost.budget import Spend, over_cap, restart_allowed, stop_before_next_step


def test_max_usd_stops_before_the_step_that_would_cross_it():
    cap = BudgetConfig(max_usd=1.0)
    spent = Spend(usd=0.90, hours=0.1)
    # 360 s at $1/h = $0.10: 0.90 + 0.10 is not over 1.0; one second more is
    assert stop_before_next_step(cap, spent, 300, 60, usd_per_hour=1.0) is None
    assert stop_before_next_step(cap, spent, 301, 60, usd_per_hour=1.0) == "max_usd"


def test_max_hours_is_time_itself_even_at_zero_dollars_an_hour():
    cap = BudgetConfig(max_hours=1.0)
    spent = Spend(usd=0.0, hours=0.99)
    assert stop_before_next_step(cap, spent, 10, 10, usd_per_hour=0.0) is None  # 0.99 h + 20 s
    assert stop_before_next_step(cap, spent, 30, 20, usd_per_hour=0.0) == "max_hours"


def test_no_cap_never_stops_and_restart_stops_at_the_cap():
    assert stop_before_next_step(BudgetConfig(), Spend(1e9, 1e9), 1e9, 0, 1e9) is None
    assert restart_allowed(BudgetConfig(max_usd=5), Spend(4.99, 100)) is None
    assert restart_allowed(BudgetConfig(max_usd=5), Spend(5.0, 0)) == "max_usd"
    assert restart_allowed(BudgetConfig(max_hours=2), Spend(0, 2.0)) == "max_hours"


def test_spend_after_adds_dollars_and_hours():
    s = Spend(1.0, 0.5).after(1800, usd_per_hour=4.0)
    assert (s.usd, s.hours) == (3.0, 1.0)
    assert over_cap(BudgetConfig(max_usd=2.9), s) == "max_usd"
