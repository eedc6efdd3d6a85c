"""`launch`: config -> storage -> data -> MLflow run -> Ray cluster -> TorchTrainer -> bill.

Everything that can fail on bad input (config, storage a cluster cannot use, data rows, a
full-scale job without its GPUs) fails here, before any cluster starts. A launch with the name of
an existing run continues it: same run folder in the durable store, same checkpoints, same MLflow
run, from this machine or any other (the storage contract: orchestrator/storage/layout.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import yaml

from orchestrator.config.load import compose, to_dict, to_yaml
from orchestrator.config.names import check_name
from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.cost.budget import Spend, restart_allowed
from orchestrator.cost.estimator import (
    Projection,
    cluster_price_per_hour,
    measured_save_times,
    price_per_hour,
    project,
)
from orchestrator.cost.ledger import Ledger, NodeLife, read_timeline
from orchestrator.cost.lengths import Lengths
from orchestrator.cost.memory import check_job
from orchestrator.cost.prices import apply_live_prices
from orchestrator.cost.run_bill import bill_markdown, log_bill
from orchestrator.data.formats import DataError
from orchestrator.data.prepared import DataManifest
from orchestrator.launch import autoscale
from orchestrator.launch.worker_env import worker_env
from orchestrator.storage import resolve as storage_resolve
from orchestrator.storage.layout import (
    BILL_JSON,
    BILL_MD,
    CONFIGS,
    EXPORT,
    FAILURES,
    LAUNCH_RESULT,
    METRICS_PENDING,
    RESULT,
    RUN_META,
    FailureRecord,
    RunContext,
    RunMeta,
    RunResult,
    RunStorage,
    read_failures,
)
from orchestrator.tracking import runs as mlruns
from orchestrator.tracking.mlflow_logger import replay_all, replay_durable
from orchestrator.tracking.plots import log_run_artifacts
from orchestrator.tracking.redact import redact
from orchestrator.training.model import count_params


@dataclass
class LaunchResult:
    job: str
    run: str
    run_dir: str
    """The run's folder in the durable store (a path, or an s3:// URL)."""
    checkpoint_dir: str
    mlflow_run_id: str
    tracking_uri: str
    attempt: int
    step: int
    total_steps: int
    stop_reason: str
    eval_loss: float | None
    usd_total: float
    usd_attempt: float
    wall_s: float


def _config_hash(cfg: JobConfig) -> str:
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]


def _check_hardware(cfg: JobConfig) -> None:
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


def _check_capabilities(cfg: JobConfig) -> None:
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


def launch(
    job: str,
    scale: str | None = None,
    overrides: list[str] | None = None,
    run_name: str | None = None,
    yes: bool = False,
) -> LaunchResult:
    """Run (or continue) a job on Ray and return where everything is.

    Args:
        yes: launch even when the projected bill exceeds `budget.max_usd` (else ask, or refuse
            when there is nobody to ask).
    """
    t_start = time.time()
    if run_name is not None:
        check_name("run", run_name)  # a folder and an object prefix: checked before anything
    cfg = compose(job, scale, overrides)  # bad config: fails here, before any cluster
    check_job(cfg)  # GPU memory and node disk: a job that cannot fit fails here
    _check_hardware(cfg)
    _check_capabilities(cfg)
    run_name = run_name or f"{cfg.job}-{cfg.scale}-{datetime.now():%Y%m%d-%H%M%S}"
    uri = mlruns.tracking_uri()
    storage = storage_resolve.resolve(cfg, run_name, os.environ)
    if os.environ.get("RAY_ADDRESS"):  # a cluster: its nodes share no disk with this machine
        storage_resolve.check_cluster(cfg, storage, uri, os.environ)
    note = apply_live_prices(cfg)
    if note:
        print(note)
    _print_projection(cfg)

    store = storage.run_store()
    meta = _existing_meta(store, cfg, run_name)
    data_url, data = _prepare_data(cfg, storage, meta)
    _publish_base(cfg, storage)
    previous = _read_result(store) if meta else None  # a continued run has measured its saves
    lengths = None
    if cfg.data.format != "text" and data.train_length_counts:
        values = tuple(data.train_lengths())
        lengths = Lengths(values, len(values), "measured", f"prepared data {data.key}")
    projection = project(
        cfg,
        lengths=lengths,
        vocab_size=data.vocab_size,
        saves=measured_save_times(previous.checkpoint_s, previous.checkpoint_persist_s)
        if previous
        else None,
    )
    low, high = projection.usd_range
    print(
        f"projected bill of this run ({cfg.scale}): ${projection.usd:.4f} "
        f"(${low:.4f}-${high:.4f}), {projection.hours * 3600:,.0f} s"
    )
    _confirm_budget(cfg, projection, yes)

    mlruns.set_fail_fast_http()
    run_id = _start_mlflow_run(cfg, uri, run_name, meta)
    meta = RunMeta(
        job=cfg.job,
        run=run_name,
        scale=cfg.scale,
        mlflow_run_id=run_id,
        tracking_uri=uri,
        created=meta.created if meta else time.time(),
        storage_root=storage.root,
        data_key=data.key,
        projected=meta.projected if meta else None,
        grants=meta.grants if meta else [],
    )
    store.write_text(RUN_META, meta.to_json())
    sent = replay_durable(uri, store, METRICS_PENDING) + replay_all(uri, storage.node_dir())
    if sent:
        print(f"replayed {sent} buffered metrics to MLflow")

    ledger = Ledger(store)
    ledger.close_dangling(read_timeline(store))
    usd_before = ledger.bill(read_timeline(store))["usd_total"]
    hours_before = ledger.hours()
    attempt = ledger.begin(t_start)  # the cluster is paid from the moment we start creating it
    mlruns.log_config(uri, run_id, to_dict(cfg), attempt["attempt"])
    store.write_text(  # the resolved config of this launch, beside its results (redacted)
        f"{CONFIGS}/attempt-{attempt['attempt']}.yaml",
        yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False),
    )
    store.delete(RESULT)

    failures = read_failures(store)
    context = RunContext(
        storage=storage,
        data_url=data_url,
        tracking_uri=uri,
        mlflow_run_id=run_id,
        attempt=attempt["attempt"],
        attempt_start_time=t_start,
        usd_before_attempt=usd_before,
        price_per_hour_usd=cluster_price_per_hour(cfg),
        config_hash=_config_hash(cfg),
        preemptions_before=sum(f.kind == "preemption" for f in failures),
        app_failures_before=sum(f.kind == "app" for f in failures),
        flush_s=cfg.storage.flush_s,
        hours_before_attempt=hours_before,
    )
    status, launcher_stop = "FAILED", None
    try:
        launcher_stop = _fit(cfg, context, store, ledger, t_start)
        status = "FINISHED"
    except RunFailed as e:
        e.job, e.run, e.run_url = cfg.job, run_name, storage.run_url
        raise
    finally:
        ledger.end(attempt)
        result = _read_result(store)
        stop_reason = result.stop_reason if result else (launcher_stop or "failed")
        bill = _write_bill(cfg, store, ledger, projection, stop_reason)
        try:
            replay_durable(uri, store, METRICS_PENDING)  # what the workers could not send
            log_bill(uri, run_id, store)
            log_run_artifacts(uri, run_id, store, storage.checkpoint_url)
            _register_export(cfg, uri, run_id, run_name, store, bill, result)
            mlruns.finish(uri, run_id, _bill_tags(bill, attempt, result), status)
        except Exception as e:  # noqa: BLE001 - a dead tracking server must not hide the result
            print(f"warning: could not finalize the MLflow run: {e}", file=sys.stderr)

    res = LaunchResult(
        job=cfg.job,
        run=run_name,
        run_dir=storage.run_url,
        checkpoint_dir=storage.checkpoint_url,
        mlflow_run_id=run_id,
        tracking_uri=uri,
        attempt=attempt["attempt"],
        step=result.step if result else 0,
        total_steps=result.total_steps if result else 0,
        stop_reason=stop_reason,
        eval_loss=result.eval_loss if result else None,
        usd_total=bill["usd_total"],
        usd_attempt=ledger.usd_between(attempt["start"], attempt["end"]),
        wall_s=time.time() - t_start,
    )
    _print_summary(res)
    store.write_text(LAUNCH_RESULT, json.dumps(asdict(res), indent=1))
    return res


def _existing_meta(store, cfg: JobConfig, run_name: str) -> RunMeta | None:
    """The run's metadata when the run exists (a continue), checked against this launch."""
    text = store.read_text(RUN_META)
    if text is None:
        return None
    meta = RunMeta.from_json(text)
    if meta.scale != cfg.scale:
        raise ConfigError(
            f"run {run_name!r} exists at scale {meta.scale!r}; "
            f"cannot continue it at scale {cfg.scale!r} (pick another run=NAME)"
        )
    if cfg.checkpoint.resume == "never":
        raise ConfigError(
            f"run {run_name!r} already exists ({store.url}) and checkpoint.resume=never"
        )
    return meta


def _prepare_data(
    cfg: JobConfig, storage: RunStorage, meta: RunMeta | None
) -> tuple[str, DataManifest]:
    """Build (or reuse) the prepared data in the durable store; bad rows fail here. A continued
    run whose data changed is refused unless `data.rebuild=true`."""
    from orchestrator.data.publish import data_key, ensure_data

    if meta is not None and meta.data_key:
        key, _ = data_key(cfg.data)
        if key != meta.data_key and not cfg.data.rebuild:
            raise ConfigError(
                f"run {meta.run!r} trained on data {meta.data_key}, and the data is now "
                f"{key} (the source or data config changed since: "
                f"{storage.data_url(meta.data_key)} holds the old tokens). Its checkpoints "
                "hold a position in the old data: start a new run (run=NAME), or continue on "
                'the new data with set="data.rebuild=true"'
            )
    url, data = ensure_data(cfg.data, storage.root, storage.node_shared_dir("prepare"))
    if cfg.data.format == "text":
        print(
            f"data: {data.num_rows} files streamed in rows of {cfg.data.max_seq_len} tokens, "
            f"{data.num_eval} held-out rows, vocab {data.vocab_size}; training on "
            f"{cfg.train.max_tokens or 0:,} tokens with {count_params(cfg.model, data.vocab_size):,} "
            "parameters"
        )
    else:
        print(
            f"data: {data.num_rows} rows -> {data.num_train} train / {data.num_eval} eval "
            f"examples, {data.train_tokens:,} train tokens, vocab {data.vocab_size}"
            + (f", {data.skipped_rows} bad rows skipped" if data.skipped_rows else "")
        )
    print(f"  prepared data: {url}")
    if cfg.data.format != "text" and data.num_train < cfg.train.global_batch_size:
        # Caught here, before any worker starts (the workers would fail on it, and be retried).
        raise DataError(
            f"only {data.num_train} training examples ({data.num_rows} rows"
            + (f", {data.skipped_rows} skipped" if data.skipped_rows else "")
            + f"), fewer than one global batch (train.global_batch_size="
            f"{cfg.train.global_batch_size}); lower the batch size or add data"
        )
    return url, data


def _publish_base(cfg: JobConfig, storage: RunStorage) -> None:
    """A local base (`model.pretrained: base:NAME`) into the durable store, where every node
    finds it; built on this machine first if it is not cached."""
    from orchestrator.training import bases

    if bases.is_base(cfg.model.pretrained):
        cfg.model.pretrained = bases.publish(cfg.model.pretrained, storage.root)
        print(f"  base model: {cfg.model.pretrained}")


def _start_mlflow_run(cfg: JobConfig, uri: str, run_name: str, meta: RunMeta | None) -> str:
    return mlruns.start_or_continue(
        uri,
        cfg.tracking.experiment or cfg.job,
        run_name,
        meta.mlflow_run_id if meta else None,
        tags={
            "job": cfg.job,
            "scale": cfg.scale,
            "strategy": cfg.train.strategy,
            "method": cfg.train.method,
            "instance_type": cfg.hardware.instance_type,
            "market": cfg.hardware.market,
            "git_commit": mlruns.git_commit(),
            "cluster": os.environ.get("RAY_ADDRESS", "local"),
            "mlflow.note.content": cfg.description,
        },
    )


def _write_bill(
    cfg: JobConfig, store, ledger: Ledger, projection: Projection, stop_reason: str
) -> dict[str, Any]:
    """The bill of the run so far: ledger + timeline, the first launch's projection, the
    market fallback if any; saved with the ledger and as bill.md / bill.json."""
    meta = RunMeta.from_json(store.read_text(RUN_META) or "{}")
    bill = ledger.bill(read_timeline(store))
    if meta.projected is None:  # the first launch's projection is what the user was promised
        low, high = projection.usd_range
        meta.projected = {
            "usd": projection.usd,
            "hours": projection.hours,
            "usd_low": low,
            "usd_high": high,
        }
        store.write_text(RUN_META, meta.to_json())
    bill["projected"] = dict(meta.projected)
    bill["projected"]["error_pct"] = (
        (bill["usd_total"] - bill["projected"]["usd"]) / bill["projected"]["usd"] * 100
        if bill["projected"]["usd"]
        else 0.0
    )
    bill["stop_reason"] = stop_reason
    notes = [g["fallback_note"] for g in meta.grants if g.get("fallback_note")]
    if notes:  # spot capacity did not come: the run was moved to on-demand nodes
        bill["market_fallback"] = notes[-1]
    ledger.save(bill)
    store.write_text(BILL_MD, bill_markdown(cfg.job, meta.run, bill))
    store.write_text(BILL_JSON, json.dumps(bill, indent=1))
    return bill


def _bill_tags(bill: dict[str, Any], attempt: dict[str, Any], result: RunResult | None) -> dict:
    tags = {
        "stop_reason": bill["stop_reason"],
        "attempts": str(attempt["attempt"]),
        "bill_usd": f"{bill['usd_total']:.6f}",
        "bill_usd_wasted": f"{bill['by_category']['wasted']:.6f}",
        "bill_usd_projected": f"{bill['projected']['usd']:.6f}",
        "bill_error_pct": f"{bill['projected']['error_pct']:.1f}",
        "bill_spot_savings_usd": f"{bill['usd_spot_savings']:.6f}",
        "final_step": str(result.step) if result else "",
    }
    if "market_fallback" in bill:
        tags["market_fallback"] = bill["market_fallback"]
    return tags


def _register_export(
    cfg: JobConfig, uri: str, run_id: str, run_name: str, store, bill: dict, result
) -> None:
    """A finished run's export as an MLflow logged model, by reference, with its bill."""
    exported = store.exists(f"{EXPORT}/config.json") or store.exists(
        f"{EXPORT}/adapter/adapter_config.json"
    )
    if result is None or not exported:
        return
    tags = {
        "job": cfg.job,
        "scale": cfg.scale,
        "bill_usd": f"{bill['usd_total']:.6f}",
        "bill_usd_projected": f"{bill['projected']['usd']:.6f}",
        "bill_usd_wasted_by_preemptions": f"{bill['by_category']['wasted']:.6f}",
        "bill_spot_savings_usd": f"{bill['usd_spot_savings']:.6f}",
        "bill_usd_upstream": "0",  # a pipeline stage adds its inputs' bills here
        "tokens": str(result.tokens),
        "eval_loss": "" if result.eval_loss is None else f"{result.eval_loss:.6f}",
    }
    params = {
        "data_key": RunMeta.from_json(store.read_text(RUN_META) or "{}").data_key or "",
        "config_hash": _config_hash(cfg),
        "method": cfg.train.method,
        "base": cfg.model.pretrained or "random init",
    }
    model_id = mlruns.register_model(
        uri, run_id, f"{cfg.job}-{run_name}", f"{store.url}/{EXPORT}", tags, params
    )
    print(f"  registered the export in MLflow as logged model {model_id}")


def _confirm_budget(cfg: JobConfig, projection: Projection, yes: bool) -> None:
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


def _cluster_nodes(cfg: JobConfig, t_start: float) -> list[NodeLife]:
    """The nodes the ledger prices. A private local cluster is one node of the job's instance
    type; on a Ray cluster every node says what it is through its `instance_type`/`market`
    labels (set by infra/), falling back to the job's hardware with a warning."""

    def price(instance_type: str, market: str) -> tuple[float, float]:
        p = cfg.cost.instances.get(instance_type) or cfg.cost.instances[cfg.hardware.instance_type]
        return price_per_hour(p, market), p.on_demand_per_hour_usd

    hw = cfg.hardware
    if not os.environ.get("RAY_ADDRESS"):
        p, od = price(hw.instance_type, hw.market)
        return [
            NodeLife(
                "local", hw.instance_type, hw.market, p * hw.num_nodes, od * hw.num_nodes, t_start
            )
        ]
    from ray.util.state import list_nodes

    nodes = []
    for n in list_nodes(detail=True):
        labels = getattr(n, "labels", None) or {}
        itype = labels.get("instance_type", hw.instance_type)
        market = labels.get("market", hw.market)
        if "instance_type" not in labels:
            print(
                f"warning: node {n.node_id[:8]} has no instance_type label; priced as {itype}",
                file=sys.stderr,
            )
        p, od = price(itype, market)
        start = (n.start_time_ms / 1000.0) if getattr(n, "start_time_ms", None) else t_start
        end = None
        if getattr(n, "state", "ALIVE") == "DEAD":
            end = (n.end_time_ms / 1000.0) if getattr(n, "end_time_ms", None) else time.time()
            if end <= t_start:
                continue  # gone before this launch
        nodes.append(NodeLife(n.node_id, itype, market, p, od, max(start, t_start), end))
    return nodes


def _fit(cfg: JobConfig, context: RunContext, store, ledger: Ledger, t_start: float) -> str | None:
    """Run training on Ray and supervise it: a preemption (a worker or node lost, a spot
    notice) restarts it from the latest checkpoint without limit (up to `max_preemptions` and
    the budget); an application error restarts it at most `train.max_failures` times. On an
    autoscaling cluster the workers are requested first and released at the end. Returns the
    launcher's own stop reason when it stopped training itself (the budget at a restart)."""
    from orchestrator.launch.ray_session import ray_cluster

    hw = cfg.hardware
    on_gpu = hw.gpus_per_worker > 0
    counts = {"preemption": 0, "app": 0}
    with ray_cluster(
        num_cpus=hw.num_workers * hw.cpus_per_worker,
        num_gpus=0 if not on_gpu else hw.num_workers * hw.gpus_per_worker,
    ) as where:
        print(f"cluster: {where}")
        grant = autoscale.acquire(cfg)  # None unless on an autoscaling cluster
        if grant is not None:
            _record_grant(store, grant)
            if grant.market != hw.market:  # the fallback: price the run as what it runs on
                hw.market = grant.market
                context.price_per_hour_usd = cluster_price_per_hour(cfg)
        try:
            return _fit_tries(cfg, context, store, ledger, t_start, grant, counts)
        finally:
            ledger.sync_nodes(_cluster_nodes(cfg, t_start))
            if grant is not None:
                autoscale.release()


def _ray_accelerator(cfg: JobConfig) -> str | None:
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


def _fit_tries(
    cfg: JobConfig,
    context: RunContext,
    store,
    ledger: Ledger,
    t_start: float,
    grant: autoscale.Grant | None,
    counts: dict[str, int],
) -> str | None:
    """Training tries of one launch: restart after preemptions and (up to max_failures)
    application errors, from the latest complete checkpoint."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.exceptions import TrainingFailedError

    from orchestrator.training.loop import train_fn

    hw = cfg.hardware
    on_gpu = hw.gpus_per_worker > 0
    pinned = {grant.resource: grant.units_per_worker} if grant is not None else {}
    storage_path, storage_fs = storage_resolve.ray_storage(context.storage)
    for attempt_try in itertools.count(1):
        ledger.sync_nodes(_cluster_nodes(cfg, t_start))
        failures = read_failures(store)
        context.preemptions_before = sum(f.kind == "preemption" for f in failures)
        context.app_failures_before = sum(f.kind == "app" for f in failures)
        trainer = TorchTrainer(
            train_fn,
            train_loop_config={
                "config": to_dict(cfg),
                "context": context.to_dict(),
                "env": worker_env(os.environ),  # settings; secrets only by opt-in
            },
            scaling_config=ScalingConfig(
                num_workers=hw.num_workers,
                use_gpu=on_gpu,
                # The GPU type is part of the request: an A100-80GB job never lands on 24 GB
                # cards, or on pricier ones (infra/ node types carry the same resource).
                accelerator_type=_ray_accelerator(cfg),
                resources_per_worker={
                    "CPU": hw.cpus_per_worker,
                    **({"GPU": hw.gpus_per_worker} if on_gpu else {}),
                    **pinned,  # spot / on_demand nodes of an autoscaling cluster
                },
            ),
            # On GPUs, NCCL for the tensors on the device and gloo for the few CPU-side ones
            # (object collectives, checkpoint agreement flags): one process group serves both.
            torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if on_gpu else "gloo"),
            run_config=RunConfig(
                name=f"attempt-{context.attempt}-try-{attempt_try}",
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                # Retries are decided here, where preemptions and app errors are told apart.
                failure_config=FailureConfig(max_failures=0, max_preemption_failures=0),
            ),
        )
        if grant is not None:
            autoscale.release()  # Ray Train registers the workers' request from here on
        try:
            trainer.fit()
            return None
        except TrainingFailedError as e:
            kind, detail = classify_failure(e)
            counts[kind] += 1
            record = FailureRecord(context.attempt, attempt_try, kind, detail[:2000], time.time())
            store.append_lines(FAILURES, [record.to_json()])
            spent = Spend(context.usd_before_attempt, context.hours_before_attempt).after(
                time.time() - t_start, context.price_per_hour_usd
            )
            if kind == "app" and counts["app"] > cfg.train.max_failures:
                raise RunFailed(
                    f"training failed {counts['app']} times with an application error "
                    f"(train.max_failures={cfg.train.max_failures}); last error:\n{detail}"
                ) from e
            cap = cfg.train.max_preemptions
            if kind == "preemption" and cap is not None and counts["preemption"] > cap:
                raise RunFailed(
                    f"{counts['preemption']} preemptions in this launch "
                    f"(train.max_preemptions={cap})"
                ) from e
            cap = restart_allowed(cfg.budget, spent)
            if cap is not None:
                print(
                    f"{kind}: not restarting: ${spent.usd:.4f} and {spent.hours:.3f} h spent, "
                    f"{cap}={getattr(cfg.budget, cap)} reached"
                )
                return "budget"
            first_line = detail.strip().splitlines()[-1] if detail.strip() else kind
            print(
                f"{kind} #{counts[kind]}: {first_line[:300]}\n"
                "restarting from the latest complete checkpoint"
            )
    return None


class RunFailed(RuntimeError):
    """Training stopped for good (application errors beyond max_failures, preemptions beyond
    max_preemptions). The launcher adds the run's name and store before it propagates."""

    job: str = ""
    run: str = ""
    run_url: str = ""

    def summary(self) -> str:
        """What a user reads at the end: what failed, where the details are, how to go on."""
        lines = str(self).strip().splitlines() or ["training failed"]
        what = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1].strip()}"
        return "\n".join(
            [
                f"error: run {self.run!r} of {self.job!r} stopped: {what[:600]}",
                f"  details: {self.run_url}/{FAILURES} (every failed try, with its error), "
                "and the workers' logs in the Ray session folder (ray logs / the dashboard)",
                f"  continue (after fixing the cause): make launch job={self.job} run={self.run}",
            ]
        )


def classify_failure(err: Exception) -> tuple[str, str]:
    """("preemption" | "app", detail) of a failed training try.

    Preemption: Ray's PreemptionError (a drained node), a worker process or node that died
    (SIGKILL, node lost: RayActorError), or our `Preempted` after a spot notice. If any rank was
    lost that way, the others' errors are collateral (broken collectives), so preemption wins.
    Application: anything else (an exception in training code, bad data, a worker killed for
    running out of memory: it would fail again)."""
    from ray.exceptions import OutOfMemoryError, RayActorError
    from ray.train.v2.api.exceptions import PreemptionError, WorkerGroupError

    if isinstance(err, PreemptionError):
        return "preemption", str(err)
    if not isinstance(err, WorkerGroupError):
        return "app", str(err)

    def unwrap(e: Exception) -> Exception:
        for attr in ("health_check_failure", "_base_exc"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                return unwrap(inner)  # type: ignore[arg-type]
        return e

    causes = {rank: unwrap(e) for rank, e in err.worker_failures.items()}
    lost = [
        r
        for r, c in causes.items()
        if isinstance(c, RayActorError)
        and not isinstance(c, OutOfMemoryError)
        and "memory monitor" not in str(c)
    ]
    notices = [r for r, c in causes.items() if type(c).__name__ == "Preempted"]
    if notices:
        return "preemption", f"spot notice on rank(s) {notices}: {causes[notices[0]]}"
    if lost:
        return "preemption", f"worker rank(s) {lost} lost: {str(causes[lost[0]])[:500]}"
    rank = min(causes) if causes else 0
    detail = str(err.worker_failures.get(rank, err))
    return "app", f"rank {rank}: {detail}"


def _read_result(store) -> RunResult | None:
    text = store.read_text(RESULT)
    return RunResult.from_json(text) if text else None


def _print_projection(cfg: JobConfig) -> None:
    """The projected full-scale bill of the recipe, before anything runs."""
    try:
        full = cfg if cfg.scale == "full" else compose(cfg.job, "full")
        print(f"projected full-scale bill of {cfg.job!r}: {project(full).summary()}")
    except ConfigError as e:
        print(f"(no full-scale projection: {e})")


def _print_summary(r: LaunchResult) -> None:
    loss = f"{r.eval_loss:.4f}" if r.eval_loss is not None else "n/a"
    print("\n" + "=" * 72)
    print(
        f"run {r.run} ({r.job}): step {r.step}/{r.total_steps}, stop reason: {r.stop_reason}, "
        f"eval loss {loss}"
    )
    print(
        f"  bill:        ${r.usd_total:.6f} total (this launch ${r.usd_attempt:.6f}, "
        f"{r.wall_s:.0f} s, attempt {r.attempt})"
    )
    print(f"  checkpoints: {r.checkpoint_dir}")
    print(f"  MLflow:      {r.tracking_uri}  run {r.mlflow_run_id}")
    print(
        f"               view: make mlflow-ui, then open {mlruns.run_url(r.tracking_uri, r.mlflow_run_id)}"
    )
    print(f'  continue:    make launch job={r.job} run={r.run} set="train.max_steps=<more>"')
    print("=" * 72)
