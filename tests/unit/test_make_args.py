"""The Makefile's user values become argv, as data (orchestrator/make_args.py)."""

import pytest

from orchestrator.config.schema import ConfigError
from orchestrator.make_args import make_argv


def env(**kw):
    return {f"ORCH_{k}": v for k, v in kw.items()}


def test_launch_argv_keeps_every_value_one_argument():
    argv = make_argv(
        "launch",
        env(job="vicuna", run="x; rm -rf ~", set="optim.lr=1e-5 train.max_steps=$(id)", yes="1"),
    )
    assert argv == [
        "launch", "vicuna", "--run", "x; rm -rf ~",
        "--set", "optim.lr=1e-5 train.max_steps=$(id)", "--yes",
    ]  # fmt: skip


def test_defaults_and_variant():
    assert make_argv("launch", {}) == ["launch", "vicuna"]
    assert make_argv("estimate", env(job="cerebras_gpt", variant="1.3b", json="1")) == [
        "estimate", "cerebras_gpt", "--set", "variant=1.3b", "--json",
    ]  # fmt: skip


def test_required_values_are_named():
    with pytest.raises(ConfigError, match=r"make preflight: cluster= is required"):
        make_argv("preflight", env(job="vicuna"))
    with pytest.raises(ConfigError, match=r"id= is required"):
        make_argv("logs", env(cluster="aws-spot"))
    assert make_argv("logs", env(cluster="aws-spot", id="raysubmit_1", follow="1")) == [
        "cluster", "logs", "aws-spot", "--id", "raysubmit_1", "--follow",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="unknown target"):
        make_argv("rm", {})


def test_a_pipeline_stage_is_passed_on():
    assert make_argv("launch", env(job="piped", run="p1", stage="more")) == [
        "launch", "piped", "--run", "p1", "--stage", "more",
    ]  # fmt: skip


def test_repeated_set_flags_all_apply():
    from orchestrator.__main__ import _overrides

    assert _overrides(["optim.lr=1e-2", "train.max_steps=60 seed=1"]) == [
        "optim.lr=1e-2",
        "train.max_steps=60",
        "seed=1",
    ]
    assert _overrides("a=1 b=2") == ["a=1", "b=2"] and _overrides(None) == []
