"""The GPU memory fit check (orchestrator/cost/memory.py): every published recipe fits its
hardware as the original ran it, configurations that cannot fit are refused with what to change,
and the estimate is near the one published measurement (Baize 7B: 26 GB)."""

from __future__ import annotations

import pytest

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.cost.memory import GIB, check_job, estimate, trainable_params
from orchestrator.paths import JOBS_DIR

JOBS = sorted(p.stem for p in JOBS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("job", JOBS)
def test_every_recipe_fits_its_gpus(job):
    from orchestrator.compose.load import job_configs

    for stage, cfg in job_configs(job, "full").items():  # every stage of a pipeline job
        est = check_job(cfg)
        assert est is not None and est.fits, (stage, est.summary())


def test_rl_stages_count_their_extra_models():
    from orchestrator.compose.load import compose
    from orchestrator.cost.memory import extra_models_bytes

    ppo = compose("colossal_chat", "full", ["stage=ppo"])  # full: reference + RM + critic
    lora = compose("stack_llama", "full", ["stage=ppo"])  # LoRA: adapter off, RM only
    n = 6_738_415_616
    assert extra_models_bytes(ppo, n) > 2 * 2 * n > extra_models_bytes(lora, n) == 2 * n
    assert extra_models_bytes(compose("stack_llama", "full", ["stage=reward"]), n) == 0


def test_a_13b_full_fine_tune_with_ddp_is_refused_naming_the_fix():
    with pytest.raises(ConfigError) as e:
        check_job(compose("vicuna", "full", ["train.strategy=ddp"]))
    msg = str(e.value)
    assert "would not fit on A100-80GB" in msg and "train.strategy=fsdp" in msg
    assert "GiB per GPU of 80.0" in msg


def test_the_worst_case_micro_batch_counts():
    """Dolly's original 6 x 2048 tokens per pass next to ZeRO-3 state do not fit 40 GB; the
    recipe's token budget (8192 per pass, same steps and loss) does."""
    with pytest.raises(ConfigError, match="would not fit on A100-40GB"):
        check_job(compose("dolly", "full", ["train.tokens_per_micro_batch=null"]))
    assert check_job(compose("dolly", "full")).fits


def test_estimate_is_near_the_published_baize_measurement():
    cfg = compose("baize", "full")  # README: "training VRAM 26 GB" for 7B, int8, micro 32 x 512
    total, trainable = trainable_params(cfg, cfg.model.vocab_size)
    est = estimate(cfg, total, trainable, cfg.model.vocab_size)
    assert 0.7 * 26e9 < est.total_bytes < 1.3 * 26e9, est.summary()
    assert trainable < 0.01 * total  # LoRA: a frozen int8 base


def test_sharding_and_recompute_lower_the_estimate():
    def gib(sets):
        cfg = compose("vicuna", "full", sets)
        total, trainable = trainable_params(cfg, cfg.model.vocab_size)
        return estimate(cfg, total, trainable, cfg.model.vocab_size).total_bytes / GIB

    assert gib([]) < gib(["train.activation_checkpointing=false"])
    assert gib([]) < gib(["train.strategy=deepspeed", "deepspeed.zero_stage=2"])
    assert gib(["train.method=lora"]) < gib([])


def test_node_scratch_too_small_is_refused():
    cfg = compose("vicuna", "full")
    cfg.cost.instances["p4de.24xlarge"].local_disk_gb = 100
    with pytest.raises(ConfigError, match="node-local scratch per node"):
        check_job(cfg)
    assert check_job(compose("vicuna", "local")) is None  # CPU jobs: nothing to check
