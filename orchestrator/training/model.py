"""Build the network from a ModelConfig: load pretrained weights, or random-init from the numbers."""

from __future__ import annotations

import functools

import torch

from orchestrator.config.schema import ModelConfig


def hf_config(cfg: ModelConfig, vocab_size: int | None = None):
    """The transformers config of the architecture (no weights, no download)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    if cfg.arch == "gpt2":  # GPT-2/GPT-3 style (Cerebras-GPT): learned positions, tied, no dropout
        return GPT2Config(
            vocab_size=vocab_size or cfg.vocab_size,
            n_embd=cfg.hidden_size,
            n_inner=cfg.intermediate_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_positions=cfg.max_position_embeddings,
            layer_norm_epsilon=cfg.rms_norm_eps,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=cfg.init_std,
            tie_word_embeddings=cfg.tie_word_embeddings,
            bos_token_id=1,
            eos_token_id=2,
        )
    if cfg.arch == "gpt_neox":  # Pythia (Dolly v2, OpenAssistant SFT): parallel attn + MLP
        return GPTNeoXConfig(
            vocab_size=vocab_size or cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rotary_pct=cfg.rotary_pct,
            layer_norm_eps=cfg.rms_norm_eps,
            use_parallel_residual=True,
            tie_word_embeddings=cfg.tie_word_embeddings,
        )
    config_class = Qwen2Config if cfg.arch == "qwen2" else LlamaConfig  # Qwen2: + q/k/v biases
    return config_class(
        vocab_size=vocab_size or cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


def count_params(cfg: ModelConfig, vocab_size: int | None = None) -> int:
    """Exact parameter count, by building the model on the meta device (no memory, no download)."""
    config = hf_config(cfg, vocab_size)
    return _count_params(type(config).__name__, repr(config.to_dict()))


@functools.lru_cache(maxsize=64)
def _count_params(config_class: str, config_repr: str) -> int:
    import ast

    import transformers
    from transformers import AutoModelForCausalLM

    config = getattr(transformers, config_class)(**ast.literal_eval(config_repr))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def build_meta_model(cfg: ModelConfig, vocab_size: int | None = None, dtype=torch.float32):
    """The pretrained model's skeleton on the `meta` device: no memory, no weights read. Ranks
    that get their weights by broadcast (FSDP, DDP) or from a checkpoint start from this."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_gpu_features(cfg)
    config = AutoConfig.from_pretrained(cfg.pretrained, **pretrained_kwargs(cfg))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
        if vocab_size and vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


def pretrained_state_dict(
    cfg: ModelConfig, vocab_size: int | None, wrap
) -> dict[str, torch.Tensor]:
    """The full state dict one rank broadcasts: the base read once, in the checkpoint's own dtype
    (bf16/fp16 for the LLaMA and Pythia bases; the sharded fp32 parameters are cast on copy),
    added-token rows resized, then `wrap` (the training method: LoRA/adapter weights are
    initialised here, once)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        cfg.pretrained, dtype="auto", **pretrained_kwargs(cfg)
    )
    if vocab_size and vocab_size > model.get_input_embeddings().num_embeddings:
        resize_embeddings(model, vocab_size)
    return wrap(model).state_dict()


def init_non_persistent_buffers(model) -> None:
    """After `to_empty`, recompute the buffers no state dict carries (the rotary inverse
    frequencies) with transformers' own initialiser."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, module in model.named_modules():
        if not getattr(module, "_non_persistent_buffers_set", None):
            continue
        if "RotaryEmbedding" not in type(module).__name__:
            raise NotImplementedError(
                f"{name} ({type(module).__name__}) has buffers no state dict holds; the meta-device "
                "load knows how to rebuild only rotary embeddings"
            )
        base._init_weights(module)


def quantized_kwargs(cfg: ModelConfig) -> dict:
    """`from_pretrained` arguments of an 8-bit base (bitsandbytes LLM.int8, `Linear8bitLt`),
    placed on this worker's device: its GPU, or the CPU at the local scale (the same int8
    layers run forward and backward there). Empty when the base is not 8-bit."""
    if not cfg.load_8bit:
        return {}
    from transformers import BitsAndBytesConfig

    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    return {
        "quantization_config": BitsAndBytesConfig(load_in_8bit=True),
        "device_map": {"": device},
    }


def pretrained_kwargs(cfg: ModelConfig) -> dict:
    """What every `from_pretrained` of the base passes: the pinned revision of a hub id."""
    return {"revision": cfg.revision} if cfg.revision else {}


def build_model(cfg: ModelConfig, vocab_size: int | None = None, dtype=torch.float32):
    """The model on CPU (an 8-bit base: on its device), before any sharding. Random init is
    seeded by `cfg.init_seed`.

    `dtype` is what the non-quantized weights and so the activations are in. An 8-bit base must
    be built in the training precision (bf16 on GPUs): bitsandbytes returns activations in the
    dtype it is given, and a base loaded in fp32 would feed fp32 to attention kernels that
    refuse it (flash-attn) while autocast does not reach inside bitsandbytes' matmuls."""
    from transformers import AutoModelForCausalLM

    check_gpu_features(cfg)
    kwargs = {"attn_implementation": cfg.attn_implementation}
    if cfg.pretrained:
        kwargs.update(quantized_kwargs(cfg))
        kwargs.update(pretrained_kwargs(cfg))
        model = AutoModelForCausalLM.from_pretrained(cfg.pretrained, dtype=dtype, **kwargs)
        if vocab_size and vocab_size > model.get_input_embeddings().num_embeddings:
            resize_embeddings(model, vocab_size)
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = AutoModelForCausalLM.from_config(hf_config(cfg, vocab_size), dtype=dtype, **kwargs)
        if cfg.mup_base_width is not None:
            apply_mup(model, cfg)
    return model


@torch.no_grad()
def resize_embeddings(model, vocab_size: int) -> None:
    """Grow the token embeddings (and an untied output layer) to `vocab_size` for added tokens
    (Dolly's and OpenAssistant's template keys, a pad token). The new rows are the mean of the
    existing ones, as Stanford Alpaca did: deterministic, so every rank builds the same model
    (a random init would differ per rank's seed, and FSDP does not broadcast parameters)."""
    old = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    layers = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not layers[0].weight:
        layers.append(out)
    for layer in layers:
        w = layer.weight
        w[old:] = w[:old].float().mean(dim=0, keepdim=True).to(w.dtype)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias[old:] = bias[:old].float().mean().to(bias.dtype)


MUP_HIDDEN = (
    ".attn.c_attn.weight",
    ".attn.c_proj.weight",
    ".mlp.c_fc.weight",
    ".mlp.c_proj.weight",
)


def mup_lr_scale(param_name: str, cfg: ModelConfig) -> float:
    """muP: hidden matrices learn at LR x base width / width; everything else at the LR."""
    if cfg.mup_base_width is None or not param_name.endswith(MUP_HIDDEN):
        return 1.0
    return cfg.mup_base_width / cfg.hidden_size


def apply_mup(model, cfg: ModelConfig) -> None:
    """The Cerebras-GPT muP parametrisation on a GPT2LMHeadModel (Yang et al. 2021, Table 3):

    - init: embeddings N(0, sigma), hidden matrices N(0, sigma * sqrt(base / width)), output
      projections further / sqrt(2 layers), biases 0 (sigma = mup_init_std, 0.08);
    - forward: embeddings x mup_embeddings_scale (10), logits x base / width, attention scores
      x 1 / head_dim instead of 1 / sqrt(head_dim);
    - optimizer: hidden-matrix LR x base / width (`mup_lr_scale`).
    """
    import math

    base, width = cfg.mup_base_width, cfg.hidden_size
    sigma, hidden_sigma = cfg.mup_init_std, cfg.mup_init_std * math.sqrt(base / width)
    t = model.transformer
    with torch.no_grad():
        t.wte.weight.normal_(0.0, sigma)
        t.wpe.weight.normal_(0.0, sigma)
        for name, p in model.named_parameters():
            if name.endswith(MUP_HIDDEN):
                std = hidden_sigma
                if name.endswith("c_proj.weight"):
                    std /= math.sqrt(2 * cfg.num_layers)
                p.normal_(0.0, std)
            elif name.endswith(".bias"):
                p.zero_()
    for block in t.h:
        block.attn.scaling = 1.0 / block.attn.head_dim
    emb_scale, logit_scale = cfg.mup_embeddings_scale, base / width
    t.drop.register_forward_hook(lambda m, i, out: out * emb_scale)
    model.lm_head.register_forward_hook(lambda m, i, out: out * logit_scale)
    model.config.mup = {  # recorded with an export (see export.fold_mup)
        "base_width": base,
        "embeddings_scale": emb_scale,
        "output_logits_scale": logit_scale,
        "attention_scale": "1/head_dim",
    }


def check_gpu_features(cfg: ModelConfig) -> None:
    """CUDA-only features must find CUDA and their package, else say what is missing."""
    import importlib.util

    if cfg.attn_implementation == "flash_attention_2" and not torch.cuda.is_available():
        raise RuntimeError(
            "model.attn_implementation=flash_attention_2 needs a CUDA GPU; none is visible"
        )
    if cfg.load_8bit and importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "model.load_8bit needs the bitsandbytes package (pip install bitsandbytes==0.50.2)"
        )
    if (
        cfg.attn_implementation == "flash_attention_2"
        and importlib.util.find_spec("flash_attn") is None
    ):
        raise RuntimeError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package"
        )
    if cfg.load_8bit and not cfg.pretrained:
        raise RuntimeError("model.load_8bit quantizes pretrained weights: set model.pretrained")
