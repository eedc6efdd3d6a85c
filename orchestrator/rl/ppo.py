"""PPO's arithmetic as pure functions over [B, T] tensors aligned with the generated tokens
(position t scores token t+1; `mask` marks the reply tokens). The recipe switches between the
two originals (docs/rl.md):

- StackLLaMA (TRL 0.4): per-token reward -kl_coef * (log p - log ref) with the score added at
  the last reply token; GAE (gamma 1, lam 0.95) on a value head; whitened advantages; clipped
  value loss (0.2) with vf_coef 0.1.
- ColossalChat (Coati, April 2023): one reward per reply, score - kl_coef * mean k3 over the
  reply; advantage = reward - value (one scalar per reply, no GAE, no whitening); a critic;
  clipped value loss (0.4) toward the reward.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (TRL's masked_whiten, unbiased variance)."""
    mean = masked_mean(x, mask)
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=2.0)
    var = (((x - mean) ** 2) * m).sum() / (n - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def token_rewards(
    score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """StackLLaMA: r_t = -kl_coef * kl_t on every reply token, plus the score at the last one."""
    rewards = -kl_coef * kl * mask
    last = (mask.long().cumsum(1) == mask.long().sum(1, keepdim=True)) & mask.bool()
    return rewards + last.to(rewards.dtype) * score.unsqueeze(1)


def sequence_reward(
    score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """ColossalChat: one reward per reply, score - kl_coef * mean KL over the reply: [B]."""
    m = mask.to(kl.dtype)
    return score - kl_coef * (kl * m).sum(1) / m.sum(1).clamp(min=1.0)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's reply tokens (the value after the last
    reply token is 0). Returns (advantages, returns = advantages + values), 0 off the mask."""
    adv = torch.zeros_like(rewards)
    m = mask.to(rewards.dtype)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * last
        adv[:, t] = a * m[:, t]
        # Off the reply (prompt, padding) the recursion does not run.
        next_value = torch.where(m[:, t] > 0, values[:, t], next_value)
        last = torch.where(m[:, t] > 0, a, last)
    return adv, (adv + values) * m


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Clipped surrogate. Returns (loss, clip fraction, approximate KL old -> new)."""
    ratio = torch.exp(logp - old_logp)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(loss1, loss2), mask)
    clipfrac = masked_mean((loss2 > loss1).float(), mask)
    approx_kl = masked_mean(old_logp - logp, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(
    v: torch.Tensor, old_v: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
    cliprange_value: float,
) -> torch.Tensor:  # fmt: skip
    """Clipped value loss 0.5 * max((v - target)^2, (v_clipped - target)^2), masked mean."""
    v_clipped = old_v + torch.clamp(v - old_v, -cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.max((v - target) ** 2, (v_clipped - target) ** 2), mask)
