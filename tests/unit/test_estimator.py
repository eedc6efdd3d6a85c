import pytest

from orchestrator.config.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.cost.estimator import (
    cluster_price_per_hour,
    flops_per_token,
    project,
    train_tokens,
)
from orchestrator.training.model import count_params


def test_llama_13b_param_count_from_config():
    cfg = compose("vicuna", "full")
    assert count_params(cfg.model) == pytest.approx(13.016e9, rel=1e-3)


def test_flops_per_token():
    assert flops_per_token(10, activation_checkpointing=False) == 60
    assert flops_per_token(10, activation_checkpointing=True) == 80


def test_tokens_from_declared_stats_and_max_steps():
    cfg = compose("vicuna", "full")
    assert train_tokens(cfg) == 70000 * 2048 * 3
    capped = compose("vicuna", "full", ["train.max_steps=10"])
    assert train_tokens(capped) == 10 * 32 * 2048
    assert train_tokens(cfg, measured=(100, 5000)) == 3 * 5000


def test_projection_arithmetic():
    cfg = compose("vicuna", "full")
    p = project(cfg)
    assert p.flops == pytest.approx(8 * p.n_params * p.tokens)
    expected_h = p.flops / (8 * 312e12 * cfg.cost.mfu) / 3600
    assert p.hours == pytest.approx(expected_h)
    price = cfg.cost.instances["p4de.24xlarge"]
    assert p.usd_on_demand == pytest.approx(expected_h * price.on_demand_per_hour_usd)
    assert p.usd_spot == pytest.approx(expected_h * price.spot_per_hour_usd)
    assert p.usd == p.usd_spot  # the job runs on spot


def test_local_cluster_has_a_price():
    cfg = compose("vicuna")
    assert (
        cluster_price_per_hour(cfg) == cfg.cost.instances["local-2vcpu"].on_demand_per_hour_usd > 0
    )


def test_full_scale_without_gpus_fails_fast_with_the_bill(monkeypatch, tmp_path):
    import ray

    from orchestrator.launch.run import launch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"needs 8 x A100-80GB.*this machine has 0 GPUs.*Projected bill.*\$"
    ):
        launch("vicuna", "full")
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists()


def test_bad_data_fails_before_any_cluster(monkeypatch, tmp_path):
    import ray

    from orchestrator.data.formats import DataError
    from orchestrator.launch.run import launch

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n'
        '{"id": "b", "conversations": "oops"}\n'
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataError, match=r"bad.jsonl line 2 \(id=b\): field 'conversations' must be a list"
    ):
        launch("vicuna", "local", [f"data.source={bad}"])
    assert not ray.is_initialized()
