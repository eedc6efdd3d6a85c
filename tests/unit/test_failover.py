"""Equivalent hardware to fail over to (orchestrator/launch/failover.py): each alternative is the
job on that block's machine at the largest micro-batch the fit check allows, priced by the
catalog; one that fits at no micro-batch is kept out with its reason; a bad name is refused."""

from __future__ import annotations

import pytest

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.cost.estimator import project
from orchestrator.launch.failover import alternatives


def test_an_80gb_job_fails_over_to_40gb_cards_at_a_batch_that_fits():
    cfg = compose("vicuna", "full")
    assert cfg.hardware.alternatives == ["a100_40gb_x8", "h100_x8"]  # the block's own list
    alt, h100 = alternatives(cfg)
    hw = alt.cfg.hardware
    assert (hw.instance_type, hw.accelerator, hw.market) == ("p4d.24xlarge", "A100-40GB", "spot")
    assert alt.cfg.train.global_batch_size == cfg.train.global_batch_size  # the same training
    assert hw.head_instance_type == cfg.hardware.head_instance_type and not hw.alternatives
    own, there = project(cfg), project(alt.cfg)
    assert there.usd < own.usd  # the catalog prices it (p4d costs less per hour)
    # then 8 x H100 (p5.48xlarge): faster, dearer per hour, at the job's own micro-batch
    assert h100.cfg.hardware.instance_type == "p5.48xlarge"
    assert h100.cfg.train.micro_batch_size == cfg.train.micro_batch_size
    fast = project(h100.cfg)
    assert fast.hours < own.hours and fast.usd / fast.hours > own.usd / own.hours
    # a 13B evaluation's weights and KV cache do not fit 40 GB cards: kept out, with why
    ev, ev_h100 = alternatives(compose("koala", "full", ["stage=eval"]))
    assert ev.cfg is None and "would not fit on A100-40GB" in ev.why
    assert ev_h100.cfg is not None  # 80 GB cards: it fits


def test_a_smaller_card_gets_a_smaller_micro_batch():
    """Vicuna at 8 sequences of 2048 tokens per GPU: ~45 GiB on an 80 GB card; on 40 GB cards
    the largest that fits is 4 (the global batch of 64 is kept: twice the accumulation)."""
    cfg = compose("vicuna", "full", ["train.micro_batch_size=8", "train.global_batch_size=64"])
    alt = alternatives(cfg)[0]
    assert alt.cfg is not None and alt.cfg.train.micro_batch_size == 4
    assert alt.cfg.train.global_batch_size == 64


def test_an_unknown_alternative_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"hardware.alternatives 'h100_x99'.*have \["):
        alternatives(compose("vicuna", "full", ["hardware.alternatives=[h100_x99]"]))


def test_asked_again_each_caller_gets_its_own_copy_of_the_same_answer():
    # a launch asks several times; a fail-over then changes the job's config in place with
    # the alternative's hardware: what the next caller gets must not have changed with it
    cfg = compose("vicuna", "full")
    first = alternatives(cfg)
    cfg.hardware = first[0].cfg.hardware  # as supervise._fail_over does
    cfg.hardware.num_workers = 99
    again = alternatives(compose("vicuna", "full"))
    assert again[0].cfg.hardware.num_workers == 8
    assert [a.name for a in again] == ["a100_40gb_x8", "h100_x8"]
    # a job changed by its caller is a new question
    changed = compose("vicuna", "full", ["train.micro_batch_size=8", "train.global_batch_size=64"])
    assert alternatives(changed)[0].cfg.train.micro_batch_size == 4
