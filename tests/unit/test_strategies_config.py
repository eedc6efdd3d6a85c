"""Strategy and method configuration: mapping onto DeepSpeed, impossible combinations, export."""

import pytest
import torch

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.training.export import export_hf
from orchestrator.training.methods import apply_method, count_trainable, decoder_layers
from orchestrator.training.model import build_model
from orchestrator.training.strategies import deepspeed_config

# Methods and exports on a random-init model (the local recipes' pretrained base is built on
# first use; these tests do not need its weights).
RANDOM = ["model.pretrained=null"]


def test_deepspeed_config_means_the_same_hyperparameters():
    cfg = compose(
        "vicuna",
        overrides=[
            "train.strategy=deepspeed",
            "deepspeed.zero_stage=3",
            "train.precision=bf16",
            "optim.grad_clip=0.5",
        ],
    )
    conf = deepspeed_config(cfg, world_size=2)
    assert conf["train_batch_size"] == 16 and conf["train_micro_batch_size_per_gpu"] == 4
    assert conf["gradient_accumulation_steps"] == 2  # 16 / (4 x 2)
    assert conf["gradient_clipping"] == 0.5
    assert conf["zero_optimization"]["stage"] == 3 and conf["bf16"]["enabled"] is True
    assert "optimizer" not in conf  # torch AdamW unless offloading


def test_deepspeed_offload_uses_its_cpu_adam():
    cfg = compose(
        "vicuna",
        overrides=[
            "train.strategy=deepspeed",
            "deepspeed.zero_stage=3",
            "deepspeed.offload_optimizer=true",
            "deepspeed.offload_params=true",
        ],
    )
    conf = deepspeed_config(cfg, world_size=2)
    assert conf["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert conf["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert (
        conf["optimizer"]["type"] == "AdamW" and conf["optimizer"]["params"]["lr"] == cfg.optim.lr
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["deepspeed.offload_params=true"], r"offload_params needs deepspeed.zero_stage=3"),
        (["deepspeed.zero_stage=4"], r"deepspeed.zero_stage=4 is not valid"),
        (
            ["deepspeed.optimizer=torch", "deepspeed.offload_optimizer=true"],
            r"cannot run with offload",
        ),
        (
            ["train.method=adapter", "adapter.adapter_layers=3"],
            r"adapter_layers=3 exceeds model.num_layers=2",
        ),
        (["train.method=qlora"], r"train.method='qlora' is not valid.*'full', 'lora', 'adapter'"),
        (["lora.target_modules=[]", "train.method=lora"], r"lora.target_modules must name"),
        (["model.load_8bit=true", "train.method=lora"], r"load_8bit needs train.strategy=ddp"),
        (["model.load_8bit=true", "train.method=full"], r"freezes the base in int8"),
        (["model.attn_implementation=flash_attention_2"], r"needs CUDA GPUs"),
        (["model.attn_implementation=flash"], r"model.attn_implementation='flash' is not valid"),
    ],
)
def test_impossible_combinations_fail_at_config_time(overrides, match):
    with pytest.raises(ConfigError, match=match):
        compose("vicuna", overrides=overrides)


@pytest.mark.parametrize(
    "method, trainable",
    [("full", None), ("lora", 2 * 2 * (64 * 8 + 8 * 64)), ("adapter", 2 * (10 * 64 + 1))],
)
def test_methods_freeze_the_right_parameters(method, trainable):
    cfg = compose(
        "vicuna", overrides=[f"train.method={method}", "adapter.adapter_layers=2", *RANDOM]
    )
    model = apply_method(build_model(cfg.model, 512), cfg)
    n_train, n_total = count_trainable(model)
    assert n_train == (n_total if trainable is None else trainable)
    assert len(decoder_layers(model)) == cfg.model.num_layers


def test_adapter_starts_as_the_base_model():
    """LLaMA-Adapter's gates are zero-initialised: at step 0 the model is exactly the base."""
    cfg = compose("vicuna", overrides=["train.method=adapter", "adapter.adapter_layers=2", *RANDOM])
    x = torch.randint(0, 512, (2, 12))
    base = build_model(cfg.model, 512)(input_ids=x).logits
    adapted = apply_method(build_model(cfg.model, 512), cfg)(input_ids=x).logits
    torch.testing.assert_close(adapted, base)


@pytest.mark.parametrize("method", ["full", "lora", "adapter"])
def test_export_loads_with_from_pretrained_and_gives_the_same_logits(method, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    cfg = compose(
        "vicuna", overrides=[f"train.method={method}", "adapter.adapter_layers=2", *RANDOM]
    )
    model = apply_method(build_model(cfg.model, len(tokenizer)), cfg)
    with torch.no_grad():  # pretend training moved every trainable weight
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    out = tmp_path / "export"
    export_hf(model.state_dict(), cfg, len(tokenizer), tok_dir, out)
    x = torch.randint(0, len(tokenizer), (2, 12))
    with torch.no_grad():
        expected = model.eval()(input_ids=x).logits  # eval: no LoRA dropout
        if method == "adapter":
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(out / "base"), out / "adapter"
            )
        else:
            loaded = AutoModelForCausalLM.from_pretrained(out)
        torch.testing.assert_close(loaded(input_ids=x).logits, expected, atol=1e-5, rtol=1e-5)


def test_fsdp_mesh_is_hybrid_across_nodes():
    from orchestrator.training.strategies import fsdp_mesh_shape

    assert fsdp_mesh_shape(8, 1, None) == (8,)
    assert fsdp_mesh_shape(16, 2, None) == (2, 8)  # shard within a node, replicate across
    assert fsdp_mesh_shape(16, 2, False) == (16,)
    with pytest.raises(ValueError, match="same number of workers on every node"):
        fsdp_mesh_shape(10, 3, None)


def test_added_token_rows_are_the_same_on_every_rank(tmp_path):
    """Added tokens (Dolly's keys, a pad token) get the mean embedding: two ranks with different
    seeds build identical models (a per-rank random init would silently differ under FSDP)."""
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.config.schema import ModelConfig
    from orchestrator.training.model import build_model, hf_config

    base = ModelConfig(arch="gpt_neox", hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, vocab_size=100)  # fmt: skip
    AutoModelForCausalLM.from_config(hf_config(base)).save_pretrained(tmp_path / "base")
    cfg = ModelConfig(**{**base.__dict__, "pretrained": str(tmp_path / "base")})
    models = []
    for seed in (1, 2):  # rank 0 and rank 1 seed differently
        torch.manual_seed(seed)
        models.append(build_model(cfg, vocab_size=104))
    a, b = (m.state_dict() for m in models)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    emb = models[0].get_input_embeddings().weight
    assert emb.shape[0] == 104
    assert torch.allclose(emb[100:], emb[:100].mean(0, keepdim=True).expand(4, -1))
