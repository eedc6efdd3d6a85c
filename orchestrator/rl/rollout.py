"""Rollout engines: what samples completions for RL (GRPO here; answer generation for
evaluation reuses it). One interface, two engines:

- `HfEngine`: the policy itself, through transformers `generate` with the KV cache. It runs
  everywhere (CPU workers at local scale, any GPU); its weights are the trained module's, so a
  weight sync only moves the version on.
- `VllmEngine`: vLLM on the worker's GPU, colocated with training (as TRL's colocate mode and
  veRL do): after every optimizer update the trainer pushes the policy's weights into it
  (`sync_weights`). vLLM is an optional extra for GPUs (`pip install -e '.[vllm]'`); it cannot
  be installed or run on a CPU machine, so it is exercised by the `gpu` suite and skipped
  where absent. docs/rl.md#rollout-engines says which vLLM release pins torch 2.13.

The trainer calls `sync_weights(policy)` after each update of the policy and before the next
`generate`: the CPU test with a recording engine checks exactly that order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    n: int
    """Completions per prompt (GRPO's group size), returned consecutively."""
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    eos_id: int | None = None
    """Stop at this token (kept as the completion's last); None: always max_new_tokens."""
    pad_id: int = 0
    stop_ids: tuple[int, ...] = ()
    """Other tokens that end a completion like eos_id (a template's end marker that is one
    special token: Dolly's `### End`, OpenAssistant's `<|endoftext|>`)."""

    def stops(self) -> list[int]:
        return ([] if self.eos_id is None else [self.eos_id]) + list(self.stop_ids)


class RolloutEngine(Protocol):
    version: int
    """How many weight syncs it has taken (the policy update its samples come from)."""

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
        """`sampling.n` completions (token ids, without the prompt) per prompt, grouped by
        prompt in order. Sampling is seeded by the caller (torch's generator)."""
        ...

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Take the policy's current weights (after an optimizer update)."""
        ...


def _decoding(s: Sampling) -> dict[str, Any]:
    """transformers' sampling arguments: temperature 0 is greedy decoding (an evaluation's
    math and coding answers, as FastChat's temperature_config has them)."""
    if s.temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k}


def _cut(ids: list[int], stops: list[int]) -> list[int]:
    """`ids` up to and including its first stop token."""
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    return ids


class HfEngine:
    """transformers `generate` on the policy (left-padded prompts, KV cache on)."""

    def __init__(self, policy: Any, device: torch.device) -> None:
        self.policy = policy  # a transformers (or peft) causal LM
        self.device = device
        self.version = 0

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
        s = sampling
        width = max(len(q) for q in prompts)
        left = torch.full((len(prompts), width), s.pad_id, dtype=torch.long)
        att = torch.zeros_like(left)
        for i, q in enumerate(prompts):
            left[i, width - len(q) :] = torch.tensor(q)
            att[i, width - len(q) :] = 1
        was_training = self.policy.training
        self.policy.eval()
        out = self.policy.generate(
            input_ids=left.to(self.device), attention_mask=att.to(self.device),
            max_new_tokens=s.max_new_tokens, min_new_tokens=0 if s.eos_id is not None
            else s.max_new_tokens, num_return_sequences=s.n, use_cache=True,
            pad_token_id=s.pad_id, eos_token_id=s.stops() or None, **_decoding(s),
        )  # fmt: skip
        self.policy.train(was_training)
        return [_cut(row, s.stops()) for row in out[:, width:].cpu().tolist()]

    def sync_weights(self, policy: torch.nn.Module) -> None:
        self.version += 1  # the same module: nothing to copy


def merged_weights(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the policy as a plain model: a LoRA policy's adapters merged into a
    copy of each weight (the trained module is left as it is), PEFT's name prefixes removed."""
    from peft import PeftModel

    if isinstance(policy, PeftModel):
        policy.merge_adapter()
        try:
            for name, t in policy.get_base_model().state_dict().items():
                if "lora_" in name:
                    continue
                yield name.replace(".base_layer", ""), t.detach().clone()
        finally:
            policy.unmerge_adapter()
        return
    yield from ((n, t.detach()) for n, t in policy.state_dict().items())


class VllmEngine:  # pragma: no cover - GPUs with vLLM only (tests/gpu/test_vllm_engine.py)
    """vLLM colocated on this worker's GPU, started from the policy's starting weights."""

    def __init__(self, model_dir: str, seed: int, gpu_memory_utilization: float = 0.3) -> None:
        from vllm import LLM

        self.llm = LLM(model=model_dir, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=True)  # fmt: skip
        self.version = 0

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
        from vllm import SamplingParams

        s = sampling
        params = SamplingParams(
            n=s.n, max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else -1, ignore_eos=s.eos_id is None,
            stop_token_ids=list(s.stop_ids), seed=int(torch.randint(0, 2**31 - 1, (1,))),
        )  # fmt: skip
        outs = self.llm.generate([{"prompt_token_ids": q} for q in prompts], params,
                                 use_tqdm=False)  # fmt: skip
        return [_cut(list(c.token_ids), s.stops()) for o in outs for c in o.outputs]

    def sync_weights(self, policy: torch.nn.Module) -> None:
        weights = list(merged_weights(policy))
        self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()
        self.version += 1
