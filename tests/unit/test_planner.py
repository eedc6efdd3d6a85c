"""The Chinchilla planner: closed forms against numeric minimisation, the 20 tokens/param rule,
GPT-3-style shapes within 5% of the target, budgets in dollars/FLOPs/GPU-hours, clear errors."""

from __future__ import annotations

import json
import math

import pytest

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError, ModelConfig
from orchestrator.plan.arch import CEREBRAS_GPT, GPT2_VOCAB, gpt_params, shape_for
from orchestrator.plan.planner import compute_budget, make_plan, size_for
from orchestrator.plan.scaling import FITS, tokens_per_param_optimum
from orchestrator.training.model import count_params


def _numeric_optimum(fit, flops: float) -> float:
    """Golden-section search of L(N, C / 6N) over log N (no closed form used)."""
    lo, hi = math.log(1e3), math.log(1e15)
    g = (math.sqrt(5) - 1) / 2
    f = lambda x: fit.loss(math.exp(x), flops / (6 * math.exp(x)))  # noqa: E731
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(200):
        if f(a) < f(b):
            hi, b = b, a
            a = hi - g * (hi - lo)
        else:
            lo, a = a, b
            b = lo + g * (hi - lo)
    return math.exp((lo + hi) / 2)


@pytest.mark.parametrize("fit", ["epoch", "hoffmann"])
@pytest.mark.parametrize("flops", [1e15, 1e18, 1e21, 5.76e23])
def test_closed_form_optimum_matches_numeric_minimum(fit, flops):
    n, d = FITS[fit].optimum(flops)
    assert 6 * n * d == pytest.approx(flops, rel=1e-12)
    assert n == pytest.approx(_numeric_optimum(FITS[fit], flops), rel=1e-5)


@pytest.mark.parametrize(
    ("fit", "flops", "n_star", "ratio"),
    [  # docs/facts/scaling_laws.md, computed there independently
        ("epoch", 1e20, 8.5e8, 22.9),
        ("hoffmann", 1e20, 6.4e8, 40.1),
        ("epoch", 1e22, 9.0e9, 20.4),
        ("hoffmann", 5.76e23, 3.2e10, 92.6),
    ],
)
def test_optimum_matches_the_published_table(fit, flops, n_star, ratio):
    n, d = FITS[fit].optimum(flops)
    assert n == pytest.approx(n_star, rel=0.02)
    assert d / n == pytest.approx(ratio, abs=0.1)


def test_twenty_tokens_per_parameter():
    n, d = tokens_per_param_optimum(2.6e18)
    assert d == pytest.approx(20 * n) and 6 * n * d == pytest.approx(2.6e18)
    # Cerebras-GPT 111M: 2.22B tokens = 20 x 111M
    assert n == pytest.approx(1.47e8, rel=0.01)


def test_published_cerebras_shapes_are_reproduced_exactly():
    for size in CEREBRAS_GPT:
        s = shape_for(size.n_params)
        assert (s.layers, s.d_model, s.heads) == (size.layers, size.d_model, size.heads), size
        assert abs(size.tokens / size.n_params - 20) < 0.1  # the family is 20 tokens/param


@pytest.mark.parametrize("n", [1.5e5, 4e5, 3e6, 5e7, 3.1e8, 2e9, 7.7e9, 4e10])
def test_shape_within_five_percent_of_target(n):
    vocab, ctx = (2048, 256) if n < 1e7 else (GPT2_VOCAB, 2048)
    s = shape_for(n, vocab=vocab, context=ctx)
    assert abs(s.n_params / n - 1) <= 0.05
    assert s.d_model % s.heads == 0 and s.layers >= 2
    # the formula is the real model's parameter count
    cfg = ModelConfig(arch="gpt2", hidden_size=s.d_model, intermediate_size=s.ffn,
                      num_layers=s.layers, num_heads=s.heads, vocab_size=vocab,
                      max_position_embeddings=ctx, tie_word_embeddings=True)  # fmt: skip
    assert count_params(cfg) == s.n_params == gpt_params(s.layers, s.d_model, vocab, ctx)


def test_budget_too_small_for_any_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="no GPT-3-style shape within 5%.*raise the budget"):
        size_for(1e9, vocab=GPT2_VOCAB, context=2048)
    with pytest.raises(ConfigError, match="plan: no GPT-3-style shape"):
        compose("cerebras_gpt", "local", ["plan.budget_flops=1e6"])


def test_budgets_in_usd_flops_and_gpu_hours_agree():
    cfg = compose("cerebras_gpt", "full")
    by_usd = compute_budget(cfg, usd=300.0)
    by_hours = compute_budget(cfg, gpu_hours=by_usd.gpu_hours)
    by_flops = compute_budget(cfg, flops=by_usd.flops)
    assert by_hours.flops == pytest.approx(by_usd.flops)
    assert by_flops.usd == pytest.approx(300.0)
    # $300 of A100-80GB spot, at the step-time model's kernel efficiency for 2048-token rows
    assert by_usd.gpu_hours == pytest.approx(300.0 / (9.606 / 8))


def test_dollar_plan_fits_its_budget_with_overheads():
    cfg = compose(
        "cerebras_gpt", "full", ["plan.enabled=true", "plan.budget_usd=300", "train.max_steps=null"]
    )
    plan, job = make_plan(cfg)
    assert plan.projected_usd <= 300.0 * 1.0001
    assert plan.projected_usd > 250.0  # and spends most of it
    from orchestrator.cost.estimator import project

    assert project(job).usd == pytest.approx(plan.projected_usd)  # `make plan` = `make estimate`
    m = plan.methods["tokens_per_param"]
    assert job.model.num_layers == m.shape["layers"] and job.train.max_tokens == int(m.tokens)
    assert m.tokens_per_param == pytest.approx(20.0)
    assert job.train.global_batch_size % job.hardware.num_workers == 0
    best = min(plan.candidates, key=lambda r: r["predicted_loss"])
    assert best["n_params"] == pytest.approx(plan.methods["epoch"].n_params_optimal)


def test_local_cerebras_job_is_the_planners_choice():
    cfg = compose("cerebras_gpt", "local")
    n, d = tokens_per_param_optimum(cfg.plan.budget_flops)
    params = count_params(cfg.model, cfg.data.tokenizer_vocab_size)
    assert abs(params / n - 1) <= 0.05
    assert cfg.train.max_tokens == int(20 * params)
    assert cfg.model.arch == "gpt2" and cfg.train.global_batch_size % 16 == 0


def test_plan_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="exactly one of plan.budget_flops"):
        compose("cerebras_gpt", "local", ["plan.budget_usd=5"])
    with pytest.raises(ConfigError, match="train.max_tokens and plan.enabled are for from-scratch"):
        compose("alpaca", "local", ["train.max_tokens=1000"])
    with pytest.raises(ConfigError, match="no variant '7b'"):
        compose("cerebras_gpt", "full", ["variant=7b"])


def test_plan_cli_json(capsys):
    from orchestrator.__main__ import main

    assert main(["plan", "--usd", "300", "--gpu", "A100-80GB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for method in ("tokens_per_param", "epoch", "hoffmann"):
        m = out["methods"][method]
        assert {"n_params", "tokens", "flops", "predicted_loss"} <= set(m)
    assert out["compute"]["accelerator"] == "A100-80GB"
    assert main(["plan", "--flops", "1e21", "--gpu", "H100-80GB"]) == 0
    assert "tokens_per_param" in capsys.readouterr().out
    assert main(["plan", "--gpu-hours", "500", "--gpu", "A100-80GB", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compute"]["gpu_hours"] == pytest.approx(500)
    assert main(["plan", "--usd", "300", "--gpu", "TPU-v9"]) == 2
    assert "no instance in the price catalog" in capsys.readouterr().err
