"""Whether a checkpoint can be resumed by a job: the keys of the training state every
checkpoint manifest holds, and `resume_problem`, a pure decision the launcher asks before any
worker starts (launch/run.py) and every worker asks again before it reads the shards."""

from __future__ import annotations

from typing import Any

from orchestrator.config.schema import JobConfig

STEP_KEY = "step"
RUN_ID_KEY = "mlflow_run_id"
COST_KEY = "cost_usd_so_far"
TOKENS_KEY = "tokens_so_far"
CONFIG_HASH_KEY = "config_hash"
STRATEGY_KEY = "strategy"
WORLD_KEY = "world_size"
HOLDS_KEY = "holds"
"""`all` (every parameter) or `trainable` (LoRA/adapter: the trained parameters only)."""
BASE_KEY = "base"
"""{ref, digest} of the pretrained base the checkpoint's weights apply to."""


def resume_problem(
    state: dict[str, Any], cfg: JobConfig, world: int, base_digest: str, holds: str
) -> str | None:
    """Why a checkpoint (its manifest `state`) cannot be resumed by this job, or None. Pure:
    the launcher asks it before any worker starts (launch/checks.py), the workers again before
    they read the shards."""
    saved = state.get(STRATEGY_KEY, "fsdp")
    now = cfg.train.strategy
    if saved != now and not {saved, now} <= {"ddp", "fsdp"}:
        return (
            f"written by train.strategy={saved!r}; it cannot be resumed with "
            f"train.strategy={now!r} (set train.strategy={saved}, or start a new run=NAME)"
        )
    if saved == "deepspeed" and state.get(WORLD_KEY, world) != world:
        return (
            f"a DeepSpeed checkpoint of {state[WORLD_KEY]} workers; resume it with "
            f"hardware.num_workers={state[WORLD_KEY]} (DeepSpeed cannot reshard), or start a "
            "new run=NAME"
        )
    if state.get(HOLDS_KEY, "all") == "trainable" and holds == "all":
        return (
            "holds only the trained parameters of a LoRA/adapter job, and train.method is now "
            f"{cfg.train.method!r}; set train.method back, or start a new run=NAME"
        )
    base = state.get(BASE_KEY) or {}
    saved_digest = base.get("digest") if isinstance(base, dict) else None
    if holds == "trainable" and saved_digest and base_digest and saved_digest != base_digest:
        return (
            f"was trained on the base {base.get('ref')!r} ({saved_digest}); model.pretrained "
            f"is now {cfg.model.pretrained!r} ({base_digest}). Its adapter weights apply to "
            "the first base only: point model.pretrained back at it, or start a new run=NAME"
        )
    return None
