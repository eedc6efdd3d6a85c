"""Projected bills before launch: tokens -> FLOPs -> GPU-hours -> dollars.

First cut: FLOPs = 6 * N * D for a full fine-tune (8 * N * D with activation recomputation),
hours = FLOPs / (num_gpus * peak FLOP/s * MFU), dollars = hours * instance price * nodes.
The MFU assumption and the prices come from the job's `cost` section (conf/pricing/).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.training.model import count_params


@dataclass
class Projection:
    n_params: int
    tokens: float
    flops: float
    hours: float
    usd_on_demand: float
    usd_spot: float | None
    price_per_hour_usd: float
    mfu: float
    num_gpus: int
    instance_type: str
    market: str

    @property
    def usd(self) -> float:
        """The bill in the job's own market."""
        if self.market == "spot" and self.usd_spot is not None:
            return self.usd_spot
        return self.usd_on_demand

    def as_dict(self) -> dict:
        return {**asdict(self), "usd": self.usd}

    def summary(self) -> str:
        spot = f", ${self.usd_spot:,.0f} on spot" if self.usd_spot is not None else ""
        return (
            f"{self.n_params / 1e9:.2f}B params x {self.tokens / 1e9:.3f}B tokens = "
            f"{self.flops:.2e} FLOPs -> {self.hours:,.1f} h on {self.num_gpus} GPUs at "
            f"{self.mfu:.0%} MFU ({self.instance_type}) -> ${self.usd_on_demand:,.0f} on-demand{spot}"
        )


def flops_per_token(n_params: int, activation_checkpointing: bool) -> float:
    """6N (forward 2N + backward 4N), plus another forward (2N) when activations are recomputed."""
    return (8.0 if activation_checkpointing else 6.0) * n_params


def train_tokens(cfg: JobConfig, measured: tuple[int, int] | None = None) -> float:
    """Tokens processed over the whole run.

    Args:
        measured: (examples, tokens) of one epoch measured from the prepared data; None = the
            job's declared `data.num_examples` x `data.tokens_per_example`.
    """
    if measured is not None:
        examples, per_epoch = measured
    elif cfg.data.num_examples and cfg.data.tokens_per_example:
        examples = cfg.data.num_examples
        per_epoch = cfg.data.num_examples * cfg.data.tokens_per_example
    else:
        raise ConfigError(
            f"job {cfg.job!r} ({cfg.scale}): cannot project the bill: set data.num_examples and "
            "data.tokens_per_example (declared dataset stats) or measure the data"
        )
    examples_seen = examples * cfg.train.epochs
    if cfg.train.max_steps is not None:
        examples_seen = min(examples_seen, cfg.train.max_steps * cfg.train.global_batch_size)
    return examples_seen * per_epoch / examples


def project(
    cfg: JobConfig, measured: tuple[int, int] | None = None, vocab_size: int | None = None
) -> Projection:
    """The projected bill of `cfg` on its declared hardware."""
    n = count_params(cfg.model, vocab_size)
    tokens = train_tokens(cfg, measured)
    flops = flops_per_token(n, cfg.train.activation_checkpointing) * tokens
    hw, price = cfg.hardware, cfg.cost.instances[cfg.hardware.instance_type]
    if hw.accelerator == "cpu":
        raise ConfigError(f"job {cfg.job!r} ({cfg.scale}) runs on CPU: no GPU projection")
    num_gpus = hw.num_workers * hw.gpus_per_worker
    peak = cfg.cost.gpus[hw.accelerator].peak_flops
    hours = flops / (num_gpus * peak * cfg.cost.mfu) / 3600.0
    nodes = max(hw.num_nodes, math.ceil(num_gpus / max(1, price.num_gpus)))
    return Projection(
        n_params=n,
        tokens=tokens,
        flops=flops,
        hours=hours,
        usd_on_demand=hours * price.on_demand_per_hour_usd * nodes,
        usd_spot=hours * price.spot_per_hour_usd * nodes if price.spot_per_hour_usd else None,
        price_per_hour_usd=price.on_demand_per_hour_usd * nodes,
        mfu=cfg.cost.mfu,
        num_gpus=num_gpus,
        instance_type=hw.instance_type,
        market=hw.market,
    )


def cluster_price_per_hour(cfg: JobConfig) -> float:
    """$/h of the job's cluster in its market (what the live ledger accrues)."""
    price = cfg.cost.instances[cfg.hardware.instance_type]
    per_node = price.on_demand_per_hour_usd
    if cfg.hardware.market == "spot" and price.spot_per_hour_usd is not None:
        per_node = price.spot_per_hour_usd
    return per_node * cfg.hardware.num_nodes
