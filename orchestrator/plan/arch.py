"""GPT-3-style architectures (Cerebras-GPT): the published family and a shape for any size.

Cerebras-GPT is GPT-2/GPT-3's decoder: learned positions, tied embeddings, GELU MLP of 4 x width,
LayerNorm, dense attention (transformers' GPT2LMHeadModel). Its parameter count, embeddings
included (as Cerebras and Chinchilla count), is

    N = V d + P d + L (12 d^2 + 13 d) + 2 d        (V vocab, P context, L layers, d width)

`shape_for(N)` searches widths and depths for one within 5% of N whose width/depth ratio is
closest to the family's (interpolated from the published sizes), with heads of 64 (128 from
d = 1536 up, as Cerebras did; 32, 16 or 8 for tiny widths). Batch size and peak LR follow the published table, interpolated
in log-log between sizes and extrapolated below 111M along the table's fitted slope.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass

from orchestrator.config.schema import ConfigError

GPT2_VOCAB = 50257
CONTEXT = 2048


@dataclass(frozen=True)
class CerebrasSize:
    name: str
    layers: int
    d_model: int
    heads: int
    lr: float
    """Peak LR of the standard-parametrised run."""
    batch_seqs: int
    steps: int
    tokens: float

    @property
    def n_params(self) -> int:
        return gpt_params(self.layers, self.d_model, GPT2_VOCAB, CONTEXT)


# Cerebras/modelzoo configs/Cerebras_GPT/README.md (docs/facts/scaling_laws.md#cerebras-gpt). The 13B run
# changed batch 720 -> 1080 mid-run; 720 is its starting batch.
CEREBRAS_GPT = [
    CerebrasSize("111m", 10, 768, 12, 6.0e-4, 120, 9_037, 2.22e9),
    CerebrasSize("256m", 14, 1088, 17, 6.0e-4, 264, 9_468, 5.12e9),
    CerebrasSize("590m", 18, 1536, 12, 2.0e-4, 264, 21_836, 1.18e10),
    CerebrasSize("1.3b", 24, 2048, 16, 2.0e-4, 528, 24_334, 2.63e10),
    CerebrasSize("2.7b", 32, 2560, 20, 2.0e-4, 528, 49_041, 5.30e10),
    CerebrasSize("6.7b", 32, 4096, 32, 1.2e-4, 1040, 62_522, 1.33e11),
    CerebrasSize("13b", 40, 5120, 40, 1.2e-4, 720, 174_335, 2.57e11),
]
WARMUP_TOKENS = 375e6
"""Cerebras-GPT warmed up over 375M tokens at every size (1,525 steps for 111M)."""
MUP_BASE_WIDTH = 256
MUP_BASE_LR = 6.0e-3


def gpt_params(layers: int, d_model: int, vocab: int, context: int, ffn: int | None = None) -> int:
    """Parameters of a GPT-2-style decoder with tied embeddings (exact for GPT2LMHeadModel)."""
    f = ffn or 4 * d_model
    per_layer = 4 * d_model * d_model + 2 * d_model * f + 9 * d_model + f
    return vocab * d_model + context * d_model + layers * per_layer + 2 * d_model


@dataclass(frozen=True)
class Shape:
    layers: int
    d_model: int
    heads: int
    ffn: int
    vocab: int
    context: int
    n_params: int

    def as_dict(self) -> dict:
        return asdict(self)


def _loglog(x: float, xs: list[float], ys: list[float], below: str = "slope") -> float:
    """Piecewise-linear interpolation in log-log; below the table: the fitted slope (or clamp)."""
    lx, lxs, lys = math.log(x), [math.log(v) for v in xs], [math.log(v) for v in ys]
    if lx <= lxs[0]:
        if below == "clamp":
            return ys[0]
        m = len(lxs)
        mx, my = sum(lxs) / m, sum(lys) / m
        slope = sum((a - mx) * (b - my) for a, b in zip(lxs, lys, strict=True)) / sum(
            (a - mx) ** 2 for a in lxs
        )
        return math.exp(lys[0] + slope * (lx - lxs[0]))
    if lx >= lxs[-1]:
        return ys[-1]
    i = bisect.bisect_right(lxs, lx)
    t = (lx - lxs[i - 1]) / (lxs[i] - lxs[i - 1])
    return math.exp(lys[i - 1] + t * (lys[i] - lys[i - 1]))


def _table(attr) -> tuple[list[float], list[float]]:
    return [float(s.n_params) for s in CEREBRAS_GPT], [float(attr(s)) for s in CEREBRAS_GPT]


def aspect_ratio(n_params: float) -> float:
    """Width / depth of the family at this size (77 at 111M, 128 at 6.7B+; clamped below)."""
    return _loglog(n_params, *_table(lambda s: s.d_model / s.layers), below="clamp")


def batch_tokens(n_params: float) -> float:
    """Tokens per optimizer step of the family at this size."""
    return _loglog(n_params, *_table(lambda s: s.batch_seqs * CONTEXT))


def peak_lr(n_params: float, cap: float = MUP_BASE_LR) -> float:
    """Standard-parametrisation peak LR at this size; extrapolation below 111M is capped at the
    largest LR Cerebras used anywhere (the muP base LR)."""
    return min(cap, _loglog(n_params, *_table(lambda s: s.lr)))


def _heads(d: int) -> int | None:
    """Heads of 128 from width 1536, 64 from 256, and 32/16 for tiny widths (None: no fit)."""
    dims = (128, 64) if d >= 1536 else (64,) if d >= 256 else (32, 16) if d >= 128 else (16, 8)
    for head_dim in dims:
        if d % head_dim == 0:
            return d // head_dim
    return None


def shape_for(
    n_target: float,
    vocab: int = GPT2_VOCAB,
    context: int = CONTEXT,
    tolerance: float = 0.05,
    min_layers: int = 2,
) -> Shape:
    """The GPT-3-style shape within `tolerance` of `n_target` parameters closest to the family's
    width/depth ratio.

    Raises:
        ConfigError: no shape gets within tolerance (the target is smaller than the embeddings
            of the narrowest model, or the tolerance is too tight).
    """
    want = math.log(aspect_ratio(n_target))
    best, best_key = None, None
    step = 8 if n_target < 1e7 else 16 if n_target < 1e9 else 64
    for d in range(max(16, step), 16385, step):
        heads = _heads(d)
        if heads is None:
            continue
        fixed = vocab * d + context * d + 2 * d
        per_layer = 12 * d * d + 13 * d
        if fixed > n_target * (1 + tolerance):
            break
        layers = max(min_layers, round((n_target - fixed) / per_layer))
        n = gpt_params(layers, d, vocab, context)
        err = abs(n / n_target - 1.0)
        key = (err > tolerance, abs(math.log(d / layers) - want) if err <= tolerance else err)
        if best_key is None or key < best_key:
            best, best_key = Shape(layers, d, heads, 4 * d, vocab, context, n), key
    if best is None or best_key[0]:
        smallest = gpt_params(min_layers, 16, vocab, context)
        raise ConfigError(
            f"no GPT-3-style shape within {tolerance:.0%} of {n_target:,.0f} parameters with "
            f"vocab {vocab} and context {context} (the smallest is {smallest:,}: {min_layers} "
            "layers of width 16); raise the budget or use a smaller vocabulary"
        )
    return best
