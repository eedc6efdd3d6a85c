"""Training on Ray, supervised: the worker group, its tries, and what happens after a failure.

A preemption (a worker or node lost, a spot notice) restarts training from the latest complete
checkpoint; an application error restarts it at most `train.max_failures` times; a budget
already spent stops it. The decision is `restart.decide` (pure); this module carries it out.
On an autoscaling cluster the workers are requested first and released at the end.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any

from orchestrator.checkpoint.notice import doomed_nodes
from orchestrator.compose.load import to_dict
from orchestrator.config.schema import JobConfig
from orchestrator.cost import capacity
from orchestrator.cost.estimator import cluster_price_per_hour
from orchestrator.cost.ledger import Ledger, read_timeline, restart_s
from orchestrator.launch import autoscale
from orchestrator.launch.checks import collective_timeout_s
from orchestrator.launch.failures import RunFailed, classify_failure
from orchestrator.launch.nodes import cluster_nodes, drain
from orchestrator.launch.restart import Action, FailureKind, Tally, decide
from orchestrator.launch.worker_env import worker_env
from orchestrator.storage import resolve as storage_resolve
from orchestrator.storage.layout import (
    EVENTS,
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
    plan: tuple[int, float, dict[str, float]] | None = None,
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
            need = autoscale.need_for(cfg, plan[0], plan[1], spent.usd, spent.hours, plan[2])
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
            return _tries(cfg, context, store, ledger, t_start, grant, plan)
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
    plan: tuple[int, float, dict[str, float]] | None = None,
) -> StopReason | None:
    """Training tries of one launch, each from the latest complete checkpoint, until one ends
    or `restart.decide` says stop."""
    from ray.train.v2.api.exceptions import TrainingFailedError

    tally = Tally()
    kind: FailureKind | None = None
    nodes_before: set[str] = set()
    for attempt_try in itertools.count(1):
        ledger.sync_nodes(cluster_nodes(cfg, t_start))
        failures = read_failures(store)  # before every try: the counts the loop starts from
        context.preemptions_before = sum(f.kind == FailureKind.PREEMPTION for f in failures)
        context.app_failures_before = sum(f.kind == FailureKind.APP for f in failures)
        if cfg.hardware.elastic and kind == FailureKind.PREEMPTION:
            if grant is not None:  # keep the nodes left while deciding
                autoscale.hold(cfg, grant.market, grant.zone)
            took = autoscale.settle(nodes_before)  # the lost node out of the GCS's view first
            print(f"elastic: the lost node left the cluster's view after {took:.0f} s", flush=True)
        if grant is not None and attempt_try > 1:  # a replacement may still be booting
            grant = _reacquire(cfg, context, store, kind, plan, grant.zone)
        if cfg.hardware.elastic:  # Ray Train sizes the try from the coordinator's view
            autoscale.refresh_reservations()
        trainer = _trainer(cfg, context, grant, attempt_try)
        nodes_before = autoscale.alive_nodes() if cfg.hardware.elastic else set()
        if grant is not None:
            autoscale.release()  # Ray Train registers the workers' request from here on
        try:
            trainer.fit()
            return None
        except TrainingFailedError as e:
            kind, detail = classify_failure(e, autoscaling=grant is not None)
            if kind == FailureKind.RESIZE:  # not a failure: more nodes, right after a save
                _record_resize(store, detail)
            else:
                tally = tally.add(kind)
                record = FailureRecord(
                    context.attempt, attempt_try, kind, detail[:2000], time.time()
                )
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
            if kind == FailureKind.RESIZE:
                print(f"elastic: {last_line[:300]}\n{decision.message}", flush=True)
                continue
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


def _reacquire(
    cfg: JobConfig, context: RunContext, store, kind: FailureKind | None,
    plan: tuple[int, float, dict[str, float]] | None, zone: str | None = None,
) -> autoscale.Grant:  # fmt: skip
    """Before a retry on an autoscaling cluster: ask for the workers again and wait until the
    cluster holds them (a preempted node's replacement takes minutes on a cloud), with the
    same spot wait and on-demand fallback as the first try, so the try does not time out in
    Ray Train's placement-group wait. An elastic job that lost a node asks the capacity policy
    whether to go on with the nodes left (shrink) or wait for the replacement, by what each
    costs. No capacity at all ends the launch (RunFailed)."""
    workers, move = None, None
    if cfg.hardware.elastic and kind == FailureKind.PREEMPTION:
        workers, move = _shrink_or_wait(cfg, context, store, plan)
    spot_wait_s = cfg.hardware.spot_wait_s
    if move == capacity.Move.ON_DEMAND:  # the policy chose it: no spot wait before it
        cfg.hardware.spot_wait_s = 0.0
    try:
        grant = autoscale.acquire(cfg, workers=workers, prefer_zone=zone)  # its nodes' zone
    except RuntimeError as e:  # no capacity within the waits: say so, do not spin
        raise RunFailed(f"restart: {e}") from None
    finally:
        cfg.hardware.spot_wait_s = spot_wait_s
    assert grant is not None
    _record_grant(store, grant)
    if grant.hardware is not None:  # failed over on a retry
        _fail_over(cfg, grant.hardware)
        context.price_per_hour_usd = cluster_price_per_hour(cfg)
    if grant.market != cfg.hardware.market:  # fell back: price the rest as what it runs on
        cfg.hardware.market = grant.market
        context.price_per_hour_usd = cluster_price_per_hour(cfg)
    return grant


def _shrink_or_wait(
    cfg: JobConfig, context: RunContext, store, plan: tuple[int, float, dict[str, float]] | None
) -> tuple[int | None, capacity.Move | None]:
    """An elastic job lost a node: the capacity policy prices going on with the nodes left
    against waiting for the replacement and on-demand nodes. Returns the workers to wait for
    (None: the job's minimum) and the move chosen. The decision and its numbers go into
    run.json (resizes), the log and the bill."""
    hw = cfg.hardware
    have = min(hw.num_nodes, autoscale.workers_there(cfg, hw.market) // hw.workers_per_node)
    if not hw.nodes or not hw.nodes.min <= have < hw.num_nodes:
        return None, None  # all there (the replacement came), or too few: wait for the minimum
    spent = context.spent(time.time())
    need = None
    if plan is not None:
        steps_left = max(1, plan[0] - _last_step(store))
        need = autoscale.need_for(cfg, steps_left, plan[1], spent.usd, spent.hours)
    lost = f"a node lost, {have} of {hw.num_nodes} left"
    if need is None:  # nothing to weigh waiting against: go on with the nodes there are
        why = (f"{lost}: shrink (no {hw.market} price for {hw.instance_type} in the catalog "
               "to weigh waiting for the replacement against)")  # fmt: skip
        move = capacity.Move.SHRINK
    else:
        restart = restart_s(read_timeline(store)) or need.restart_s  # measured here
        need = dataclasses.replace(need, nodes_have=have, restart_s=restart)
        decision = capacity.decide(need.situation(0.0))
        why, move = f"{lost}: {decision.message}", decision.move
    _record_resize(store, why, workers=have * hw.workers_per_node)
    print(f"elastic: {why}", flush=True)
    return (None if move == capacity.Move.SHRINK else hw.num_workers), move


def _last_step(store) -> int:
    """The last step the run logged (events.jsonl), 0 before any."""
    steps = []
    for line in store.read_lines(EVENTS):
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):  # a line cut by a kill mid-write
            continue
    return max(steps, default=0)


def _record_resize(store, why: str, workers: int | None = None) -> None:
    meta = RunMeta.from_json(store.read_text(RUN_META) or "{}")
    meta.resizes.append({"time": time.time(), "workers": workers, "why": why})
    store.write_text(RUN_META, meta.to_json())


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
        if grant.zone:  # all in the granted zone (EFA: one placement group)
            pinned[autoscale.zone_resource(grant.zone)] = 0.001
    per_worker = {
        "CPU": hw.cpus_per_worker,
        **({"GPU": hw.gpus_per_worker} if on_gpu else {}),
        **pinned,  # spot / on_demand nodes of an autoscaling cluster
    }
    context.worker_resources = dict(per_worker)  # an elastic run counts room for more of them
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
            # Elastic: Ray asks for the maximum and starts each try on what the cluster holds,
            # at least the minimum. It never resizes a running group on its own (the interval
            # is effectively infinite): growing back happens right after a checkpoint, decided
            # by the trainer (training/elastic.py), so no step is redone.
            num_workers=(hw.min_workers, hw.num_workers) if hw.elastic else hw.num_workers,
            **({"elastic_resize_monitor_interval_s": 1e9} if hw.elastic else {}),
            use_gpu=on_gpu,
            # The GPU type is part of the request: an A100-80GB job never lands on 24 GB
            # cards, or on pricier ones (infra/ node types carry the same resource).
            accelerator_type=ray_accelerator(cfg),
            resources_per_worker=per_worker,
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
