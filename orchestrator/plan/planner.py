"""The Chinchilla planner: a budget in dollars, FLOPs or GPU-hours -> the model that budget buys.

    budget -> compute C (price and peak from conf/pricing, the kernel efficiency of the step-time
              model at one packed micro-batch and the planned width)
           -> N, D by each rule (scaling.py): 20 tokens/param, the Epoch refit, Hoffmann's fit
           -> a GPT-3-style shape within 5% of N (arch.py), batch size, peak LR and warmup from
              the Cerebras-GPT table
           -> a job config, whose projected bill (estimator.py: attention FLOPs, start-up,
              checkpoints and expected preemptions included) is checked against a dollar budget.

A job turns the planner on with a `plan:` section (see PlanConfig); `python -m orchestrator plan`
prints the plan, the candidate sizes around the optimum and the job config it would run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.plan.arch import (
    MUP_BASE_LR,
    WARMUP_TOKENS,
    Shape,
    batch_tokens,
    peak_lr,
    shape_for,
)
from orchestrator.plan.scaling import FITS, tokens_per_param_optimum

MIN_STEPS = 100
"""Tiny budgets get a smaller batch than the table's so that the run still has this many steps."""
CANDIDATE_FACTORS = (0.25, 0.5, 0.71, 1.0, 1.41, 2.0, 4.0)


@dataclass
class Compute:
    flops: float
    gpu_hours: float
    usd: float
    """At the job's market price, compute only (no start-up or preemptions)."""
    peak_flops: float
    mfu: float
    """The step-time model's kernel efficiency of one pass (model FLOPs per peak FLOP)."""
    usd_per_gpu_hour: float
    accelerator: str


@dataclass
class MethodPlan:
    method: str
    n_params_optimal: float
    """N from the rule alone (before rounding to a shape)."""
    n_params: int
    """Of the chosen shape."""
    tokens: float
    flops: float
    tokens_per_param: float
    predicted_loss: float
    """Under the Epoch refit, for every method (so they compare)."""
    predicted_loss_hoffmann: float
    shape: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    budget: dict[str, float]
    compute: Compute
    rule: str
    methods: dict[str, MethodPlan]
    candidates: list[dict[str, float]]
    hyperparams: dict[str, Any]
    projected_usd: float | None = None
    projected_hours: float | None = None

    @property
    def chosen(self) -> MethodPlan:
        return self.methods[self.rule]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hardware(cfg: JobConfig, width: int | None = None) -> tuple[float, float, float, str]:
    """(peak FLOP/s per worker, the kernel efficiency of one full pass (micro-batch x context
    tokens) at model width `width`, $ per worker-hour, accelerator): the step-time model's
    arithmetic rate (cost/steptime.py), without communication (the projection adds it)."""
    from orchestrator.cost.estimator import price_per_hour
    from orchestrator.cost.steptime import efficiency

    hw, cm = cfg.hardware, cfg.cost
    price = cm.instances[hw.instance_type]
    node_usd = price_per_hour(price, hw.market) * hw.num_nodes
    workers = hw.num_workers * max(1, hw.gpus_per_worker)
    if hw.accelerator == "cpu":
        peak, gpu, kernel = cm.cpu_peak_flops_per_worker, "cpu", cm.cpu_kernel
    else:
        peak, gpu, kernel = cm.gpus[hw.accelerator].peak_flops, hw.accelerator, cm.kernel
    tokens = cfg.train.micro_batch_size * cfg.data.max_seq_len
    util = efficiency(kernel, gpu, tokens, width or cfg.model.hidden_size)
    return peak, util, node_usd / workers, hw.accelerator


def compute_budget(
    cfg: JobConfig,
    flops: float | None = None,
    usd: float | None = None,
    gpu_hours: float | None = None,
    width: int | None = None,
) -> Compute:
    """Turn one budget into training FLOPs on the job's hardware (at the kernel efficiency of
    a model `width` wide; the job's own width when not given)."""
    peak, util, usd_gpu_h, acc = _hardware(cfg, width)
    per_gpu_h = peak * util * 3600.0
    if flops is not None:
        gpu_hours = flops / per_gpu_h
    elif usd is not None:
        gpu_hours = usd / usd_gpu_h
    elif gpu_hours is None:
        raise ConfigError("a plan needs one budget: flops, usd or gpu_hours")
    return Compute(
        flops=gpu_hours * per_gpu_h,
        gpu_hours=gpu_hours,
        usd=gpu_hours * usd_gpu_h,
        peak_flops=peak,
        mfu=util,
        usd_per_gpu_hour=usd_gpu_h,
        accelerator=acc,
    )


def vocab_and_context(cfg: JobConfig) -> tuple[int, int]:
    """Vocabulary (the trained BPE's size, or the model's declared one) and packed length."""
    vocab = cfg.data.tokenizer_vocab_size if cfg.data.tokenizer is None else cfg.model.vocab_size
    return vocab, cfg.data.max_seq_len


def _method(
    name: str, n_opt: float, flops: float, vocab: int, context: int, ratio: float
) -> MethodPlan:
    shape = shape_for(n_opt, vocab=vocab, context=context)
    n = shape.n_params
    tokens = ratio * n if name == "tokens_per_param" else flops / (6.0 * n)
    return MethodPlan(
        method=name,
        n_params_optimal=n_opt,
        n_params=n,
        tokens=tokens,
        flops=6.0 * n * tokens,
        tokens_per_param=tokens / n,
        predicted_loss=FITS["epoch"].loss(n, tokens),
        predicted_loss_hoffmann=FITS["hoffmann"].loss(n, tokens),
        shape=shape.as_dict(),
    )


def size_for(
    flops: float, vocab: int, context: int, tokens_per_param: float = 20.0
) -> dict[str, MethodPlan]:
    """The compute-optimal (N, D) at `flops` by each rule, rounded to a real shape.

    Raises:
        ConfigError: the budget is too small for any model with this vocabulary and context.
    """
    n20, _ = tokens_per_param_optimum(flops, tokens_per_param)
    out = {
        "tokens_per_param": _method(
            "tokens_per_param", n20, flops, vocab, context, tokens_per_param
        )
    }
    for name, fit in FITS.items():
        n, _ = fit.optimum(flops)
        out[name] = _method(name, n, flops, vocab, context, tokens_per_param)
    return out


def candidates(flops: float, n_center: float, fit: str = "epoch") -> list[dict[str, float]]:
    """Sizes around the optimum at the same compute: N, D = C / 6N, D/N and the predicted loss."""
    rows = []
    for f in CANDIDATE_FACTORS:
        n = n_center * f
        d = flops / (6.0 * n)
        rows.append(
            {
                "n_params": n,
                "tokens": d,
                "tokens_per_param": d / n,
                "predicted_loss": FITS[fit].loss(n, d),
            }
        )
    return rows


def hyperparams(
    cfg: JobConfig, shape: Shape | dict, tokens: float, mup: bool = False
) -> dict[str, Any]:
    """Batch (in sequences, a multiple of micro_batch x workers), peak LR and warmup for a
    model of this size, following the Cerebras-GPT table."""
    n = shape["n_params"] if isinstance(shape, dict) else shape.n_params
    context = cfg.data.max_seq_len
    per_step = cfg.train.micro_batch_size * cfg.hardware.num_workers
    if cfg.plan.batch_sequences is not None:
        seqs = cfg.plan.batch_sequences
    else:
        seqs = max(1, round(batch_tokens(n) / context))
        most = math.floor(tokens / (MIN_STEPS * context))  # keep >= MIN_STEPS steps
        seqs = min(seqs, most)
    seqs = max(per_step, per_step * round(seqs / per_step))
    step_tokens = seqs * context
    warmup_tokens = min(WARMUP_TOKENS, tokens * 1525 / 9037)  # 111M: 1,525 of 9,037 steps
    return {
        "global_batch_size": seqs,
        "steps": math.ceil(tokens / step_tokens),
        "lr": MUP_BASE_LR if mup else peak_lr(n),
        "warmup_steps": max(1, math.ceil(warmup_tokens / step_tokens)),
    }


def _filled(cfg: JobConfig, chosen: MethodPlan, hp: dict[str, Any]) -> JobConfig:
    s = chosen.shape
    model = replace(
        cfg.model,
        arch="gpt2",
        num_layers=s["layers"],
        hidden_size=s["d_model"],
        num_heads=s["heads"],
        intermediate_size=s["ffn"],
        vocab_size=s["vocab"],
        max_position_embeddings=s["context"],
        tie_word_embeddings=True,
    )
    # (train.max_steps, when set, still caps the run: quick tests of a planned job)
    train = replace(
        cfg.train, max_tokens=int(chosen.tokens), global_batch_size=hp["global_batch_size"]
    )
    optim = replace(cfg.optim, lr=hp["lr"], warmup_steps=hp["warmup_steps"])
    return replace(cfg, model=model, train=train, optim=optim)


def make_plan(cfg: JobConfig) -> tuple[Plan, JobConfig]:
    """The plan of `cfg.plan` and the job config it fills in (for a dollar budget, shrunk until
    the projected bill, overheads included, fits)."""
    from orchestrator.cost.estimator import project

    p = cfg.plan
    vocab, context = vocab_and_context(cfg)
    budget = {
        k: v
        for k, v in (
            ("flops", p.budget_flops),
            ("usd", p.budget_usd),
            ("gpu_hours", p.budget_gpu_hours),
        )
        if v is not None
    }
    compute = compute_budget(cfg, p.budget_flops, p.budget_usd, p.budget_gpu_hours)
    mup = cfg.model.mup_base_width is not None
    for _ in range(2):  # the efficiency depends on the width the budget buys: settle it
        chosen = size_for(compute.flops, vocab, context, p.tokens_per_param)[p.rule]
        compute = compute_budget(
            cfg, p.budget_flops, p.budget_usd, p.budget_gpu_hours, width=chosen.shape["d_model"]
        )
    for _ in range(6):
        methods = size_for(compute.flops, vocab, context, p.tokens_per_param)
        chosen = methods[p.rule]
        hp = hyperparams(cfg, chosen.shape, chosen.tokens, mup)
        filled = _filled(cfg, chosen, hp)
        projection = project(filled, vocab_size=vocab)
        if p.budget_usd is None or projection.usd <= p.budget_usd * 1.0001:
            break
        # Overheads (start-up, attention FLOPs, checkpoints, preemptions) ate into the budget:
        # shrink the compute by the overshoot and size again.
        shrunk = compute.flops * (p.budget_usd / projection.usd) ** 1.05
        compute = compute_budget(cfg, flops=shrunk, width=chosen.shape["d_model"])
    else:
        raise ConfigError(
            f"plan.budget_usd={p.budget_usd}: no plan fits; the fixed overheads alone "
            f"(start-up ${projection.usd - compute.usd:,.2f}) take most of it"
        )
    plan = Plan(
        budget=budget,
        compute=compute,
        rule=p.rule,
        methods=methods,
        candidates=candidates(compute.flops, methods["epoch"].n_params_optimal),
        hyperparams=hp,
        projected_usd=projection.usd,
        projected_hours=projection.hours,
    )
    return plan, filled


def apply_plan(cfg: JobConfig) -> JobConfig:
    """`cfg` with the planner's model and run size when `plan.enabled` (else unchanged)."""
    if not cfg.plan.enabled:
        return cfg
    return make_plan(cfg)[1]


def launch_overrides(plan: Plan, cfg: JobConfig) -> str:
    """The `set=` overrides that make the job run this plan."""
    key, value = next(iter(plan.budget.items()))
    out = ["plan.enabled=true", f"plan.budget_{key}={value:g}", f"plan.rule={plan.rule}"]
    out.append("train.max_steps=null")
    hw = cfg.hardware
    if hw.accelerator != "cpu":
        out += [
            f"hardware.accelerator={hw.accelerator}",
            f"hardware.instance_type={hw.instance_type}",
            f"hardware.market={hw.market}",
        ]
    out += [f"hardware.num_nodes={hw.num_nodes}", f"hardware.num_workers={hw.num_workers}"]
    return " ".join(out)


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.5f}"


def report(plan: Plan, cfg: JobConfig) -> str:
    """The plan as text: the budget, each rule's choice, the candidate table and the job."""
    c = plan.compute
    lines = [
        f"budget {plan.budget} on {cfg.hardware.num_workers} x {c.accelerator} "
        f"({cfg.hardware.instance_type}, {cfg.hardware.market}, ${c.usd_per_gpu_hour:.3f} per "
        f"GPU-hour, {c.peak_flops:.3g} FLOP/s peak, kernel efficiency {c.mfu:.1%})",
        f"  = {c.flops:.3e} FLOPs = {c.gpu_hours:,.4g} GPU-hours = {_usd(c.usd)} of compute",
        "",
        f"{'rule':<18}{'N (rule)':>12}{'N (shape)':>12}{'tokens D':>12}{'D/N':>7}"
        f"{'L epoch':>9}{'L hoffm.':>9}  shape (layers x width, heads)",
    ]
    for name, m in plan.methods.items():
        s = m.shape
        mark = " <- used" if name == plan.rule else ""
        lines.append(
            f"{name:<18}{m.n_params_optimal:>12.3e}{m.n_params:>12,}{m.tokens:>12.3e}"
            f"{m.tokens_per_param:>7.1f}{m.predicted_loss:>9.3f}{m.predicted_loss_hoffmann:>9.3f}"
            f"  {s['layers']} x {s['d_model']}, {s['heads']} heads{mark}"
        )
    lines += ["", "sizes around the Epoch-fit optimum at the same compute:"]
    lines.append(f"{'N':>12}{'D':>12}{'D/N':>8}{'L epoch':>9}")
    best = min(plan.candidates, key=lambda r: r["predicted_loss"])
    for r in plan.candidates:
        lines.append(
            f"{r['n_params']:>12.3e}{r['tokens']:>12.3e}{r['tokens_per_param']:>8.1f}"
            f"{r['predicted_loss']:>9.4f}{'  <- min' if r is best else ''}"
        )
    hp = plan.hyperparams
    lines += [
        "",
        f"job: {hp['steps']:,} steps x {hp['global_batch_size']} sequences x "
        f"{cfg.data.max_seq_len} tokens, peak LR {hp['lr']:.2e}, warmup {hp['warmup_steps']} steps",
        f"projected bill: {_usd(plan.projected_usd)} over {plan.projected_hours:,.3g} h "
        "(start-up, attention, checkpoints and expected preemptions included)",
        f'launch it: make launch job={cfg.job} scale={cfg.scale} set="{launch_overrides(plan, cfg)}"',
        "Predicted losses are the fits' (nats/token on MassiveText with the Chinchilla "
        "tokenizer): they rank sizes; they are not a forecast for another corpus or tokenizer.",
    ]
    return "\n".join(lines)
