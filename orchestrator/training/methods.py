"""Training methods: full fine-tune, LoRA and LLaMA-Adapter (both through peft).

Applied before any wrapping (DDP/FSDP/DeepSpeed), as peft requires.
"""

from __future__ import annotations

import torch

from orchestrator.config.schema import JobConfig


def apply_method(model, cfg: JobConfig, task_type: str = "CAUSAL_LM"):
    """Returns the model to train: unchanged (full), or a peft model with only adapters
    trainable. task_type SEQ_CLS (reward models) also trains the new score head in full."""
    method = cfg.train.method
    if method == "full":
        return model
    from peft import AdaptionPromptConfig, LoraConfig, get_peft_model

    if method == "lora":
        lc = cfg.lora
        peft_cfg = LoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,
            lora_dropout=lc.dropout,
            target_modules=list(lc.target_modules),
            bias=lc.bias,
            task_type=task_type,
        )
    elif method == "adapter":
        peft_cfg = AdaptionPromptConfig(
            adapter_len=cfg.adapter.adapter_len,
            adapter_layers=cfg.adapter.adapter_layers,
            task_type="CAUSAL_LM",
        )
    else:  # the schema already rejects anything else
        raise ValueError(f"unknown method {method!r}")
    return get_peft_model(model, peft_cfg)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks (the FSDP wrapping unit), found through the model's own
    `_no_split_modules` (LlamaDecoderLayer, GPTNeoXLayer, ...), whether or not peft wraps it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"cannot find the decoder layers of {type(base).__name__} "
            f"(_no_split_modules={sorted(names)})"
        )
    return layers


def count_trainable(model) -> tuple[int, int]:
    """(trainable, total) parameters, counted before wrapping (global counts; a parameter
    ZeRO-3 has already partitioned counts its full size, `ds_numel`)."""
    total = sum(numel(p) for p in model.parameters())
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, total


def numel(p) -> int:
    """Elements of a parameter, whole (DeepSpeed ZeRO-3 leaves an empty tensor in place)."""
    return int(getattr(p, "ds_numel", p.numel()))
