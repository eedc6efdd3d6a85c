"""The loop's cost meter (cost/meter.py) and the pretraining summary (plan/summary.py)."""

import time

import pytest

from orchestrator.config.schema import BudgetConfig
from orchestrator.cost.meter import CostMeter
from orchestrator.plan.summary import pretrain_summary
from orchestrator.storage.layout import RunContext, RunStorage


def _ctx(usd_before=1.0, price=3600.0, started_s_ago=10.0, hours_before=0.0):
    return RunContext(
        storage=RunStorage("/tmp/x", "job", "run", "/tmp/x/ckpt", "/tmp/x/scratch"),
        data_url="/tmp/x/.data/k",
        tracking_uri="sqlite:///x.db",
        mlflow_run_id="r",
        attempt=2,
        attempt_start_time=time.time() - started_s_ago,
        usd_before_attempt=usd_before,
        price_per_hour_usd=price,  # $1 per second
        config_hash="h",
        hours_before_attempt=hours_before,
    )


def test_spent_sums_earlier_launches_and_this_one():
    spent = CostMeter(_ctx(), BudgetConfig()).spent()
    assert spent.usd == pytest.approx(11.0, abs=0.5)
    assert spent.hours == pytest.approx(10 / 3600, abs=1e-3)


def test_budget_stop_counts_the_next_step_the_stop_save_and_tear_down():
    meter = CostMeter(_ctx(), BudgetConfig(max_usd=40.0, teardown_s=20.0))
    assert meter.budget_stop(next_step_s=1.0, save_s=2.0) is None  # 11 + 1 + 2 + 20 = 34
    assert meter.budget_stop(next_step_s=1.0, save_s=10.0) == "max_usd"  # 42 > 40
    assert CostMeter(_ctx(), BudgetConfig()).budget_stop(1e9, 1e9) is None  # no cap
    hours = CostMeter(_ctx(hours_before=1.0), BudgetConfig(max_hours=1.001, teardown_s=0))
    assert hours.budget_stop(next_step_s=0.0, save_s=0.0) is not None  # 1 h + 10 s > 1.001 h


def test_the_stop_keeps_room_for_the_nodes_until_they_scale_down():
    """On an autoscaling cluster the nodes outlive the launch by the idle timeout, billed to
    the run: the cap's stop comes that much earlier, and the projection includes it."""
    ctx = _ctx()
    ctx.scale_down_s = 10.0  # $10 at $1/s
    meter = CostMeter(ctx, BudgetConfig(max_usd=40.0, teardown_s=20.0))
    assert meter.scale_down_usd == pytest.approx(10.0)
    assert (
        CostMeter(_ctx(), BudgetConfig(max_usd=40.0, teardown_s=20.0)).budget_stop(
            next_step_s=1.0, save_s=2.0
        )
        is None
    )  # 11 + 1 + 2 + 20 = 34
    assert meter.budget_stop(next_step_s=1.0, save_s=2.0) == "max_usd"  # + 10 = 44 > 40
    assert meter.projected_usd(0, 1.0, 0, 1.0) == pytest.approx(11.0 + 20 + 10, abs=0.5)
    hours = _ctx(hours_before=1.0)
    hours.scale_down_s = 1e6  # dollars only: launches' hours do not include the tail
    assert CostMeter(hours, BudgetConfig(max_hours=1.01, teardown_s=0)).budget_stop(0, 0) is None


def test_wasted_and_projected_dollars():
    meter = CostMeter(_ctx(), BudgetConfig(teardown_s=5.0))
    meter.set_lost(steps=3, seconds=6.0)
    assert meter.usd_wasted == pytest.approx(6.0)
    proj = meter.projected_usd(steps_left=10, step_s=2.0, saves_left=2, save_s=1.5)
    assert proj == pytest.approx(11.0 + 20 + 3 + 5, abs=0.5)
    m = meter.metrics(tokens_so_far=1_000_000, projected_usd=proj)
    assert m["cost/usd_per_1m_tokens"] == pytest.approx(m["cost/usd_total"])
    assert m["lost_steps"] == 3 and m["cost/usd_wasted"] == pytest.approx(6.0)


def test_pretrain_summary():
    s = pretrain_summary(
        n_params=1000, tokens_planned=20_000, tokens_trained=10_000, data_epochs=0.5
    )
    assert s["pretrain/tokens_per_param"] == 10 and s["pretrain/fit_in_range"] == 0.0
    assert s["pretrain/predicted_loss_epoch_fit"] > 0
