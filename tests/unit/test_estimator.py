import pytest

from orchestrator.config.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.cost.estimator import (
    Workload,
    cluster_price_per_hour,
    flops_per_token,
    mfu,
    project,
    train_tokens,
    workload,
)
from orchestrator.training.model import count_params


def test_llama_13b_param_count_from_config():
    cfg = compose("vicuna", "full")
    assert count_params(cfg.model) == pytest.approx(13.016e9, rel=1e-3)


def test_flops_per_token_formulas():
    w = Workload(n_params=10, n_layers=2, d_model=4, tokens=1, seq_len=8)
    assert flops_per_token(w) == 60 + 6 * 2 * 8 * 4  # 6N + attention
    w.activation_checkpointing = True
    assert flops_per_token(w) == 80 + 384  # + 2N recompute
    w.method = "lora"
    assert flops_per_token(w) == 60 + 384  # 4N + 2N recompute, no weight gradients


def test_mfu_model_is_monotonic_and_bounded():
    m = compose("vicuna", "full").cost.mfu_model
    values = [mfu(m, "A100-80GB", L) for L in (64, 256, 512, 1024, 2048, 8192, 10**6)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] <= m.max_mfu
    assert mfu(m, "H100-80GB", 2048) < mfu(m, "A100-80GB", 2048)
    assert mfu(m, "A100-80GB", 2048, load_8bit=True) == pytest.approx(
        m.int8_factor * mfu(m, "A100-80GB", 2048)
    )


def test_tokens_from_declared_stats_max_steps_or_measured():
    cfg = compose("vicuna", "full")
    assert train_tokens(cfg) == 70000 * 2048 * 3
    capped = compose("vicuna", "full", ["train.max_steps=10"])
    assert train_tokens(capped) == 10 * 32 * 2048
    assert train_tokens(cfg, measured=(100, 5000)) == 3 * 5000


def test_projection_arithmetic_and_overheads():
    cfg = compose("vicuna", "full")
    p = project(cfg)
    w = workload(cfg)
    assert p.flops == pytest.approx(flops_per_token(w) * p.tokens)
    assert p.compute_hours == pytest.approx(p.flops / (8 * 312e12 * p.mfu) / 3600)
    price = cfg.cost.instances["p4de.24xlarge"]
    od_hours = p.assumptions["hours_on_demand"]
    assert od_hours == pytest.approx(
        p.compute_hours + p.overhead_hours["startup"] + p.overhead_hours["checkpoints"]
    )
    assert p.usd_on_demand == pytest.approx(od_hours * price.on_demand_per_hour_usd)
    assert p.hours > od_hours  # spot: expected preemptions cost extra hours ...
    assert p.usd_spot == pytest.approx(p.hours * price.spot_per_hour_usd)  # ... at the spot price
    assert p.usd == p.usd_spot  # the job runs on spot
    assert p.usd_spot_low < p.usd_spot < p.usd_spot_high
    assert p.overhead_hours["checkpoints"] > 0 and p.overhead_hours["preemptions"] > 0


def test_lora_is_cheaper_than_full():
    full = project(compose("vicuna", "full"))
    lora = project(compose("vicuna", "full", ["train.method=lora"]))
    assert lora.flops < full.flops and lora.usd < full.usd


def test_calibrated_runs_land_within_25_percent_of_published():
    """Alpaca (~3 h, < $100) and Vicuna-13B (~1 day, $300 on spot), at 2023 prices."""
    from orchestrator.cost.calibration import PUBLISHED, predictions

    pred = predictions()
    for name, pub in PUBLISHED.items():
        assert pred[name]["hours"] == pytest.approx(pub.hours, rel=0.25), name
        if pub.usd_is_upper_bound:
            assert pred[name]["usd"] <= pub.usd, name
        else:
            assert pred[name]["usd"] == pytest.approx(pub.usd, rel=0.25), name


def test_print_projected_bills_of_all_jobs(capsys):
    from orchestrator.config.load import JOBS_DIR

    for job in sorted(JOBS_DIR.glob("*.yaml")):
        p = project(compose(str(job), "full"))
        print(f"{job.stem}: {p.summary()}")
        assert p.usd > 0 and p.hours > 0
    assert "vicuna" in capsys.readouterr().out


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


def test_projection_over_the_cap_needs_a_yes(monkeypatch, tmp_path):
    import ray

    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", None)  # nobody to ask
    with pytest.raises(ConfigError, match=r"exceeds budget.max_usd=\$1e-06.*--yes"):
        launch("vicuna", "local", ["budget.max_usd=0.000001"])
    assert not ray.is_initialized()


def test_checkpoint_bytes_one_figure_per_strategy():
    from orchestrator.cost.memory import checkpoint_bytes

    fsdp = compose("vicuna", "full")
    assert checkpoint_bytes(fsdp, 10, 10) == 120  # fp32 weights + Adam (m, v)
    assert checkpoint_bytes(fsdp, 10, 1) == 48  # a frozen base saves its weights only
    ds = compose("vicuna", "full", ["train.strategy=deepspeed", "train.precision=bf16"])
    assert checkpoint_bytes(ds, 10, 10) == 140  # bf16 module + fp32 master and moments


def test_save_times_async_blocks_only_for_the_copy_and_measured_wins():
    from orchestrator.cost.estimator import SaveTimes, measured_save_times, save_times

    n = 13_000_000_000
    sync = save_times(compose("vicuna", "full", ["checkpoint.async_save=false"]), n, n)
    asyn = save_times(compose("vicuna", "full", ["checkpoint.async_save=true"]), n, n)
    assert sync.blocked_s == sync.total_s == pytest.approx(12 * n / 1e9)  # 1 node at 1 GB/s
    assert asyn.blocked_s == pytest.approx(12 * n / (5e9 * 8))  # 8 GPUs copy at once
    assert asyn.total_s == pytest.approx(asyn.blocked_s + sync.total_s)
    two = save_times(
        compose("vicuna", "full", ["checkpoint.async_save=false", "hardware.num_nodes=2"]), n, n
    )
    assert two.total_s == pytest.approx(sync.total_s / 2)  # every node writes its share
    measured = measured_save_times([2.0, 1.0, 9.0], [30.0, 40.0, 50.0])
    assert measured == SaveTimes(2.0, 40.0, measured=True)  # medians
    assert measured_save_times([], []) is None
    cfg = compose("vicuna", "full")
    p = project(cfg, saves=measured)
    assert p.assumptions["checkpoint_blocked_s"] == 2.0
    assert p.assumptions["checkpoint_save_measured"] is True
    # A save that blocks longer costs more hours.
    slow = project(cfg, saves=SaveTimes(200.0, 400.0, measured=True))
    assert slow.overhead_hours["checkpoints"] > p.overhead_hours["checkpoints"]
