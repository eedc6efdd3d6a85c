"""The networks of preference and RL stages, each one nn.Module so DDP/DeepSpeed wrap it whole.

- `ScoreModel`: a transformer with a scalar head at every position (a Hugging Face
  `*ForSequenceClassification` with num_labels=1: its `score` layer). A reward model pools the
  per-token scores into one per reply; a critic (ColossalChat) uses them as values.
- `PolicyValue`: the PPO policy (a causal LM, LoRA or full) with its value model: a linear value
  head on the policy's last hidden state (StackLLaMA, TRL's ValueHead) or a separate critic
  initialised from the reward model (ColossalChat).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from orchestrator.training.model import resize_embeddings


def _trunk_and_head(lm):
    """(transformer trunk, score layer) of a sequence-classification model, through peft."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return getattr(base, base.base_model_prefix), base.score


def pool(scores: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """One score per row from per-token scores [B, T] of right-padded rows. last: at the last
    real token (TRL's sequence classifier, OpenAssistant); mean: over every position but the
    last, padding included (ColossalChat's reward model as of April 2023)."""
    if how == "mean":
        return scores[:, :-1].mean(dim=1)
    last = attention_mask.long().sum(dim=1) - 1
    return scores.gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1)


class ScoreModel(nn.Module):
    """Per-token scalar scores [B, T] (float32) from a sequence-classification model."""

    def __init__(self, lm) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        trunk, head = _trunk_and_head(self.lm)
        h = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return head(h.last_hidden_state).squeeze(-1).float()


def load_score_model(
    path: str,
    vocab_size: int | None,
    pad_id: int,
    seed: int,
    dtype=torch.float32,
    quantized: dict | None = None,
):
    """A sequence-classification model with one output from `path` (a causal LM's folder: the
    head is new, initialised from `seed` so every rank builds the same one; a reward model's
    folder: its trained head). `quantized`: `training.model.quantized_kwargs` of an 8-bit base
    (its linears int8, the score head not: bitsandbytes keeps the output layer)."""
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype, pad_token_id=pad_id, **(quantized or {})
        )
    if vocab_size and vocab_size > lm.get_input_embeddings().num_embeddings:
        resize_embeddings(lm, vocab_size)
    lm.config.pad_token_id = pad_id
    return lm


class PolicyValue(nn.Module):
    """The PPO policy and its value model. forward -> (logits [B, T, V], values [B, T])."""

    def __init__(self, policy, critic: ScoreModel | None, seed: int) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.v_head: nn.Linear | None = None
        if critic is None:  # TRL's ValueHead: Linear(hidden, 1), PyTorch's default init
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.v_head = nn.Linear(policy.config.hidden_size, 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=self.v_head is not None,
            use_cache=False,
        )
        if self.v_head is not None:
            values = self.v_head(out.hidden_states[-1].to(self.v_head.weight.dtype)).squeeze(-1)
        else:
            assert self.critic is not None
            values = self.critic(input_ids, attention_mask)
        return out.logits, values.float()


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) for t = 0..T-2: [B, T-1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
