"""The checkpoint interval policy, as pure functions."""

import math

import pytest

from orchestrator.checkpoint.policy import Interval, observed_mtbf_s, young_daly_interval_s


def expected_overhead(tau: float, save_s: float, mtbf_s: float) -> float:
    """Daly's (2006) exact model: wall time per unit of useful work, exponential failures,
    checkpoint cost C after every tau seconds of work, half an interval lost on average."""
    return mtbf_s * (math.exp((tau + save_s) / mtbf_s) - 1.0) / tau


def numeric_optimum(save_s: float, mtbf_s: float) -> float:
    lo, hi = 1e-3, 10 * mtbf_s  # golden-section search on a unimodal function
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if expected_overhead(a, save_s, mtbf_s) < expected_overhead(b, save_s, mtbf_s):
            hi = b
        else:
            lo = a
    return (lo + hi) / 2


@pytest.mark.parametrize(
    "save_s,mtbf_s",
    [(5, 6 * 3600), (60, 6 * 3600), (300, 3600), (30, 600), (2, 120)],
)
def test_young_daly_matches_a_numeric_minimisation_of_the_waste(save_s, mtbf_s):
    closed = young_daly_interval_s(save_s, mtbf_s)
    best = numeric_optimum(save_s, mtbf_s)
    assert closed == pytest.approx(best, rel=0.02)
    # and the waste at the closed form is within 0.1% of the best possible
    w_closed = expected_overhead(closed, save_s, mtbf_s)
    assert w_closed <= expected_overhead(best, save_s, mtbf_s) * 1.001


def test_young_first_order_when_saves_are_cheap():
    assert young_daly_interval_s(1.0, 1e7) == pytest.approx(math.sqrt(2 * 1.0 * 1e7), rel=1e-3)


def test_bad_inputs_and_saves_longer_than_a_node_lives():
    with pytest.raises(ValueError):
        young_daly_interval_s(0, 100)
    with pytest.raises(ValueError):
        young_daly_interval_s(10, -1)
    assert young_daly_interval_s(500, 100) == 100


def test_observed_mtbf_starts_at_the_prior_and_follows_the_run():
    assert observed_mtbf_s(6 * 3600, 0, 0) == 6 * 3600
    # 3 preemptions in 2 hours: the estimate moves from 6 h toward 40 minutes
    m = observed_mtbf_s(6 * 3600, 2 * 3600, 3)
    assert m == pytest.approx((6 + 2) * 3600 / 4)
    assert observed_mtbf_s(6 * 3600, 2 * 3600, 30) < m


def test_save_due_by_steps():
    iv = Interval("steps", every_steps=5, every_minutes=None, mtbf_hours=6)
    due = [s for s in range(1, 21) if iv.save_due(s, 5 * ((s - 1) // 5), 0.0, 1.0, 0.0, 0)]
    assert due == [5, 10, 15, 20]
    assert not iv.save_due(5, 5, 1e9, 1.0, 0.0, 0)  # never twice for one step


def test_save_due_by_minutes():
    iv = Interval("minutes", every_steps=1000, every_minutes=2.0, mtbf_hours=6)
    assert iv.seconds(None, 0, 0) == 120
    assert not iv.save_due(7, 0, 119.0, None, 0, 0)
    assert iv.save_due(7, 0, 120.0, None, 0, 0)


def test_auto_counts_steps_until_it_has_measured_a_save_then_follows_young_daly():
    iv = Interval("auto", every_steps=10, every_minutes=None, mtbf_hours=1.0)
    assert iv.seconds(None, 0, 0) is None
    assert iv.save_due(10, 0, 0.5, None, 0, 0) and not iv.save_due(9, 0, 1e6, None, 0, 0)
    target = iv.seconds(2.0, 0, 0)
    assert target == pytest.approx(young_daly_interval_s(2.0, 3600))
    assert not iv.save_due(3, 0, target - 1, 2.0, 0, 0)
    assert iv.save_due(3, 0, target, 2.0, 0, 0)
    # preemptions observed: shorter interval
    assert iv.seconds(2.0, 3600, 5) < target
    # slower saves: longer interval
    assert iv.seconds(8.0, 0, 0) > target


def test_an_emergency_save_is_tried_only_when_measured_saves_fit_the_notice(tmp_path):
    """The spot notice leaves ~2 minutes: a save measured to take longer is not started (a
    half-written checkpoint is worth nothing), the interval checkpoint is the resume point."""
    from orchestrator.checkpoint.io import Checkpointer

    ck = Checkpointer(str(tmp_path / "ck"), staging=tmp_path / "st", keep_last=1)
    assert ck.save_fits(100.0)  # nothing measured yet: try
    ck.stats.persist_s = [40.0, 130.0, 60.0]
    assert not ck.save_fits(100.0)  # the slowest of the last three decides
    ck.stats.persist_s = [40.0, 45.0]
    assert ck.save_fits(100.0)
    ck._pending = object()  # a save still in flight must finish first
    assert not ck.save_fits(80.0) and ck.save_fits(90.0)
    ck._pending = None
