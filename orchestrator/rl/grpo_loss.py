"""GRPO's maths as pure tensor functions (Shao et al. 2024), with the Dr. GRPO (Liu et al.
2025) and DAPO (Yu et al. 2025) switches. Sources: docs/facts/grpo.md.

- Advantages: each completion's reward minus the mean of its group (the G completions of one
  prompt), divided by the group's std + 1e-4 when `scale` (GRPO, DAPO; TRL's scale_rewards);
  Dr. GRPO drops the division (it biases toward groups of like rewards).
- Per token: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + beta k3(ref || policy), with
  r = exp(logp - old_logp). eps_high > eps_low is DAPO's clip-higher. k3 = e^(ref - logp) -
  (ref - logp) - 1 (Schulman's unbiased, always >= 0 estimator; GRPO's paper).
- Reduction over a step (what the gradient is the mean of):
  grpo: each completion's token mean, then the mean over the step's completions;
  dapo: the mean over every token of the step (long completions weigh by their length);
  dr_grpo: the token sum over completions x max_new_tokens (a constant: no length bias).
  A micro-batch contributes `step_sum(...)` / `normaliser(...)`: the same total whatever the
  micro-batching and however the step's completions are spread over ranks.
"""

from __future__ import annotations

import torch

LOSSES = ("grpo", "dapo", "dr_grpo")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool) -> torch.Tensor:
    """Advantages [n] of rewards [n] laid out as consecutive groups of `group_size`."""
    g = rewards.float().reshape(-1, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (g.std(dim=1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    ref_logp: torch.Tensor | None,
    eps_low: float,
    eps_high: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [n, T], clipped [n, T] as float, kl [n, T]) per completion token; adv is [n]."""
    ratio = torch.exp(logp - old_logp)
    a = adv.unsqueeze(1)
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    loss = -torch.min(unclipped, clipped)
    kl = k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta > 0:
        loss = loss + beta * kl
    return loss, (clipped < unclipped).float(), kl


def step_sum(per_token: torch.Tensor, mask: torch.Tensor, loss: str) -> torch.Tensor:
    """This micro-batch's part of the step's loss numerator (see the module docstring)."""
    m = mask.float()
    if loss == "grpo":
        return ((per_token * m).sum(1) / m.sum(1).clamp(min=1.0)).sum()
    return (per_token * m).sum()


def normaliser(loss: str, completions: int, tokens: int, max_new_tokens: int) -> float:
    """The step's loss denominator, from the step's totals over every rank."""
    if loss == "grpo":
        return float(max(1, completions))
    if loss == "dapo":
        return float(max(1, tokens))
    return float(max(1, completions * max_new_tokens))
