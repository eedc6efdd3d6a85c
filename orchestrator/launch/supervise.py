"""Training on Ray, supervised: the worker group, its tries, and what happens after a failure.

A preemption (a worker or node lost, a spot notice) restarts training from the latest complete
checkpoint; an application error restarts it at most `train.max_failures` times; a budget
already spent stops it. The decision is `restart.decide` (pure); this module carries it out.
On an autoscaling cluster the workers are requested first and released at the end.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from orchestrator.checkpoint.notice import doomed_nodes
from orchestrator.compose.load import to_dict
from orchestrator.config.schema import JobConfig
from orchestrator.cost.estimator import cluster_price_per_hour
from orchestrator.cost.ledger import Ledger
from orchestrator.launch import autoscale
from orchestrator.launch.checks import collective_timeout_s
from orchestrator.launch.failures import RunFailed, classify_failure
from orchestrator.launch.nodes import cluster_nodes, drain
from orchestrator.launch.restart import Action, FailureKind, Tally, decide
from orchestrator.launch.worker_env import worker_env
from orchestrator.storage import resolve as storage_resolve
from orchestrator.storage.layout import (
    FAILURES,
    RUN_META,
    FailureRecord,
    RunContext,
    RunMeta,
    StopReason,
    read_failures,
)


def supervise(
    cfg: JobConfig,
    context: RunContext,
    store,
    ledger: Ledger,
    t_start: float,
    plan: tuple[int, float] | None = None,
) -> StopReason | None:
    """Run training to its end on a Ray cluster (RAY_ADDRESS, or a private local one). Returns
    the launcher's own stop reason when it stopped training itself (the budget at a restart).

    Raises:
        RunFailed: errors beyond `train.max_failures`, preemptions beyond the cap.
    """
    from orchestrator.launch.ray_session import ray_cluster

    hw = cfg.hardware
    on_gpu = hw.gpus_per_worker > 0
    with ray_cluster(
        num_cpus=hw.num_workers * hw.cpus_per_worker,
        num_gpus=0 if not on_gpu else hw.num_workers * hw.gpus_per_worker,
    ) as where:
        print(f"cluster: {where}")
        need = None
        if plan is not None:  # (steps left, seconds a step): the capacity policy's inputs
            spent = context.spent(time.time())
            need = autoscale.need_for(cfg, plan[0], plan[1], spent.usd, spent.hours)
        grant = autoscale.acquire(cfg, need=need)  # None unless on an autoscaling cluster
        if grant is not None:
            _record_grant(store, grant)
            if grant.hardware is not None:  # failed over: run (and price) the alternative
                _fail_over(cfg, grant.hardware)
                hw = cfg.hardware
                context.price_per_hour_usd = cluster_price_per_hour(cfg)
            if grant.market != hw.market:  # the fallback: price the run as what it runs on
                hw.market = grant.market
                context.price_per_hour_usd = cluster_price_per_hour(cfg)
        try:
            return _tries(cfg, context, store, ledger, t_start, grant)
        finally:
            ledger.sync_nodes(cluster_nodes(cfg, t_start))
            if grant is not None:
                autoscale.release()


def _tries(
    cfg: JobConfig,
    context: RunContext,
    store,
    ledger: Ledger,
    t_start: float,
    grant: autoscale.Grant | None,
) -> StopReason | None:
    """Training tries of one launch, each from the latest complete checkpoint, until one ends
    or `restart.decide` says stop."""
    from ray.train.v2.api.exceptions import TrainingFailedError

    tally = Tally()
    for attempt_try in itertools.count(1):
        ledger.sync_nodes(cluster_nodes(cfg, t_start))
        failures = read_failures(store)  # before every try: the counts the loop starts from
        context.preemptions_before = sum(f.kind == FailureKind.PREEMPTION for f in failures)
        context.app_failures_before = sum(f.kind == FailureKind.APP for f in failures)
        if grant is not None and attempt_try > 1:  # a replacement may still be booting
            grant = _reacquire(cfg, context, store)
        trainer = _trainer(cfg, context, grant, attempt_try)
        if grant is not None:
            autoscale.release()  # Ray Train registers the workers' request from here on
        try:
            trainer.fit()
            return None
        except TrainingFailedError as e:
            kind, detail = classify_failure(e, autoscaling=grant is not None)
            tally = tally.add(kind)
            record = FailureRecord(context.attempt, attempt_try, kind, detail[:2000], time.time())
            store.append_lines(FAILURES, [record.to_json()])
            decision = decide(
                kind,
                tally,
                max_failures=cfg.train.max_failures,
                max_preemptions=cfg.train.max_preemptions,
                budget=cfg.budget,
                spent=context.spent(time.time()),
            )
            if decision.action == Action.FAIL:
                last = f"; last error:\n{detail}" if kind != FailureKind.PREEMPTION else ""
                raise RunFailed(decision.message + last) from e
            if decision.action == Action.STOP:
                print(decision.message)
                return decision.stop_reason
            last_line = detail.strip().splitlines()[-1] if detail.strip() else kind
            print(f"{kind} #{tally.of(kind)}: {last_line[:300]}\n{decision.message}")
            if kind == FailureKind.PREEMPTION:  # a spot notice: not on the doomed node again
                drain(doomed_nodes(detail), f"spot notice ({cfg.job}, attempt {context.attempt})")
    return None


def _fail_over(cfg: JobConfig, block: str) -> None:
    """The job's machine becomes alternative `block` (launch/failover.py): its hardware and
    the micro-batch that fits there. It stays there for the rest of the launch."""
    from orchestrator.launch.failover import alternatives

    alt = next(a.cfg for a in alternatives(cfg) if a.name == block and a.cfg is not None)
    cfg.hardware = alt.hardware
    cfg.train.micro_batch_size = alt.train.micro_batch_size
    print(
        f"running on {block}: {cfg.hardware.num_workers} x {cfg.hardware.accelerator} "
        f"({cfg.hardware.instance_type}), micro-batch {cfg.train.micro_batch_size}",
        flush=True,
    )


def _reacquire(cfg: JobConfig, context: RunContext, store) -> autoscale.Grant:
    """Before a retry on an autoscaling cluster: ask for the workers again and wait until the
    cluster holds them (a preempted node's replacement takes minutes on a cloud), with the
    same spot wait and on-demand fallback as the first try, so the try does not time out in
    Ray Train's placement-group wait. No capacity at all ends the launch (RunFailed)."""
    try:
        grant = autoscale.acquire(cfg)
    except RuntimeError as e:  # no capacity within the waits: say so, do not spin
        raise RunFailed(f"restart: {e}") from None
    assert grant is not None
    _record_grant(store, grant)
    if grant.hardware is not None:  # failed over on a retry
        _fail_over(cfg, grant.hardware)
        context.price_per_hour_usd = cluster_price_per_hour(cfg)
    if grant.market != cfg.hardware.market:  # fell back: price the rest as what it runs on
        cfg.hardware.market = grant.market
        context.price_per_hour_usd = cluster_price_per_hour(cfg)
    return grant


STARTUP_RETRIES = 2
"""Ray Train's retries of a worker group that fails to start (its default is forever, billing
the cluster meanwhile)."""


def _trainer(cfg: JobConfig, context: RunContext, grant: autoscale.Grant | None, attempt_try: int):
    """The TorchTrainer of one try: the job's workers, their resources and process group."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.training.entry import train_fn

    hw = cfg.hardware
    on_gpu = hw.gpus_per_worker > 0
    pinned = {}
    if grant is not None:  # its market's nodes, of the instance type it was granted
        pinned = {grant.resource: grant.units_per_worker, autoscale.instance_resource(cfg): 0.001}
    storage_path, storage_fs = storage_resolve.ray_storage(context.storage)
    loop_config: dict[str, Any] = {
        "config": to_dict(cfg),
        "context": context.to_dict(),
        "env": worker_env(os.environ),  # settings; secrets only by opt-in
    }
    return TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=hw.num_workers,
            use_gpu=on_gpu,
            # The GPU type is part of the request: an A100-80GB job never lands on 24 GB
            # cards, or on pricier ones (infra/ node types carry the same resource).
            accelerator_type=ray_accelerator(cfg),
            resources_per_worker={
                "CPU": hw.cpus_per_worker,
                **({"GPU": hw.gpus_per_worker} if on_gpu else {}),
                **pinned,  # spot / on_demand nodes of an autoscaling cluster
            },
        ),
        # On GPUs, NCCL for the tensors on the device and gloo for the few CPU-side ones
        # (object collectives, checkpoint agreement flags): one process group serves both.
        torch_config=TorchConfig(
            backend="cpu:gloo,cuda:nccl" if on_gpu else "gloo",
            timeout_s=int(collective_timeout_s(context.resume_bytes, hw.num_nodes)),
        ),
        run_config=RunConfig(
            name=f"attempt-{context.attempt}-try-{attempt_try}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            # Retries are decided here, where preemptions and app errors are told apart.
            # Worker-group start-up failures (workers that cannot import the code, a node dying
            # while they start) are retried by Ray this many times, not forever; what is left
            # is classified by `classify_failure` (launch/failures.py).
            failure_config=FailureConfig(
                max_failures=0,
                max_preemption_failures=0,
                controller_failure_limit=STARTUP_RETRIES,
            ),  # fmt: skip
        ),
    )


def ray_accelerator(cfg: JobConfig) -> str | None:
    """The Ray accelerator type of the job's GPU (None on CPU)."""
    gpu = cfg.cost.gpus.get(cfg.hardware.accelerator)
    return gpu.ray_type if gpu is not None else None


def _record_grant(store, grant: autoscale.Grant) -> None:
    meta = RunMeta.from_json(store.read_text(RUN_META) or "{}")
    meta.grants.append({**grant.as_dict(), "time": time.time()})
    store.write_text(RUN_META, meta.to_json())
    print(
        f"autoscaler: {grant.resource} workers ready after {grant.waited_s:.0f} s"
        + (f" ({grant.fallback_note})" if grant.fallback_note else "")
    )
