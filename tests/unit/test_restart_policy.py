"""The launcher's restart decision, without Ray (orchestrator/launch/restart.py)."""

from orchestrator.config.schema import BudgetConfig
from orchestrator.cost.budget import Spend
from orchestrator.launch.restart import Action, FailureKind, Tally, decide
from orchestrator.storage.layout import StopReason

APP, PRE = FailureKind.APP, FailureKind.PREEMPTION
NO_CAP = BudgetConfig()
SPENT = Spend(usd=1.0, hours=0.5)


def _decide(kind, tally, max_failures=2, max_preemptions=None, budget=NO_CAP, spent=SPENT):
    return decide(
        kind,
        tally,
        max_failures=max_failures,
        max_preemptions=max_preemptions,
        budget=budget,
        spent=spent,
    )


def test_application_errors_restart_up_to_max_failures_then_fail():
    assert _decide(APP, Tally(app_errors=1)).action == Action.RESTART
    assert _decide(APP, Tally(app_errors=2)).action == Action.RESTART
    d = _decide(APP, Tally(app_errors=3))
    assert d.action == Action.FAIL and d.stop_reason == StopReason.FAILED
    assert "train.max_failures=2" in d.message
    assert _decide(APP, Tally(app_errors=1), max_failures=0).action == Action.FAIL


def test_preemptions_restart_without_limit_unless_capped():
    assert _decide(PRE, Tally(preemptions=50)).action == Action.RESTART
    assert _decide(PRE, Tally(preemptions=3), max_preemptions=3).action == Action.RESTART
    d = _decide(PRE, Tally(preemptions=4), max_preemptions=3)
    assert d.action == Action.FAIL and "train.max_preemptions=3" in d.message


def test_preemptions_do_not_use_up_max_failures_and_app_errors_not_max_preemptions():
    assert _decide(PRE, Tally(preemptions=9, app_errors=2), max_failures=2).action == Action.RESTART
    t = Tally(preemptions=0, app_errors=1)
    assert _decide(APP, t, max_preemptions=0).action == Action.RESTART


def test_a_reached_budget_stops_cleanly_instead_of_restarting():
    d = _decide(PRE, Tally(preemptions=1), budget=BudgetConfig(max_usd=1.0))
    assert d.action == Action.STOP and d.stop_reason == StopReason.BUDGET
    assert "max_usd=1.0" in d.message
    d = _decide(APP, Tally(app_errors=1), budget=BudgetConfig(max_hours=0.5))
    assert d.action == Action.STOP and "max_hours" in d.message
    assert _decide(PRE, Tally(1), budget=BudgetConfig(max_usd=1.01)).action == Action.RESTART


def test_too_many_errors_fail_even_when_the_budget_is_spent():
    d = _decide(APP, Tally(app_errors=3), budget=BudgetConfig(max_usd=0.5))
    assert d.action == Action.FAIL


def test_tally_counts_by_kind():
    t = Tally().add(PRE).add(APP).add(PRE)
    assert (t.preemptions, t.app_errors, t.of(PRE), t.of(APP)) == (2, 1, 2, 1)
