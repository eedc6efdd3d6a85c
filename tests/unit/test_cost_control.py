"""The trainer's cost-control part (training/cost_control.py) without a model or a process
group: save / budget stop / spot notice decided on rank 0 or any rank, agreed by one MAX."""

from __future__ import annotations

import time

from orchestrator.checkpoint.policy import Interval
from orchestrator.config.schema import BudgetConfig
from orchestrator.cost.meter import CostMeter
from orchestrator.training.cost_control import Control, CostControl
from tests.unit.test_cost_meter import _ctx


class Ranks:
    """What the collective sees: each call is one rank's flags; MAX over every rank's."""

    def __init__(self, others: list[list[int]]) -> None:
        self.others = others

    def __call__(self, flags: list[int]) -> list[int]:
        return [max(col) for col in zip(flags, *self.others, strict=True)]


def control(max_usd=None, every_steps=10, notice=None, others=(), step=5, rank=0, spent_s=10.0,
            step_times=(1.0,)):  # fmt: skip
    meter = CostMeter(_ctx(usd_before=0.0, price=3600.0, started_s_ago=spent_s),
                      BudgetConfig(max_usd=max_usd, teardown_s=0.0))  # fmt: skip
    said: list[str] = []
    cc = CostControl(meter, Interval("steps", every_steps, None, 24.0), notice=lambda: notice,
                     save_blocked_s=lambda: [0.5], say=said.append)  # fmt: skip
    out, got = cc.decide(rank=rank, step=step, last_save_step=0, since_save_s=1.0,
                         step_times=list(step_times), agree=Ranks([list(o) for o in others]))  # fmt: skip
    return out, got, said


def test_nothing_to_do():
    out, notice, said = control()
    assert out == Control(save=False, budget_stop=False, notice=False) and notice is None
    assert not said


def test_a_save_is_due_on_the_interval():
    assert control(step=10)[0].save and not control(step=9)[0].save


def test_the_budget_stops_before_the_step_that_would_cross_it():
    # $1 per second, $10 spent: a cap of $10.5 cannot pay a 1 s step; $100 can
    out, _, said = control(max_usd=10.5)
    assert out.budget_stop and "max_usd=10.5" in said[0] and "saving and stopping" in said[0]
    assert not control(max_usd=100.0)[0].budget_stop


def test_only_rank_0_decides_time_based_policies_and_every_rank_agrees():
    out, _, said = control(max_usd=10.5, step=10, rank=1)
    assert out == Control(False, False, False) and not said  # rank 1 does not decide
    out, _, _ = control(rank=1, others=[[1, 1, 0]])  # rank 0's decision reaches rank 1
    assert out.save and out.budget_stop


def test_a_notice_on_any_rank_reaches_all():
    out, notice, _ = control(notice="sigterm", rank=1)
    assert out.notice and notice == "sigterm"
    assert control(others=[[0, 0, 1]])[0].notice


def test_projection_counts_the_remaining_steps_and_saves():
    meter = CostMeter(_ctx(usd_before=0.0, price=3600.0, started_s_ago=0.0),
                      BudgetConfig(teardown_s=0.0))  # fmt: skip
    cc = CostControl(meter, Interval("steps", 10, None, 24.0), notice=lambda: None,
                     save_blocked_s=list, started_at=time.time(), checkpoint_s=[2.0])  # fmt: skip
    # 20 steps left at 1 s, 3 saves (20 // 10 + 1) of 2 s: ~26 s = ~$26
    assert abs(cc.projected_usd(80, 100, [1.0] * 5) - 26.0) < 0.5
    assert cc.interval_steps([1.0]) == 10
