"""Checks and cost pieces shared by the preference and RL objectives."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config.schema import JobConfig


def whole_model_stage(cfg: JobConfig) -> None:
    """A stage that holds extra whole models (reference, reward) on every worker: DDP or ZeRO
    0-2, full or LoRA, from a trained model."""
    obj = cfg.train.objective
    if cfg.train.strategy == "fsdp" or (
        cfg.train.strategy == "deepspeed" and cfg.deepspeed.zero_stage == 3
    ):
        raise ConfigError(
            f"train.objective={obj} runs with train.strategy=ddp or deepspeed (ZeRO 0-2): "
            "its extra models (reference, reward) are whole on every worker; FSDP and ZeRO-3 "
            "are not supported for preference and RL stages yet"
        )
    if cfg.train.method == "adapter":
        raise ConfigError(f"train.objective={obj}: use train.method=full or lora")


def dtype_bytes(cfg: JobConfig) -> int:
    return 2 if cfg.train.precision == "bf16" else 4


def trained_state_bytes(cfg: JobConfig, n_params: int) -> float:
    """A second network trained in full (PPO's critic): weights, gradients and Adam states as
    the strategy keeps the policy's."""
    half = cfg.train.precision == "bf16"
    world = cfg.hardware.num_workers
    zero = cfg.deepspeed.zero_stage if cfg.train.strategy == "deepspeed" else None
    w, g, o = (2, 2, 12) if half else (4, 4, 8)
    if zero is not None and cfg.deepspeed.offload_optimizer:
        o = 0
    P = float(n_params)
    return (w + g + o) * P if zero in (None, 0) else w * P + (g + o) * P / world
