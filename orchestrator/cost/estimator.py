"""Projected bills before launch: tokens -> FLOPs -> hours (MFU model + overheads) -> dollars.

FLOPs per processed token (docs/facts/hardware_and_prices.md):
    full fine-tune      6N    (forward 2N + backward 4N)
    LoRA / adapters     4N    (no weight gradients for the frozen base)
    + 2N when activations are recomputed (activation checkpointing)
    + 6 * n_layers * seq_len * d_model for attention (Kaplan), material at 2k context

Hours = FLOPs / (num_gpus * peak * MFU) plus start-up, checkpoint saves, and the work expected to
be lost to preemptions on spot. One MFU model serves every recipe (`conf/pricing`, `mfu_model`):

    MFU = max_mfu * L / (L + half_seq_len) * gpu_factor * int8_factor

where L is the sequence length actually processed (padding included). Short padded sequences
keep GPUs far from peak; long packed ones approach `max_mfu`. The two constants are calibrated on
the two published runs whose time is known (docs/COST_MODEL.md): Alpaca (7B, 8 x A100, ~3 h,
L ~ 300) and Vicuna (13B, 8 x A100-80GB, ~24 h, L = 2048). No recipe has its own fudge factor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from orchestrator.config.schema import ConfigError, InstancePrice, JobConfig, MfuModel
from orchestrator.training.model import count_params


@dataclass
class Workload:
    """What a run computes, independent of where it runs."""

    n_params: int
    n_layers: int
    d_model: int
    tokens: float
    """Tokens processed over the run, padding included."""
    seq_len: float
    """Average processed sequence length."""
    method: str = "full"
    activation_checkpointing: bool = False
    load_8bit: bool = False


def flops_per_token(w: Workload) -> float:
    dense = (6.0 if w.method == "full" else 4.0) * w.n_params
    if w.activation_checkpointing:
        dense += 2.0 * w.n_params
    return dense + 6.0 * w.n_layers * w.seq_len * w.d_model


def mfu(model: MfuModel, gpu: str, seq_len: float, load_8bit: bool = False) -> float:
    value = model.max_mfu * seq_len / (seq_len + model.half_seq_len)
    value *= model.gpu_factor.get(gpu, 1.0)
    if load_8bit:
        value *= model.int8_factor
    return value


@dataclass
class Projection:
    n_params: int
    tokens: float
    flops: float
    mfu: float
    num_gpus: int
    instance_type: str
    market: str
    compute_hours: float
    overhead_hours: dict[str, float]
    hours: float
    hours_low: float
    hours_high: float
    price_on_demand_per_hour_usd: float
    price_spot_per_hour_usd: float | None
    usd_on_demand: float
    usd_on_demand_low: float
    usd_on_demand_high: float
    usd_spot: float | None
    usd_spot_low: float | None
    usd_spot_high: float | None
    assumptions: dict = field(default_factory=dict)

    @property
    def usd(self) -> float:
        """The bill in the job's own market."""
        if self.market == "spot" and self.usd_spot is not None:
            return self.usd_spot
        return self.usd_on_demand

    @property
    def usd_range(self) -> tuple[float, float]:
        """(low, high) of the bill in the job's own market."""
        if self.market == "spot" and self.usd_spot is not None:
            return self.usd_spot_low, self.usd_spot_high
        return self.usd_on_demand_low, self.usd_on_demand_high

    def as_dict(self) -> dict:
        return {**asdict(self), "usd": self.usd}

    def summary(self) -> str:
        spot = ""
        if self.usd_spot is not None:
            spot = f", ${self.usd_spot:,.0f} on spot (${self.usd_spot_low:,.0f}-${self.usd_spot_high:,.0f})"
        return (
            f"{self.n_params / 1e9:.2f}B params x {self.tokens / 1e9:.3f}B tokens = "
            f"{self.flops:.2e} FLOPs -> {self.hours:,.1f} h ({self.hours_low:,.1f}-{self.hours_high:,.1f}) "
            f"on {self.num_gpus} x GPU at {self.mfu:.0%} MFU ({self.instance_type}) -> "
            f"${self.usd_on_demand:,.0f} on-demand{spot}"
        )


def workload(
    cfg: JobConfig, measured: tuple[int, int] | None = None, vocab_size: int | None = None
) -> Workload:
    """The job's workload: tokens from the prepared data when measured, else the declared stats.

    Args:
        measured: (examples, processed tokens) of one epoch; None = the job's declared
            `data.num_examples` x `data.tokens_per_example`.
    """
    if cfg.data.format == "text":  # pretraining: fixed-length packed sequences, sized in tokens
        seq = cfg.data.max_seq_len
        step_tokens = cfg.train.global_batch_size * seq
        if cfg.train.max_steps is not None:
            tokens = float(cfg.train.max_steps * step_tokens)
        elif cfg.train.max_tokens is not None:
            tokens = float(math.ceil(cfg.train.max_tokens / step_tokens) * step_tokens)
        else:
            raise ConfigError(
                f"job {cfg.job!r} ({cfg.scale}): data.format=text needs train.max_tokens, "
                "train.max_steps or an enabled plan to size the run"
            )
        return Workload(
            n_params=count_params(cfg.model, vocab_size),
            n_layers=cfg.model.num_layers,
            d_model=cfg.model.hidden_size,
            tokens=tokens,
            seq_len=float(seq),
            method=cfg.train.method,
            activation_checkpointing=cfg.train.activation_checkpointing,
        )
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
    return Workload(
        n_params=count_params(cfg.model, vocab_size),
        n_layers=cfg.model.num_layers,
        d_model=cfg.model.hidden_size,
        tokens=examples_seen * per_epoch / examples,
        seq_len=per_epoch / examples,
        method=cfg.train.method,
        activation_checkpointing=cfg.train.activation_checkpointing,
        load_8bit=cfg.model.load_8bit,
    )


def train_tokens(cfg: JobConfig, measured: tuple[int, int] | None = None) -> float:
    return workload(cfg, measured).tokens


@dataclass(frozen=True)
class SaveTimes:
    """One checkpoint save of a job: seconds training is blocked, seconds until committed."""

    blocked_s: float
    total_s: float
    measured: bool = False
    """From this run's own saves (else the model below)."""


def save_times(
    cfg: JobConfig, n_params: int, n_trainable: int, measured: SaveTimes | None = None
) -> SaveTimes:
    """The save of `cfg`: measured when the run has saved before (its result file), else
    modelled. Every rank writes and uploads its own shards, so a node's share goes at the
    node's write rate (`checkpoint_write_bytes_per_s`), all nodes at once. An async DCP save
    blocks training only while the state is copied into CPU staging, each GPU its shard at
    `checkpoint_stage_bytes_per_s`; a synchronous save (or DeepSpeed's) blocks throughout."""
    if measured is not None:
        return measured
    from orchestrator.cost.memory import checkpoint_bytes

    hw, o = cfg.hardware, cfg.cost.overheads
    nbytes = checkpoint_bytes(cfg, n_params, n_trainable)
    write_s = nbytes / (o.checkpoint_write_bytes_per_s * max(1, hw.num_nodes))
    if cfg.checkpoint.async_save and cfg.train.strategy != "deepspeed":
        workers = hw.num_workers * (hw.gpus_per_worker if hw.accelerator != "cpu" else 1)
        blocked = nbytes / (o.checkpoint_stage_bytes_per_s * max(1, workers))
        return SaveTimes(blocked_s=blocked, total_s=blocked + write_s)
    return SaveTimes(blocked_s=write_s, total_s=write_s)


def measured_save_times(blocked_s: list[float], total_s: list[float]) -> SaveTimes | None:
    """A run's measured save (the median of its saves), or None before its first save."""
    if not blocked_s or not total_s:
        return None
    import statistics

    return SaveTimes(statistics.median(blocked_s), statistics.median(total_s), measured=True)


def project(
    cfg: JobConfig,
    measured: tuple[int, int] | None = None,
    vocab_size: int | None = None,
    saves: SaveTimes | None = None,
) -> Projection:
    """The projected bill of `cfg` on its declared hardware, with a low/high range.

    Args:
        measured: (examples, processed tokens) of one epoch of the prepared data.
        saves: this run's measured save time (a continued run), else modelled (`save_times`).
    """
    hw, cm = cfg.hardware, cfg.cost
    price = cm.instances[hw.instance_type]
    if hw.accelerator == "cpu":
        num_gpus, peak, gpu = hw.num_workers, cm.cpu_peak_flops_per_worker, "cpu"
    else:
        num_gpus, peak, gpu = (
            hw.num_workers * hw.gpus_per_worker,
            cm.gpus[hw.accelerator].peak_flops,
            hw.accelerator,
        )
    w = workload(cfg, measured, vocab_size)
    flops = flops_per_token(w) * w.tokens
    util = cm.mfu if cm.mfu is not None else mfu(cm.mfu_model, gpu, w.seq_len, w.load_8bit)
    compute_h = flops / (num_gpus * peak * util) / 3600.0

    o = cm.overheads
    steps = (
        cfg.train.max_steps
        if cfg.train.max_steps is not None
        else math.ceil(w.tokens / w.seq_len / cfg.train.global_batch_size)
    )
    if w.method == "full":
        n_trainable = w.n_params
    else:
        from orchestrator.cost.memory import trainable_params

        n_trainable = trainable_params(cfg, vocab_size)[1]
    save = save_times(cfg, w.n_params, n_trainable, saves)
    save_s = save.blocked_s  # what a save costs training (Young/Daly's C)
    rate = o.spot_preemptions_per_node_hour * max(1, hw.num_nodes)
    ck = cfg.checkpoint
    if ck.interval == "minutes" and ck.every_minutes:
        n_saves = max(1, math.floor(compute_h * 60.0 / ck.every_minutes))
    elif ck.interval == "auto":  # what the run will choose once it has measured a save
        from orchestrator.checkpoint.policy import young_daly_interval_s

        # The cluster's MTBF: a preemption of any of its nodes stops the run.
        mtbf_h = min(ck.mtbf_hours, 1.0 / rate) if hw.market == "spot" else ck.mtbf_hours
        every_s = young_daly_interval_s(save_s, mtbf_h * 3600.0)
        n_saves = max(1, math.floor(compute_h * 3600.0 / every_s))
    else:
        n_saves = max(1, steps // ck.every_steps)
    overhead = {
        "startup": (price.startup_s if price.startup_s is not None else o.startup_s) / 3600.0,
        "checkpoints": n_saves * save_s / 3600.0,
    }
    # Spot: expected preemptions, each losing on average half a checkpoint interval, the part
    # of a save still in flight (async: written after training resumed), and a restart.
    interval_h = compute_h / max(1, n_saves)
    lost_per_preemption_h = (
        interval_h / 2 + (save.total_s - save.blocked_s) / 3600.0 + o.restart_s / 3600.0
    )
    base_h = compute_h + sum(overhead.values())
    lost_share = rate * lost_per_preemption_h
    if lost_share >= 0.9:
        raise ConfigError(
            f"job {cfg.job!r}: on spot, {rate:.2f} preemptions per hour over {hw.num_nodes} "
            f"nodes, each losing {lost_per_preemption_h:.2f} h, leave no time to train; "
            "checkpoint more often (checkpoint.interval=auto), use fewer nodes or on_demand"
        )
    spot_h = base_h / (1.0 - lost_share)
    spot = hw.market == "spot"
    hours = spot_h if spot else base_h
    overhead["preemptions"] = hours - base_h

    lo, hi = cm.mfu_model.range_low, cm.mfu_model.range_high
    nodes = (
        max(hw.num_nodes, math.ceil(num_gpus / max(1, price.num_gpus)))
        if price.num_gpus
        else hw.num_nodes
    )
    od = price.on_demand_per_hour_usd * nodes
    sp = price.spot_per_hour_usd * nodes if price.spot_per_hour_usd is not None else None

    def at(h: float, mfu_scale: float) -> float:  # hours with MFU scaled (compute part only)
        return h - compute_h + compute_h / mfu_scale

    # More MFU than expected = fewer hours: the low bill comes from the high MFU.
    h_low, h_high = at(hours, hi), at(hours, lo)
    return Projection(
        n_params=w.n_params,
        tokens=w.tokens,
        flops=flops,
        mfu=util,
        num_gpus=num_gpus,
        instance_type=hw.instance_type,
        market=hw.market,
        compute_hours=compute_h,
        overhead_hours=overhead,
        hours=hours,
        hours_low=h_low,
        hours_high=h_high,
        price_on_demand_per_hour_usd=od,
        price_spot_per_hour_usd=sp,
        usd_on_demand=base_h * od,
        usd_on_demand_low=at(base_h, hi) * od,
        usd_on_demand_high=at(base_h, lo) * od,
        usd_spot=spot_h * sp if sp is not None else None,
        usd_spot_low=at(spot_h, hi) * sp if sp is not None else None,
        usd_spot_high=at(spot_h, lo) * sp if sp is not None else None,
        assumptions={
            "seq_len": w.seq_len,
            "flops_per_token": flops_per_token(w),
            "peak_flops": peak,
            "steps": steps,
            "checkpoint_saves": n_saves,
            "checkpoint_blocked_s": save.blocked_s,
            "checkpoint_total_s": save.total_s,
            "checkpoint_save_measured": save.measured,
            "preemptions_expected_on_spot": rate * spot_h,
            "hours_on_demand": base_h,
            "hours_spot": spot_h,
            "price_source": price.source,
        },
    )


def price_per_hour(price: InstancePrice, market: str) -> float:
    """$/h of one node of `price` in `market` (spot falls back to on-demand without a spot price)."""
    if market == "spot" and price.spot_per_hour_usd is not None:
        return price.spot_per_hour_usd
    return price.on_demand_per_hour_usd


def cluster_price_per_hour(cfg: JobConfig) -> float:
    """$/h of the job's cluster in its market (what the live ledger accrues)."""
    price = cfg.cost.instances[cfg.hardware.instance_type]
    return price_per_hour(price, cfg.hardware.market) * cfg.hardware.num_nodes
