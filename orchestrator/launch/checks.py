"""Checks before anything is spent: the job's GPUs are here (or a cluster is), its compiled ops
can be built, and a projection over the budget is accepted."""

from __future__ import annotations

import os
import sys

from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.cost.estimator import Projection, project


def check_hardware(cfg: JobConfig) -> None:
    """A full-scale job needs its GPUs: fail fast (with the bill) when they are not there."""

    if cfg.hardware.accelerator == "cpu" or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    need = cfg.hardware.num_workers * cfg.hardware.gpus_per_worker
    have = torch.cuda.device_count()
    if have < need:
        p = project(cfg)
        raise ConfigError(
            f"job {cfg.job!r} at scale {cfg.scale!r} needs {need} x {cfg.hardware.accelerator} "
            f"({cfg.hardware.instance_type}); this machine has {have} GPUs. Projected bill: "
            f"{p.summary()}. Run it on a GPU cluster (RAY_ADDRESS=...) or use scale=local."
        )


def check_capabilities(cfg: JobConfig) -> None:
    """Optional compiled ops a job needs must be buildable here; say so before any cluster starts."""
    if cfg.train.strategy != "deepspeed":
        return
    ds = cfg.deepspeed
    if ds.offload_optimizer or ds.offload_params or ds.optimizer == "deepspeed":
        try:
            from deepspeed.ops.op_builder import CPUAdamBuilder
        except ImportError as e:
            raise ConfigError(
                f"train.strategy=deepspeed needs the deepspeed package: {e} "
                "(make install builds it)"
            ) from None
        if not CPUAdamBuilder().is_compatible(verbose=False):
            raise ConfigError(
                "deepspeed offload / deepspeed.optimizer=deepspeed need DeepSpeed's cpu_adam op, "
                "which cannot be built on this machine (needs g++ and ninja); set "
                "deepspeed.offload_optimizer=false deepspeed.offload_params=false"
            )


def confirm_budget(cfg: JobConfig, projection: Projection, yes: bool) -> None:
    """A projection over budget.max_usd needs a yes before anything is spent."""
    cap = cfg.budget.max_usd
    if cap is None or projection.usd <= cap or yes:
        return
    msg = (
        f"the projected bill ${projection.usd:.4f} exceeds budget.max_usd=${cap}; the run will "
        "stop at the cap with a checkpoint"
    )
    if sys.stdin is not None and sys.stdin.isatty():
        if input(f"{msg}. Launch anyway? [y/N] ").strip().lower() in ("y", "yes"):
            return
    raise ConfigError(
        f"{msg}. Launch with --yes (make launch ... yes=1) to accept, or raise the cap"
    )
