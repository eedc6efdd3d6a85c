"""Compute-optimal model size and data: the 20-tokens-per-parameter rule and the parametric fit.

Training compute C ~ 6 N D FLOPs (N parameters, D tokens). Given C, two rules pick (N, D):

- `tokens_per_param`: D = r N with r = 20 (Chinchilla's rule of thumb, what Cerebras-GPT used):
  N = sqrt(C / (6 r)).
- `parametric`: minimise the fitted loss L(N, D) = E + A / N^alpha + B / D^beta on 6 N D = C.
  With D = C / (6 N), dL/dN = 0 gives the closed form
      N* = G (C/6)^(beta / (alpha + beta)),  D* = (C/6)^(alpha / (alpha + beta)) / G,
      G  = (alpha A / (beta B))^(1 / (alpha + beta)).

Constants (docs/facts/scaling_laws.md): the Epoch AI refit (Besiroglu et al. 2024) of
Hoffmann et al.'s data is the default; Hoffmann's published (rounded) Approach-3 fit is an
option. The rounded constants do not reproduce 20 tokens/param at scale (D*/N* grows to ~90 at
5.8e23 FLOPs); the refit gives ~18-26 over 1e18-1e24. Both fits predict loss on MassiveText
with the Chinchilla tokenizer: the number is comparable between sizes, not to another corpus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TOKENS_PER_PARAM = 20.0


@dataclass(frozen=True)
class LossFit:
    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, n_params: float, tokens: float) -> float:
        return self.E + self.A / n_params**self.alpha + self.B / tokens**self.beta

    def optimum(self, flops: float) -> tuple[float, float]:
        """(N*, D*) minimising `loss` at 6 N D = flops (closed form)."""
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        c6 = flops / 6.0
        n = g * c6 ** (b / (a + b))
        return n, c6 / n


FITS = {
    "epoch": LossFit(
        "epoch", E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
        source="Besiroglu et al. 2024 (arXiv 2404.10102), Epoch AI refit of Hoffmann et al. Fig. 4",
    ),
    "hoffmann": LossFit(
        "hoffmann", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
        source="Hoffmann et al. 2022 (arXiv 2203.15556) eq. 10, Approach 3 (rounded)",
    ),
}  # fmt: skip


def tokens_per_param_optimum(flops: float, ratio: float = TOKENS_PER_PARAM) -> tuple[float, float]:
    """(N, D) with D = ratio * N and 6 N D = flops."""
    n = math.sqrt(flops / (6.0 * ratio))
    return n, ratio * n
