"""The capacity policy (orchestrator/cost/capacity.py) as tables of situations -> decisions.

A 13B job on 2 x p4de.24xlarge: spot $19.21/h for the pair, on demand $81.94/h, a head at
$0.384/h; 1000 steps left at 6.0 s a step on both nodes (1.67 h), 11.0 s on one."""

from __future__ import annotations

import pytest

from orchestrator.cost.capacity import (
    Move,
    Option,
    Situation,
    decide,
    expected_wait_s,
    may_grow,
    price,
)

HEAD = 0.384


def wait(delay_s: float) -> Option:
    return Option(Move.WAIT, "p4de spot x 2", 19.21, 6.0, delay_s)


def shrink(back_after_s: float) -> Option:
    """One node now; both again (a 300 s restart) once the capacity is expected back."""
    full = Option(Move.WAIT, "p4de spot x 2", 19.21, 6.0, 300.0)
    return Option(Move.SHRINK, "p4de spot x 1", 9.605, 11.0, 300.0, full, back_after_s)


ON_DEMAND = Option(Move.ON_DEMAND, "p4de on-demand x 2", 81.94, 6.0, 600.0)
SHRINK = shrink(6 * 3600)
SWITCH = Option(Move.SWITCH, "p4d spot x 2 (40 GB, micro-batch 2)", 17.5, 7.5, 900.0)


@pytest.mark.parametrize(
    "options, time_left_h, budget, move",
    [
        # a short wait for spot beats every alternative (shrinking for 10 min, then a restart)
        ((wait(600), ON_DEMAND, shrink(600)), None, None, Move.WAIT),
        # a long wait with no deadline: waiting costs the head only, still the cheapest
        ((wait(6 * 3600), ON_DEMAND), None, None, Move.WAIT),
        # the same wait misses a 4 h deadline: on demand meets it
        ((wait(6 * 3600), ON_DEMAND), 4.0, None, Move.ON_DEMAND),
        # shrinking to one node meets the deadline and is cheaper than on demand
        ((wait(6 * 3600), ON_DEMAND, SHRINK), 4.0, None, Move.SHRINK),
        # another node type with capacity: faster than shrinking and cheaper than on demand
        ((wait(6 * 3600), ON_DEMAND, SWITCH), 4.0, None, Move.SWITCH),
        # a deadline nothing meets: the soonest done the budget pays
        ((wait(6 * 3600), ON_DEMAND, SHRINK), 1.0, None, Move.ON_DEMAND),
        ((wait(6 * 3600), ON_DEMAND, SHRINK), 1.0, 100.0, Move.SHRINK),
        # a budget that pays for nothing: stop
        ((wait(600), ON_DEMAND), None, 5.0, Move.STOP),
        # on demand meets the deadline but the budget only pays the (late) wait
        ((wait(6 * 3600), ON_DEMAND), 4.0, 50.0, Move.WAIT),
    ],
)
def test_decisions(options, time_left_h, budget, move):
    s = Situation(1000, options, HEAD, None if time_left_h is None else time_left_h * 3600.0,
                  budget)  # fmt: skip
    d = decide(s)
    assert d.move == move, d.message
    assert str(move) in d.message


def test_the_numbers_behind_a_decision():
    s = Situation(1000, (wait(6 * 3600), ON_DEMAND), HEAD, 4 * 3600.0)
    waiting, on_demand = (price(o, s) for o in s.options)
    assert waiting.hours == pytest.approx(6 + 1000 * 6 / 3600)
    assert waiting.usd == pytest.approx(1000 * 6 / 3600 * 19.21 + waiting.hours * HEAD)
    assert on_demand.usd == pytest.approx(1000 * 6 / 3600 * 81.94 + on_demand.hours * HEAD)
    d = decide(s)
    assert d.message == (
        "on_demand: p4de on-demand x 2: 1.83 h, $137.27 (the cheapest that meets the deadline); "
        "vs p4de spot x 2: 7.67 h, $34.96"
    )


def test_a_shrunk_run_is_priced_until_it_grows_back():
    s = Situation(1000, (shrink(1100.0),), HEAD)
    p = price(s.options[0], s)
    # 100 steps on one node (1100 s), a 300 s restart, 900 steps on two
    assert p.hours == pytest.approx((300 + 1100 + 300 + 900 * 6.0) / 3600)
    workers = 1100 / 3600 * 9.605 + (300 + 900 * 6.0) / 3600 * 19.21
    assert p.usd == pytest.approx(workers + p.hours * HEAD)


def test_the_expected_rest_of_a_wait_grows_with_the_wait():
    assert expected_wait_s(300.0, 0.0) == 300.0
    assert expected_wait_s(300.0, 3600.0) == 3600.0


@pytest.mark.parametrize(
    "steps_left, checkpoint_age_s, grow",
    [
        (1000, 60.0, True),  # 5000 s gained, 300 + 60 s lost
        (1000, 4800.0, False),  # the last checkpoint is too old: 5100 s lost
        (50, 60.0, False),  # too little left to gain from it
    ],
)
def test_growing_back_only_pays_after_a_recent_checkpoint(steps_left, checkpoint_age_s, grow):
    assert may_grow(steps_left, 11.0, 6.0, 300.0, checkpoint_age_s) is grow


def test_the_launchers_inputs_from_the_catalog_and_the_run():
    """need_for: the job's prices per node count, the deadline and budget left; no policy where
    the catalog cannot price waiting (no spot price for the instance type)."""
    from orchestrator.compose.load import compose
    from orchestrator.launch.autoscale import need_for

    cfg = compose("vicuna", "full", ["budget.deadline_hours=10", "budget.max_usd=300"])
    n = need_for(cfg, 1000, 6.0, spent_usd=100.0, spent_hours=4.0)
    price = cfg.cost.instances[cfg.hardware.instance_type]
    assert n is not None and n.spot_usd_per_hour == price.spot_per_hour_usd
    assert n.on_demand_usd_per_hour == price.on_demand_per_hour_usd
    assert n.time_left_s == pytest.approx(6 * 3600) and n.budget_left_usd == 200.0
    waiting = n.situation(waited_s=7200.0).options[0]
    assert waiting.move == Move.WAIT and waiting.delay_s == 7200.0  # the rest: as long again
    assert need_for(compose("vicuna", "local"), 10, 1.0, 0.0, 0.0) is None  # no spot price
