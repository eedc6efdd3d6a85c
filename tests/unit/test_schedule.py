import math

import pytest

from orchestrator.training.schedule import lr_at, warmup_steps_for


def test_warmup_is_linear_and_never_zero():
    lrs = [lr_at(s, peak_lr=1.0, total_steps=100, warmup=4, schedule="cosine") for s in range(4)]
    assert lrs == [0.25, 0.5, 0.75, 1.0]


def test_cosine_decays_to_min_at_the_end():
    kw = dict(peak_lr=2.0, total_steps=104, warmup=4, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(4, **kw) == pytest.approx(2.0)
    assert lr_at(54, **kw) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert lr_at(104, **kw) == pytest.approx(0.2)
    vals = [lr_at(s, **kw) for s in range(4, 105)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_linear_and_constant():
    assert lr_at(50, peak_lr=1.0, total_steps=100, warmup=0, schedule="linear") == pytest.approx(
        0.5
    )
    assert lr_at(99, peak_lr=1.0, total_steps=100, warmup=0, schedule="constant") == 1.0


def test_warmup_steps_from_ratio_or_explicit():
    assert warmup_steps_for(1000, 0.03, None) == 30
    assert warmup_steps_for(10, 0.03, None) == math.ceil(0.3)
    assert warmup_steps_for(1000, 0.03, 100) == 100
