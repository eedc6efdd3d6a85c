from pathlib import Path

import pytest

from orchestrator.compose.load import compose, flatten, job_configs, to_dict
from orchestrator.config.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write_job(tmp_path: Path, text: str) -> str:
    p = tmp_path / "myjob.yaml"
    p.write_text(text)
    return str(p)


MINIMAL = """
job: myjob
scales:
  local:
    model: tiny_llama
    data: sharegpt_sample
    hardware: local_cpu
    train: {max_steps: 5, micro_batch_size: 2, global_batch_size: 4}
"""


def test_vicuna_composes_at_both_scales():
    local = compose("vicuna")
    assert local.scale == "local"
    assert local.model.hidden_size == 64 and local.model.pretrained == "base:tiny_llama"
    assert local.data.source == "data/samples/sharegpt_sample.json"
    assert local.hardware.num_workers == 2 and local.hardware.accelerator == "cpu"
    assert local.train.strategy == "fsdp"
    assert local.optim.weight_decay == 0.0  # common key, not overridden by the scale

    full = compose("vicuna", "full")
    assert full.model.pretrained == "huggyllama/llama-13b" and full.model.num_layers == 40
    assert full.hardware.accelerator == "A100-80GB" and full.hardware.num_workers == 8
    assert full.optim.lr == 2e-5 and full.train.epochs == 3
    assert full.data.max_seq_len == 2048 and full.train.activation_checkpointing


def test_overrides_win_and_are_typed():
    cfg = compose("vicuna", overrides=["optim.lr=1e-5", "train.max_steps=20"])
    assert cfg.optim.lr == 1e-5 and cfg.train.max_steps == 20


def test_block_with_inline_overrides(tmp_path):
    job = write_job(
        tmp_path, MINIMAL.replace("model: tiny_llama", "model: {block: tiny_llama, num_layers: 3}")
    )
    cfg = compose(job)
    assert cfg.model.num_layers == 3 and cfg.model.hidden_size == 64


def test_a_config_composed_again_is_a_copy_and_follows_its_files(tmp_path):
    # compose keeps what it composed, by what it was made of: a caller changing its copy does
    # not change the next one, and an edited job file composes anew
    first = compose("vicuna", overrides=["train.max_steps=7"])
    first.train.max_steps, first.hardware.num_workers = 99, 5
    again = compose("vicuna", overrides=["train.max_steps=7"])
    assert again.train.max_steps == 7 and again.hardware.num_workers == 2
    assert compose("vicuna", overrides=["train.max_steps=8"]).train.max_steps == 8
    job = write_job(tmp_path, MINIMAL)
    assert compose(job).train.max_steps == 5
    Path(job).write_text(MINIMAL.replace("max_steps: 5", "max_steps: 6"))
    assert compose(job).train.max_steps == 6
    Path(job).write_text(MINIMAL.replace("max_steps: 5", "max_stepz: 6"))
    with pytest.raises(ConfigError, match="max_stepz"):  # refused again, not served from before
        compose(job)


def test_unknown_key_names_file_and_key(tmp_path):
    job = write_job(tmp_path, MINIMAL + "    optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"myjob.yaml.*optim.lrr.*valid keys here.*'lr'"):
        compose(job)


def test_unknown_override_fails():
    with pytest.raises(ConfigError, match=r"command line.*train.max_stepz"):
        compose("vicuna", overrides=["train.max_stepz=3"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"train.max_steps"):
        compose("vicuna", overrides=["train.max_steps=many"])


def test_invalid_choice_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"train.strategy='zero'.*'ddp', 'fsdp', 'deepspeed'"):
        compose("vicuna", overrides=["train.strategy=zero"])


def test_missing_required_field(tmp_path):
    job = write_job(tmp_path, MINIMAL.replace("data: sharegpt_sample", "data: {format: sharegpt}"))
    with pytest.raises(ConfigError, match=r"data.source"):
        compose(job)


def test_impossible_batch_combination():
    with pytest.raises(ConfigError, match=r"global_batch_size=10 must be a multiple"):
        compose("vicuna", overrides=["train.global_batch_size=10"])


def test_unknown_block_lists_known(tmp_path):
    job = write_job(tmp_path, MINIMAL.replace("model: tiny_llama", "model: tiny_lama"))
    with pytest.raises(ConfigError, match=r"model block 'tiny_lama' not found.*tiny_llama"):
        compose(job)


def test_unknown_job_and_scale():
    with pytest.raises(ConfigError, match=r"no job named 'vicunaa'.*vicuna"):
        compose("vicunaa")
    with pytest.raises(ConfigError, match=r"scale='huge'"):
        compose("vicuna", "huge")


def test_bad_yaml_names_file(tmp_path):
    job = write_job(tmp_path, "job: x\nscales: [\n")
    with pytest.raises(ConfigError, match=r"myjob.yaml: not valid YAML"):
        compose(job)


def test_flatten_resolved_config():
    flat = flatten(to_dict(compose("vicuna")))
    assert flat["train.strategy"] == "fsdp"
    assert flat["optim.betas"] == [0.9, 0.999]
    assert "cost.instances.local-2vcpu.on_demand_per_hour_usd" in flat


def test_every_job_file_validates():
    for job in sorted((REPO / "jobs").glob("*.yaml")):
        for scale in ("local", "full"):
            assert job_configs(str(job), scale)  # every stage of a pipeline job
