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


def confirm_usd(cap: float | None, projected_usd: float, yes: bool, what: str = "bill") -> bool:
    """A projection over the cap needs a yes (`--yes`, or the user's answer at a terminal)
    before anything is spent. Returns True when the launch goes ahead over the cap with that
    consent, False when it is within the cap.

    Raises:
        ConfigError: over the cap without consent (nobody to ask, or the answer was no).
    """
    if cap is None or projected_usd <= cap:
        return False
    if yes:
        return True
    msg = (
        f"the projected {what} ${projected_usd:.4f} exceeds budget.max_usd=${cap}; the run will "
        "stop at the cap with a checkpoint"
    )
    if sys.stdin is not None and sys.stdin.isatty():
        if input(f"{msg}. Launch anyway? [y/N] ").strip().lower() in ("y", "yes"):
            return True
    raise ConfigError(
        f"{msg}. Launch with --yes (make launch ... yes=1) to accept, or raise the cap"
    )


def startup_refusal(
    cap: float | None, spent_usd: float, startup_usd: float, teardown_usd: float
) -> str | None:
    """Pure: why a launch must not start under its cap (None: it may). Every launch pays its
    start-up (cluster, workers, loading) before the first step can check the budget, and its
    tear-down after the last: when what is spent plus those exceeds the cap, starting would
    only spend money past it (a capped pipeline launched twice once spent 3x its cap)."""
    if cap is None:
        return None
    need = spent_usd + startup_usd + teardown_usd
    if need <= cap:
        return None
    return (
        f"budget.max_usd=${cap:.4f}: ${spent_usd:.4f} is spent and ${max(0.0, cap - spent_usd):.4f}"
        f" is left, but starting costs ${startup_usd:.4f} (start-up) + ${teardown_usd:.4f} "
        "(tear-down, and the nodes until they scale down) before a step can run; not started. "
        "Raise the cap to continue"
    )


def confirm_budget(cfg: JobConfig, projection: Projection, yes: bool) -> bool:
    """`confirm_usd` for one run's projection."""
    return confirm_usd(cfg.budget.max_usd, projection.usd, yes)


def check_resume(cfg: JobConfig, storage, digests: dict[str, str]) -> int:
    """A continued run: refuse, before any worker starts, to resume a checkpoint this job
    cannot read (another strategy, DeepSpeed on another worker count, a LoRA/adapter
    checkpoint on another base), naming what to change. Reads only the newest complete
    checkpoint's manifest. Returns its size in bytes (0: nothing to resume)."""
    from orchestrator.checkpoint.resume import resume_problem
    from orchestrator.checkpoint.store import IncompleteCheckpoint, open_store

    if cfg.checkpoint.resume == "never":
        return 0
    store = open_store(storage.checkpoint_url)
    for step in store.complete_steps():
        try:
            state = store.read_manifest(step)
        except IncompleteCheckpoint:
            continue  # the workers skip it too, and take the next older one
        holds = "all" if cfg.train.method == "full" else "trainable"
        problem = resume_problem(
            state, cfg, cfg.hardware.num_workers, digests.get("model.pretrained", ""), holds
        )
        if problem:
            raise ConfigError(f"cannot continue from {store.url}/step_{step:08d}: {problem}")
        return sum(int(f.get("bytes", 0)) for f in state.get("files", {}).values())
    return 0


def collective_timeout_s(resume_bytes: int, num_nodes: int, floor_s: float = 1800.0) -> float:
    """The worker group's collective timeout (`TorchConfig(timeout_s=...)`): ranks wait in
    collectives while the others fetch and verify their part of the checkpoint, so the timeout
    allows each node to fetch its share at a pessimistic 50 MB/s, twice over, plus ten minutes;
    never below torch's default of 30 minutes."""
    per_node = resume_bytes / max(1, num_nodes)
    return max(floor_s, 2 * per_node / 50e6 + 600.0)
