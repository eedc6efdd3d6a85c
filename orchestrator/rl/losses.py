"""Preference objectives as pure tensor functions, each as its original defines it.

- Pairwise reward-model loss (InstructGPT; StackLLaMA `reward_modeling.py`, ColossalChat
  `LogSigLoss`): `-logsigmoid(r_chosen - r_rejected)`, mean over pairs.
- OpenAssistant's K-wise ranking loss (`utils/losses.py` RMLoss): per group of K replies ranked
  best -> worst, every pair i < j: `-logsigmoid(s_i - s_j) + beta * 0.5 * (s_i^2 + s_j^2)`
  (beta = `score_l2_reg` = 0.001), mean over the group's pairs, then over groups.
- DPO (Rafailov et al. 2023) with the conservative variant (cDPO, label smoothing eps, as the
  authors' `trainers.py` and TRL before v0.29): `-(1-eps) logsigmoid(beta h) - eps
  logsigmoid(-beta h)`, h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), the
  log-probs summed over completion tokens.
Sources: docs/facts/rlhf.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean `-logsigmoid(r_chosen - r_rejected)` over pairs."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def ranking_loss(scores: torch.Tensor, group_sizes: list[int], l2: float = 0.001) -> torch.Tensor:
    """OpenAssistant's K-wise loss. `scores` holds the replies of each group in rank order
    (best first), groups one after another; `group_sizes` their sizes (each >= 2)."""
    losses = []
    at = 0
    for k in group_sizes:
        if k < 2:
            raise ValueError(f"a ranked group needs at least 2 replies, got {k}")
        s = scores[at : at + k]
        at += k
        i, j = torch.triu_indices(k, k, offset=1, device=s.device)
        better, worse = s[i], s[j]
        pair = -F.logsigmoid(better - worse) + l2 * 0.5 * (better**2 + worse**2)
        losses.append(pair.mean())
    if at != scores.numel():
        raise ValueError(f"group sizes sum to {at}, scores hold {scores.numel()}")
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class RankMetrics:
    pair_accuracy: float
    """Share of ordered pairs scored in the right order (StackLLaMA's and Coati's accuracy)."""
    best_vs_worst: float
    """Share of groups whose best reply outscores the worst (OpenAssistant's `accuracy`)."""


def rank_metrics(scores: torch.Tensor, group_sizes: list[int]) -> RankMetrics:
    right = pairs = groups_right = 0
    at = 0
    for k in group_sizes:
        s = scores[at : at + k]
        at += k
        i, j = torch.triu_indices(k, k, offset=1, device=s.device)
        right += int((s[i] > s[j]).sum())
        pairs += len(i)
        groups_right += int(s[0] > s[k - 1])
    return RankMetrics(right / max(1, pairs), groups_right / max(1, len(group_sizes)))


@dataclass(frozen=True)
class DpoOut:
    loss: torch.Tensor
    reward_chosen: torch.Tensor
    """beta * (log pi - log ref) of each chosen completion (the implicit reward)."""
    reward_rejected: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float((self.reward_chosen > self.reward_rejected).float().mean())

    @property
    def margin(self) -> float:
        return float((self.reward_chosen - self.reward_rejected).mean())


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> DpoOut:
    """DPO / cDPO over a batch of pairs: inputs are completion log-probs (summed over tokens).
    The reference terms are detached: the reference never receives gradients."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
        -beta * h
    )
    return DpoOut(
        losses.mean(),
        (beta * (policy_chosen - ref_chosen)).detach(),
        (beta * (policy_rejected - ref_rejected)).detach(),
    )


def completion_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Sum of the log-probs of the completion tokens of each row (prompt and padding masked).
    logits [B, T, V] predict input_ids shifted by one; completion_mask [B, T] marks the
    completion tokens of input_ids."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (tok * completion_mask[:, 1:].to(tok.dtype)).sum(-1)
