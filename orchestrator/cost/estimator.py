"""Projected bills: what a run processes, how long each step takes, and what that costs.

Two projections per job (docs/COST_MODEL.md):

- ours (the headline): this orchestrator's run, with its own batching (the batch planner over
  the job's length distribution), attention kernel, strategy, method and checkpoint policy;
- replay (`replay=True`): the original run as it was (`replay:` in the job file: its padding
  or packing and attention kernel), on the same hardware and run length.

Hours = the sampled steps' time from the step-time model (`steptime.py`: FLOPs at a fitted
kernel efficiency, exposed communication, optimizer), x the run's steps, + the final eval,
start-up, checkpoint saves, and on spot the work expected to be lost to preemptions and the wait
for capacity. Dollars = the worker nodes' hours at their price, + the head node for the whole
run, + idle workers until scale-down, + storage of the kept checkpoints and export.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.config.schema import ConfigError, InstancePrice, JobConfig
from orchestrator.cost import steptime
from orchestrator.cost.lengths import Lengths, job_lengths, sample_steps
from orchestrator.cost.steptime import Device, ModelShape, Pass, Regime
from orchestrator.objectives import ObjectiveWork
from orchestrator.objectives import spec as objective_spec
from orchestrator.training.model import count_params
from orchestrator.urls import is_object_store, scheme

SAMPLED_STEPS = 16
"""Steps drawn from the length distribution and planned, to average the step time over."""


@dataclass
class Projection:
    n_params: int
    tokens: float
    """Real tokens trained on over the run (padding excluded)."""
    slots: float
    """Token positions processed over the run (padding included)."""
    flops: float
    """Model FLOPs (what MFU counts)."""
    executed_flops: float
    """FLOPs the hardware executes (padding, recomputation: what HFU counts)."""
    mfu: float
    hfu: float
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
    usd_extra: dict[str, float] = field(default_factory=dict)
    """Dollars besides the workers: head node, idle workers until scale-down, storage."""
    replay: bool = False
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
        if (
            self.market == "spot"
            and self.usd_spot_low is not None
            and self.usd_spot_high is not None
        ):
            return self.usd_spot_low, self.usd_spot_high
        return self.usd_on_demand_low, self.usd_on_demand_high

    def as_dict(self) -> dict:
        return {**asdict(self), "usd": self.usd, "usd_low": self.usd_range[0],
                "usd_high": self.usd_range[1]}  # fmt: skip

    def summary(self) -> str:
        spot = ""
        if (
            self.usd_spot is not None
            and self.usd_spot_low is not None
            and self.usd_spot_high is not None
        ):
            spot = (
                f", {_usd(self.usd_spot)} on spot "
                f"({_usd(self.usd_spot_low)}-{_usd(self.usd_spot_high)})"
            )
        what = "replay of the original" if self.replay else "our run"
        workers = "CPU worker" if self.assumptions.get("peak_flops", 1e13) < 1e12 else "GPU"
        return (
            f"{what}: {_count(self.n_params)} params x {_count(self.tokens)} tokens "
            f"({self.slots / max(1.0, self.tokens):.2f} slots per token) = {self.flops:.2e} FLOPs "
            f"-> {_duration(self.hours)} ({_duration(self.hours_low)}-{_duration(self.hours_high)})"
            f" on {self.num_gpus} x {workers} at {self.mfu:.0%} MFU / {self.hfu:.0%} HFU "
            f"({self.instance_type}) -> {_usd(self.usd_on_demand)} on-demand{spot}"
        )


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _duration(hours: float) -> str:
    return f"{hours:,.1f} h" if hours >= 0.1 else f"{hours * 3600:,.0f} s"


def _usd(usd: float) -> str:
    return f"${usd:,.0f}" if usd >= 10 else f"${usd:.4f}"


def model_shape(cfg: JobConfig, vocab_size: int | None = None) -> ModelShape:
    from orchestrator.cost.memory import checkpoint_counts, trainable_params

    n = count_params(cfg.model, vocab_size)
    trained = n if cfg.train.method == "full" else trainable_params(cfg, vocab_size)[1]
    tensors, held = checkpoint_counts(cfg, vocab_size)
    return ModelShape(n, trained, cfg.model.num_layers, cfg.model.hidden_size, tensors, held)


def device(cfg: JobConfig, replay: bool = False) -> Device:
    """The job's worker device and layout (GPU from the catalog; CPU workers at local scale)."""
    hw, cm = cfg.hardware, cfg.cost
    price = cm.instances[hw.instance_type]
    framework = cm.kernel.frameworks.get(cfg.replay.framework, 1.0) if replay else 1.0
    if hw.accelerator == "cpu":
        return Device(
            peak_flops=cm.cpu_peak_flops_per_worker, kernel=cm.cpu_kernel, gpu="cpu",
            framework=framework, world=hw.num_workers, gpus_per_node=hw.num_workers,
            nodes=max(1, hw.num_nodes),
        )  # fmt: skip
    gpu = cm.gpus[hw.accelerator]
    world = hw.num_workers * hw.gpus_per_worker
    nodes = max(1, hw.num_nodes)
    return Device(
        peak_flops=gpu.peak_flops, kernel=cm.kernel, gpu=hw.accelerator, framework=framework,
        memory_bytes_per_s=gpu.memory_bytes_per_s, world=world,
        gpus_per_node=max(1, world // nodes), nodes=nodes,
        link_bytes_per_s=price.gpu_link_bytes_per_s,
        network_bytes_per_s=price.network_bytes_per_s,
    )  # fmt: skip


def regime(cfg: JobConfig, replay: bool = False) -> Regime:
    t = cfg.train
    if t.strategy == "deepspeed":
        strategy = f"zero{cfg.deepspeed.zero_stage}"
    elif t.strategy == "fsdp":
        hsdp = cfg.fsdp.hsdp if cfg.fsdp.hsdp is not None else cfg.hardware.num_nodes > 1
        strategy = "hsdp" if hsdp and cfg.hardware.num_nodes > 1 else "fsdp"
    else:
        strategy = "ddp"
    if replay:
        attention = cfg.replay.attention
    elif cfg.hardware.accelerator != "cpu" and cfg.model.attn_implementation == "flash_attention_2":
        attention = "flash"
    else:
        attention = "sdpa" if cfg.model.attn_implementation == "sdpa" else "eager"
    return Regime(
        method=t.method, recompute=t.activation_checkpointing, load_8bit=cfg.model.load_8bit,
        attention=attention, strategy=strategy,
        param_bytes=2 if t.precision == "bf16" else 4,
    )  # fmt: skip


def batching(cfg: JobConfig, replay: bool = False) -> tuple[str, int, int | None]:
    """(mode, per-device micro-batch, token budget) of ours or of the original's run."""
    from orchestrator.data.batching import resolve_mode

    if replay:
        r = cfg.replay
        return r.batching, r.micro_batch_size or cfg.train.micro_batch_size, None
    mode = resolve_mode(cfg.train.batching, cfg.hardware.accelerator, cfg.model.attn_implementation)
    return mode, cfg.train.micro_batch_size, cfg.train.tokens_per_micro_batch


def objective_work(cfg: JobConfig, shape, dev, mean_len: float) -> ObjectiveWork:
    """The work of a step of `cfg.train.objective`, from its spec (orchestrator/objectives/;
    docs/rl.md#what-a-stage-costs). An objective without a work model has no price: an error,
    never another objective's price."""
    spec = objective_spec(cfg.train.objective)
    if spec.work is None:
        if spec.data_kinds == ("sft",):
            return ObjectiveWork(train_passes=1.0, tokens=1.0)
        raise ConfigError(
            f"train.objective={spec.name!r} has no cost model (ObjectiveSpec.work): it cannot "
            "be estimated"
        )
    return spec.work(cfg, shape, dev, mean_len)


_SUMMED = ("tokens", "slots", "flops", "executed_flops", "compute_hours", "hours", "hours_low",
           "hours_high", "usd_on_demand", "usd_on_demand_low", "usd_on_demand_high", "usd",
           "usd_low", "usd_high")  # fmt: skip
_SUMMED_OR_NONE = ("usd_spot", "usd_spot_low", "usd_spot_high")


def combine_projections(parts: dict[str, dict]) -> dict:
    """Pure: one projection (`Projection.as_dict()`'s keys) for several runs made one after
    another (a pipeline's stages): what adds up is summed (hours, dollars, FLOPs, each overhead
    and extra), utilisation is weighted by compute (total model FLOPs / the time they took at
    each stage's rate), and what differs between stages is listed. A script reads a pipeline's
    estimate and a single job's the same way; a pipeline's also has `stages`."""
    rows = list(parts.values())
    if not rows:
        raise ValueError("no projections to combine")
    out: dict = {k: sum(r[k] for r in rows) for k in _SUMMED}
    for k in _SUMMED_OR_NONE:
        out[k] = None if any(r[k] is None for r in rows) else sum(r[k] for r in rows)
    for k in ("overhead_hours", "usd_extra"):
        keys = sorted({name for r in rows for name in r[k]})
        out[k] = {name: sum(r[k].get(name, 0.0) for r in rows) for name in keys}
    for k, flops in (("mfu", "flops"), ("hfu", "executed_flops")):
        at_rate = sum(r[flops] / r[k] for r in rows if r[k])
        out[k] = sum(r[flops] for r in rows if r[k]) / at_rate if at_rate else 0.0

    def one(k):
        values = sorted({json.dumps(r[k], sort_keys=True) for r in rows})
        return json.loads(values[0]) if len(values) == 1 else [json.loads(v) for v in values]

    for k in ("instance_type", "market", "price_on_demand_per_hour_usd",
              "price_spot_per_hour_usd", "replay"):  # fmt: skip
        out[k] = one(k)
    out["n_params"] = max(r["n_params"] for r in rows)
    out["num_gpus"] = max(r["num_gpus"] for r in rows)
    out["assumptions"] = {name: r["assumptions"] for name, r in parts.items()}
    return out


def decode_s(cfg: JobConfig, shape, dev, w: ObjectiveWork) -> float:
    """Seconds of a step's generation: one decode step per sampled token (weights and KV cache
    read once per token: steptime.decode_step_s)."""
    if not w.decode_tokens:
        return 0.0
    weight_bytes = 1.0 if cfg.model.load_8bit else (4.0 if cfg.train.precision == "fp32" else 2.0)
    step = steptime.decode_step_s(
        shape, dev, max(1, w.decode_batch), w.decode_context, weight_bytes
    )
    return math.ceil(w.decode_tokens) * step


def total_steps(cfg: JobConfig, num_examples: int) -> int:
    """Optimizer steps of the run, as the loop counts them (reward/DPO: steps of groups, PPO:
    iterations of global_batch_size prompts)."""
    t = cfg.train
    if not objective_spec(t.objective).trains:
        return 1  # an evaluation: its whole work is priced as one step (ObjectiveSpec.work)
    if t.max_steps is not None:
        return t.max_steps
    if cfg.data.kind == "preference":  # ranked groups, projected as pairs
        num_examples = num_examples // objective_spec(t.objective).examples_per_item
    if cfg.data.format == "text":
        if t.max_tokens is None:
            raise ConfigError(
                f"job {cfg.job!r} ({cfg.scale}): data.format=text needs train.max_tokens, "
                "train.max_steps or an enabled plan to size the run"
            )
        return math.ceil(t.max_tokens / (t.global_batch_size * cfg.data.max_seq_len))
    return max(1, math.ceil(t.epochs * (num_examples // t.global_batch_size)))


def step_passes(
    cfg: JobConfig, lengths: Lengths | None, replay: bool, steps: int
) -> list[list[list[Pass]]]:
    """The planned passes of `steps` sampled steps (pretraining: full rows every pass)."""
    world = device(cfg).world
    if cfg.data.format == "text":
        seq, micro = cfg.data.max_seq_len, cfg.train.micro_batch_size
        per_rank = cfg.train.global_batch_size // (micro * world)
        p = Pass(micro * seq, float(micro * seq * seq), micro * seq, float(micro * seq * seq))
        return [[[p] * per_rank for _ in range(world)]]
    assert lengths is not None
    mode, micro, budget = batching(cfg, replay)
    varlen = regime(cfg, replay).attention == "flash"
    return sample_steps(
        lengths, steps=steps, global_batch=cfg.train.global_batch_size, seed=cfg.train.seed,
        mode=mode, world=world, micro_batch_size=micro, tokens_per_micro_batch=budget,
        max_seq_len=cfg.data.max_seq_len, varlen=varlen,
    )  # fmt: skip


@dataclass(frozen=True)
class SaveTimes:
    """One checkpoint save of a job: seconds training is blocked, seconds until committed."""

    blocked_s: float
    total_s: float
    measured: bool = False
    """From this run's own saves (else the model below)."""


def save_times(
    cfg: JobConfig,
    n_params: int,
    n_trainable: int,
    measured: SaveTimes | None = None,
    n_tensors: int = 0,
    n_held: int | None = None,
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
    nbytes = checkpoint_bytes(cfg, n_params, n_trainable, n_tensors, n_held)
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


def storage_prices(cfg: JobConfig) -> tuple[float, float]:
    """(USD per GB-month of the kept checkpoints and export, of the nodes' volumes): the store
    by storage.root's scheme, the volumes by the instance's cloud. A folder on this machine's
    own disk is not billed (the ledger does not bill it either); a folder root on GPU nodes is
    priced as S3 keeps it for `storage.retention_days` (the nodes' disks go with them)."""
    cm = cfg.cost
    cloud = cm.instances[cfg.hardware.instance_type].cloud
    volume = cm.volume_usd_per_gb_month[cloud]  # every instance's cloud is priced (schema)
    root = cfg.storage.root or ""
    folder = not is_object_store(root)
    if folder and cfg.hardware.accelerator == "cpu":
        return 0.0, volume
    store = "s3" if folder else scheme(root, "storage.root")
    if store not in cm.object_store_usd_per_gb_month:
        raise ConfigError(
            f"storage.root={root!r}: no cost.object_store_usd_per_gb_month.{store} price; "
            f"priced stores: {sorted(cm.object_store_usd_per_gb_month)}"
        )
    return cm.object_store_usd_per_gb_month[store], volume


def project(
    cfg: JobConfig,
    vocab_size: int | None = None,
    saves: SaveTimes | None = None,
    replay: bool = False,
    lengths: Lengths | None = None,
) -> Projection:
    """The projected bill of `cfg` on its declared hardware, with a low/high range.

    Args:
        vocab_size: the tokenizer's size when known (the embedding is part of the model).
        saves: this run's measured save time (a continued run), else modelled (`save_times`).
        replay: project the original run (`cfg.replay`) instead of ours.
        lengths: the measured length distribution (a launch's prepared data), else the
            job's (`lengths.job_lengths`).
    """
    hw, cm, o = cfg.hardware, cfg.cost, cfg.cost.overheads
    price = cm.instances[hw.instance_type]
    shape, dev, reg = model_shape(cfg, vocab_size), device(cfg, replay), regime(cfg, replay)
    dist = None if cfg.data.format == "text" else (lengths or job_lengths(cfg))
    steps = total_steps(cfg, dist.num_examples if dist else 0)
    step_s, real, slots, model_f, exec_f = _mean_step(cfg, shape, dev, reg, dist, replay, steps)
    compute_h = step_s * steps / 3600.0
    mfu, hfu = (f / (step_s * dev.peak_flops * dev.world) if step_s else 0.0
                for f in (model_f, exec_f))  # fmt: skip

    eval_h = _eval_hours(cfg, dist, _loss_step_s(cfg, shape, dev, reg, dist, replay, step_s))
    save = save_times(cfg, shape.n_params, shape.n_trainable, saves, shape.n_tensors, shape.n_held)
    rate = o.spot_preemptions_per_node_hour * max(1, hw.num_nodes)
    spot = hw.market == "spot"
    overhead, n_saves = _overheads(cfg, price, steps, compute_h, eval_h, save, rate)
    base_h = compute_h + sum(overhead.values())
    spot_h = _spot_hours(cfg, base_h, compute_h / max(1, n_saves), save, rate) if spot else base_h
    hours = spot_h if spot else base_h
    overhead["preemptions"] = hours - base_h

    nodes, od, sp = _node_prices(cfg, price, dev)
    wait_h = o.spot_capacity_wait_s / 3600.0 if spot else 0.0
    extra = _extra_usd(cfg, shape, nodes, hours, wait_h, sp if spot and sp is not None else od)

    k = dev.kernel
    at = functools.partial(_scaled, compute_h)
    assumptions = {
        "steps": steps,
        **_setting(cfg, dist, reg, replay),
        "step_s": step_s,
        "slots_per_real_token": slots / max(1.0, real),
        "peak_flops": dev.peak_flops,
        **_save_assumptions(n_saves, save),
        "preemptions_expected_on_spot": rate * spot_h,
        "hours_on_demand": base_h,
        "hours_spot": spot_h,
        "spot_capacity_wait_h": wait_h,
        "price_source": price.source,
    }
    if replay and cfg.replay.published_hours:
        assumptions["published"] = replay_check(cfg, hours, hfu)
    return Projection(
        n_params=shape.n_params,
        tokens=real * steps,
        slots=slots * steps,
        flops=model_f * steps,
        executed_flops=exec_f * steps,
        mfu=mfu,
        hfu=hfu,
        num_gpus=dev.world,
        instance_type=hw.instance_type,
        market=hw.market,
        compute_hours=compute_h,
        overhead_hours=overhead,
        hours=hours,
        hours_low=at(hours, k.range_high),
        hours_high=at(hours, k.range_low),
        price_on_demand_per_hour_usd=od,
        price_spot_per_hour_usd=sp,
        **_dollars(at, base_h, spot_h, od, sp, extra, (k.range_high, k.range_low)),
        usd_extra=extra,
        replay=replay,
        assumptions=assumptions,
    )


def _scaled(compute_h: float, h: float, scale: float) -> float:
    """`h` hours with the kernel efficiency (the compute hours) scaled by `scale`."""
    return h - compute_h + compute_h / scale


def _dollars(
    at: Callable[[float, float], float], base_h: float, spot_h: float, od: float,
    sp: float | None, extra: dict[str, float], scales: tuple[float, float],
) -> dict[str, Any]:  # fmt: skip
    """The bill on demand and on spot, each with its low/high range (`at`: hours with the
    kernel efficiency scaled by `scales`), the extra lines included."""
    add = sum(extra.values())
    fast, slow = scales
    out: dict[str, Any] = {
        "usd_on_demand": base_h * od + add,
        "usd_on_demand_low": at(base_h, fast) * od + add,
        "usd_on_demand_high": at(base_h, slow) * od + add,
    }
    for key, h in (("usd_spot", spot_h), ("usd_spot_low", at(spot_h, fast)),
                   ("usd_spot_high", at(spot_h, slow))):  # fmt: skip
        out[key] = h * sp + add if sp is not None else None
    return out


def _save_assumptions(n_saves: int, save: SaveTimes) -> dict[str, Any]:
    return {"checkpoint_saves": n_saves, "checkpoint_blocked_s": save.blocked_s,
            "checkpoint_total_s": save.total_s, "checkpoint_save_measured": save.measured}  # fmt: skip


def _setting(cfg: JobConfig, dist: Lengths | None, reg: Regime, replay: bool) -> dict[str, Any]:
    """What the projection assumed about the data and the kernels (its `assumptions`)."""
    return {
        "examples_per_epoch": dist.num_examples if dist else None,
        "lengths": {"kind": dist.kind, "source": dist.source, "mean": dist.mean} if dist else None,
        "batching": batching(cfg, replay)[0] if dist else "packed rows",
        "attention": reg.attention,
        "strategy": reg.strategy,
    }


def _overheads(
    cfg: JobConfig, price: InstancePrice, steps: int, compute_h: float, eval_h: float,
    save: SaveTimes, rate: float,
) -> tuple[dict[str, float], int]:  # fmt: skip
    """(hours beyond the steps: start-up, teardown, blocking checkpoint saves, the final
    eval; the number of saves). An objective that trains nothing saves nothing."""
    o = cfg.cost.overheads
    spot = cfg.hardware.market == "spot"
    n_saves = _n_saves(cfg, steps, compute_h, save.blocked_s, rate if spot else 0.0)
    if not objective_spec(cfg.train.objective).trains:
        n_saves = 0
    return {
        "startup": (price.startup_s if price.startup_s is not None else o.startup_s) / 3600.0,
        "teardown": (price.teardown_s if price.teardown_s is not None else o.teardown_s) / 3600.0,
        "checkpoints": n_saves * save.blocked_s / 3600.0,
        "eval": eval_h,
    }, n_saves


def node_prices(cfg: JobConfig) -> tuple[int, float, float | None]:
    """(nodes, on-demand $/h, spot $/h or None) of the whole cluster's workers, from the
    catalog: what the estimate prices and what the capacity policy weighs."""
    return _node_prices(cfg, cfg.cost.instances[cfg.hardware.instance_type], device(cfg))


def _node_prices(
    cfg: JobConfig, price: InstancePrice, dev: Device
) -> tuple[int, float, float | None]:
    """(nodes, on-demand $/h, spot $/h or None) of the whole cluster's workers."""
    hw = cfg.hardware
    nodes = hw.num_nodes
    if price.num_gpus:
        nodes = max(hw.num_nodes, math.ceil(dev.world / max(1, price.num_gpus)))
    od = price.on_demand_per_hour_usd * nodes
    sp = price.spot_per_hour_usd * nodes if price.spot_per_hour_usd is not None else None
    return nodes, od, sp


def _mean_step(
    cfg: JobConfig, shape: ModelShape, dev: Device, reg: Regime, dist: Lengths | None,
    replay: bool, steps: int,
) -> tuple[float, float, float, float, float]:  # fmt: skip
    """(seconds, real tokens, token slots, model FLOPs, executed FLOPs) of a mean step, over
    the sampled steps' passes; an objective other than SFT scales them by its work model."""
    sampled = step_passes(cfg, dist, replay, min(steps, SAMPLED_STEPS))

    def per_step(f) -> float:  # the mean over the sampled steps of a sum over their passes
        return sum(sum(f(p) for r in ranks for p in r) for ranks in sampled) / len(sampled)

    step_s = sum(steptime.step_s(shape, reg, dev, ranks) for ranks in sampled) / len(sampled)
    real, slots = per_step(lambda p: p.real), per_step(lambda p: p.slots)
    model_f = per_step(lambda p: steptime.pass_flops(shape, reg, p)[2])
    exec_f = per_step(lambda p: sum(steptime.pass_flops(shape, reg, p)[:2]))
    if cfg.train.objective != "sft":  # a step of groups or an RL iteration (objective_work)
        w = objective_work(cfg, shape, dev, dist.mean if dist else 0.0)
        step_s = step_s * w.train_passes + decode_s(cfg, shape, dev, w)
        real, slots = real * w.tokens, slots * w.tokens
        model_f, exec_f = model_f * w.train_passes, exec_f * w.train_passes
    return step_s, real, slots, model_f, exec_f


def _spot_hours(
    cfg: JobConfig, base_h: float, interval_h: float, save: SaveTimes, rate: float
) -> float:
    """The hours on spot: each expected preemption (`rate` per hour) loses half a checkpoint
    interval, the save in flight and a restart. A job that would lose 90% is refused."""
    o, hw = cfg.cost.overheads, cfg.hardware
    lost_h = interval_h / 2 + (save.total_s - save.blocked_s) / 3600.0 + o.restart_s / 3600.0
    lost_share = rate * lost_h
    if lost_share >= 0.9:
        raise ConfigError(
            f"job {cfg.job!r}: on spot, {rate:.2f} preemptions per hour over {hw.num_nodes} "
            f"nodes, each losing {lost_h:.2f} h, leave no time to train; checkpoint more "
            "often (checkpoint.interval=auto), use fewer nodes or on_demand"
        )
    return base_h / (1.0 - lost_share)


def _loss_step_s(cfg: JobConfig, shape, dev, reg, dist, replay: bool, step_s: float) -> float:
    """The step time the held-out loss pass is priced by: a training step of the objective, or,
    for one that trains nothing (the eval stage, whose one 'step' is its decoding), an SFT
    step on the same data; 0 when it reports no loss (`eval.loss: false`)."""
    spec = objective_spec(cfg.train.objective)
    if spec.trains:
        return step_s
    if spec.settings is not None and not getattr(spec.settings.of(cfg), "loss", True):
        return 0.0
    sft = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, objective="sft"))
    sft_steps = total_steps(sft, dist.num_examples if dist else 0)
    return _mean_step(sft, shape, dev, reg, dist, replay, sft_steps)[0]


def _eval_hours(cfg: JobConfig, dist: Lengths | None, step_s: float) -> float:
    """The final eval: a forward pass (~1/3 of a training pass) over the held-out examples."""
    if dist is not None:
        held = dist.num_examples * cfg.data.eval_fraction
    else:
        held = cfg.data.eval_sequences
    return held / cfg.train.global_batch_size * step_s / 3.0 / 3600.0


def _n_saves(cfg: JobConfig, steps: int, compute_h: float, blocked_s: float, rate: float) -> int:
    """Checkpoints over the run by its interval policy (`rate`: spot preemptions per hour, 0 on
    demand)."""
    ck = cfg.checkpoint
    if ck.interval == "minutes" and ck.every_minutes:
        return max(1, math.floor(compute_h * 60.0 / ck.every_minutes))
    if ck.interval == "auto":  # what the run chooses once it has measured a save
        from orchestrator.checkpoint.policy import young_daly_interval_s

        mtbf_h = min(ck.mtbf_hours, 1.0 / rate) if rate else ck.mtbf_hours
        every_s = young_daly_interval_s(max(blocked_s, 1e-3), mtbf_h * 3600.0)
        return max(1, math.floor(compute_h * 3600.0 / every_s))
    return max(1, steps // ck.every_steps)


def _extra_usd(
    cfg: JobConfig, shape: ModelShape, nodes: int, hours: float, wait_h: float, worker_rate: float
) -> dict[str, float]:
    """Beyond the workers' hours: the head for the whole run (waits included), idle workers
    until the autoscaler removes them, the kept checkpoints and export in the store, the
    nodes' volumes."""
    from orchestrator.cost.memory import checkpoint_bytes

    hw, cm = cfg.hardware, cfg.cost
    extra: dict[str, float] = {}
    if hw.head_instance_type is not None:
        head = cm.instances[hw.head_instance_type]
        extra["head_node"] = (hours + wait_h) * head.on_demand_per_hour_usd
    extra["idle_until_scale_down"] = hw.scale_down_s / 3600.0 * worker_rate
    kept = cfg.checkpoint.keep_last * checkpoint_bytes(
        cfg, shape.n_params, shape.n_trainable, shape.n_tensors, shape.n_held
    )
    kept += 2.0 * shape.n_params  # the bf16 export
    if not objective_spec(cfg.train.objective).trains:
        kept = 0.0  # an evaluation writes no checkpoint and no export
    per_gb, volume_per_gb = storage_prices(cfg)
    extra["storage"] = kept / 1e9 * per_gb * cfg.storage.retention_days / 30.0
    volume_gb = cm.instances[hw.instance_type].ebs_gb
    extra["volumes"] = nodes * volume_gb * volume_per_gb * hours / 730.0
    spec = objective_spec(cfg.train.objective)
    if spec.extra_usd is not None:
        extra.update(spec.extra_usd(cfg))
    return extra


def replay_check(cfg: JobConfig, hours: float, hfu: float) -> dict:
    """The original's published wall time as a band check: the HFU it implies on the same work,
    against the best the calibrated kernel model gives any pass of this model's width. An
    implied HFU above that best is inconsistent (the published time, or what it covered, is
    off), not a target to tune to."""
    r, k = cfg.replay, cfg.cost.kernel
    if not r.published_hours:
        raise ValueError(f"job {cfg.job!r}: replay.published_hours is not set")
    implied = hfu * hours / r.published_hours
    gpu = cfg.hardware.accelerator
    best = steptime.efficiency(k, gpu, 1e12, cfg.model.hidden_size)
    return {
        "hours": r.published_hours,
        "usd": r.published_usd,
        "source": r.published_source,
        "projected_over_published": hours / r.published_hours,
        "implied_hfu": implied,
        "best_kernel_hfu": best,
        "consistent": implied <= best,
    }


def price_per_hour(price: InstancePrice, market: str, zone: str | None = None) -> float:
    """$/h of one node of `price` in `market`, in `zone` when its spot price is known there
    (spot falls back to on-demand without a spot price)."""
    if market == "spot" and zone and zone in price.spot_per_hour_usd_by_zone:
        return price.spot_per_hour_usd_by_zone[zone]
    if market == "spot" and price.spot_per_hour_usd is not None:
        return price.spot_per_hour_usd
    return price.on_demand_per_hour_usd


def cluster_price_per_hour(cfg: JobConfig) -> float:
    """$/h of the job's cluster in its market, its head node included (what the live ledger
    accrues and the budget cap counts)."""
    hw = cfg.hardware
    price = cfg.cost.instances[hw.instance_type]
    usd = price_per_hour(price, hw.market) * hw.num_nodes
    if hw.head_instance_type is not None:
        usd += cfg.cost.instances[hw.head_instance_type].on_demand_per_hour_usd
    return usd
