"""Next-token fine-tuning and pretraining: the objective of `train.objective: sft`.

Steps of token batches (or streamed text rows), the exact token-mean loss over the global
batch, a held-out token-mean loss, and a Hugging Face export with a probe and samples. The
trainer (training/loop.py) does everything else (training/objective.py says what that is).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.data.batching import collate
from orchestrator.data.dataset import StepBatches
from orchestrator.data.prepared import PreparedData
from orchestrator.data.templates import IGNORE_INDEX
from orchestrator.storage.layout import EXPORT
from orchestrator.training.export import (
    SAMPLE_MAX_PARAMS,
    export_hf,
    export_mode,
    export_sharded,
    load_export,
    sample_generations,
)
from orchestrator.training.loop import (
    StepWork,
    _unwrapped,
    base_dtype,
    forward_backward,
    loss_sum,
    to_device,
    train_dtype,
)
from orchestrator.training.methods import apply_method
from orchestrator.training.model import build_model
from orchestrator.training.objective import Objective


class SftObjective(Objective):
    """Fine-tune (or train from scratch) a causal LM on next-token loss.

    - Batching (`train.batching`): padded, length-grouped or packed micro-batches of the
      prepared examples, or packed rows streamed from a text corpus (pretraining).
    - Methods (`train.method`): full, lora (peft LoRA), adapter (peft LLaMA-Adapter), with
      activation checkpointing applied before sharding.
    - A pretrained base under FSDP/DDP is built on the meta device and filled by the trainer
      (read once on rank 0, broadcast); DeepSpeed ZeRO-3 loads it straight into partitions.
    """

    def __init__(self, trainer) -> None:
        super().__init__(trainer)
        self._hf_ds_config = None

    def loads_base_deferred(self) -> bool:
        cfg = self.cfg
        return (
            cfg.model.pretrained is not None
            and cfg.train.strategy in ("fsdp", "ddp")
            and not cfg.model.load_8bit
        )

    def wrap(self, model):
        """Activation checkpointing and the training method (LoRA, adapter), before sharding."""
        if self.cfg.train.activation_checkpointing:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        return apply_method(model, self.cfg)

    def step_batches(self, data: PreparedData):
        cfg = self.cfg
        if cfg.data.format == "text":  # pretraining: packed rows streamed from the corpus
            return self._text_batches(data)
        return StepBatches(
            data.train,
            global_batch_size=cfg.train.global_batch_size,
            micro_batch_size=cfg.train.micro_batch_size,
            world_size=self.world,
            rank=self.rank,
            seed=cfg.train.seed,
            pad_id=data.pad_id,
            mode=self.t.batching,
            tokens_per_micro_batch=cfg.train.tokens_per_micro_batch,
            pack_len=cfg.train.pack_len,
            group_steps=cfg.train.length_grouped_steps,
            flatten=cfg.model.attn_implementation == "flash_attention_2",
        )

    def _text_batches(self, data: PreparedData):
        from transformers import AutoTokenizer

        from orchestrator.data.text import TextStepBatches, worker_files

        cfg = self.cfg
        return TextStepBatches(
            cfg.data,
            AutoTokenizer.from_pretrained(data.tokenizer_dir),
            worker_files(cfg.data, data.text_sources),
            global_batch_size=cfg.train.global_batch_size,
            micro_batch_size=cfg.train.micro_batch_size,
            world_size=self.world,
            rank=self.rank,
            pad_id=data.pad_id,
        )

    def build(self, data: PreparedData):
        cfg = self.cfg
        if cfg.model.load_8bit:  # int8 base on this worker's device, in the training dtype
            model = build_model(cfg.model, data.vocab_size, dtype=train_dtype(cfg.train.precision))
            return self.wrap(model)
        if (
            cfg.model.pretrained
            and cfg.train.strategy == "deepspeed"
            and cfg.deepspeed.zero_stage == 3
        ):
            # ZeRO-3: with this config alive, from_pretrained loads straight into partitions
            # (deepspeed.zero.Init): no rank ever holds the whole model.
            import deepspeed
            from transformers.integrations import HfDeepSpeedConfig

            from orchestrator.training.strategies import deepspeed_config

            # DeepSpeed's own view of the world first (its config checks the batch against it).
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
            self._hf_ds_config = HfDeepSpeedConfig(deepspeed_config(cfg, self.world))
        return self.wrap(build_model(cfg.model, data.vocab_size, dtype=base_dtype(cfg)))

    def ready(self) -> None:
        # The ZeRO-3 loading hook has done its job: later model builds (the export's samples,
        # on rank 0 alone) must not think they are collective.
        self._hf_ds_config = None

    def step(self, lr: float) -> StepWork:
        """One optimizer step of next-token loss over the step's global batch."""
        batches, step = self.batches, self.step_index
        micro_batches, n_targets = batches.step(step)
        self.model.train()
        loss = forward_backward(
            self.model, self.strategy, micro_batches, n_targets, self.world, self.device
        )
        grad_norm = self.strategy.step(lr, self.cfg.optim.grad_clip)
        return StepWork(
            loss_sum=loss,
            units=batches.step_targets(step),
            tokens=sum(len(e.input_ids) for e in batches.global_examples(step)),
            padded=batches.padded_tokens(step),
            grad_norm=grad_norm,
        )

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Token-mean loss on the held-out split. Every rank runs the same number of forwards
        (sharded forwards are collective); ranks past the end run a dummy batch with weight 0."""
        examples = self.data.eval
        if not examples:
            return None
        self.model.eval()
        micro = self.cfg.train.micro_batch_size
        n_batches = math.ceil(len(examples) / (micro * self.world))
        totals = torch.zeros(2, device=self.device)
        for b in range(n_batches):
            start = (b * self.world + self.rank) * micro
            chunk = examples[start : start + micro]
            weight = 1.0 if chunk else 0.0
            mb = to_device(collate(chunk or examples[:1], self.data.pad_id), self.device)
            with self.strategy.autocast():
                totals[0] += weight * loss_sum(self.model, mb).float()
            totals[1] += weight * (mb["labels"][:, 1:] != IGNORE_INDEX).sum()
        dist.all_reduce(totals)
        return (totals[0] / totals[1]).item()

    def export(self) -> None:
        export_policy(self)


@torch.no_grad()
def export_policy(obj: Objective) -> None:
    """A Hugging Face folder of the trained causal LM (collective gather, rank 0 writes), plus
    the logits of a probe batch so the export can be checked against the trained model. The
    export of every objective that trains a policy (SFT, DPO, GRPO)."""
    cfg, data, model, strategy, rank = obj.cfg, obj.data, obj.model, obj.strategy, obj.rank
    probe = collate((data.eval or data.train)[:2], data.pad_id)
    model.eval()
    on_device = to_device(probe, obj.device)
    with strategy.autocast():
        logits = model(
            input_ids=on_device["input_ids"], attention_mask=on_device["attention_mask"]
        ).logits.cpu()
    out = obj.export_dir()  # a folder store is written in place; S3: staged on this node
    tokenizer_dir = Path(data.tokenizer_dir)
    hashed: dict[str, dict[str, Any]] = {}
    if cfg.model.mup_base_width is not None:  # muP folds multipliers into the weights
        state = strategy.full_state_dict()
        if rank == 0:
            export_hf(state, cfg, data.vocab_size, tokenizer_dir, out, base_ref=obj.base_ref)
    else:
        names = None
        if export_mode(cfg) == "adapter":  # gather only what was trained
            names = {n for n, p in _unwrapped(model).named_parameters() if p.requires_grad}
        hashed = export_sharded(
            strategy.iter_full_tensors(names), _unwrapped(model), cfg, tokenizer_dir, out, rank,
            base_ref=obj.base_ref,
        )  # fmt: skip
    if rank == 0:
        torch.save({**probe, "logits": logits.float()}, out / "probe.pt")
        if obj.n_params <= SAMPLE_MAX_PARAMS:
            samples = sample_generations(load_export(out), tokenizer_dir, cfg)
        else:
            samples = {"skipped": f"{obj.n_params:,} parameters: load {EXPORT}/ on a GPU "
                       "to sample from it"}  # fmt: skip
        (out / "samples.json").write_text(json.dumps(samples, indent=1))
        kind = "model" if export_mode(cfg) == "model" else "adapter"
        obj.publish_export(out, kind, hashed)
    if dist.is_initialized():
        dist.barrier()
