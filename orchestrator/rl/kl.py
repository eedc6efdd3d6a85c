"""KL controllers for PPO, as pure state updates (a checkpoint holds the value: a resumed run
continues with the coefficient it had, not `init`).

Adaptive (Ziegler et al. 2019; TRL's AdaptiveKLController used by StackLLaMA: init 0.2,
target 6, horizon 10000): `e = clip(kl / target - 1, -0.2, 0.2)`, `beta <- beta * (1 + e *
n_steps / horizon)`, n_steps = samples in the update. Fixed (ColossalChat: 0.1): never moves.
Sources: docs/facts/rlhf.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KlController:
    value: float
    target: float | None = None
    """None: a fixed coefficient."""
    horizon: float = 10000.0

    def update(self, kl: float, n_steps: int) -> KlController:
        if self.target is None:
            return self
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        return KlController(self.value * (1.0 + error * n_steps / self.horizon), self.target,
                            self.horizon)  # fmt: skip


def adaptive(init: float = 0.2, target: float = 6.0, horizon: float = 10000.0) -> KlController:
    return KlController(init, target, horizon)


def fixed(value: float) -> KlController:
    return KlController(value)


def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log p - log ref (TRL's `kl`, StackLLaMA's per-token penalty)."""
    return logp - ref_logp


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """ColossalChat's estimate as its `coati/models/utils.py` computes it: (e^d - 1) - d with
    d = log p - log ref (>= 0, 0 only where the policy equals the reference)."""
    d = logp - ref_logp
    return (d.exp() - 1) - d
