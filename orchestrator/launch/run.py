"""`launch`: config -> storage -> data -> MLflow run -> Ray cluster -> TorchTrainer -> bill.

Everything that can fail on bad input (config, storage a cluster cannot use, data rows, a
full-scale job without its GPUs) fails here, before any cluster starts. A launch with the name of
an existing run continues it: same run folder in the durable store, same checkpoints, same MLflow
run, from this machine or any other (the storage contract: orchestrator/storage/layout.py).

`launch()` reads as its steps; each step is a function below or a module of its own: checks
(`checks.py`), supervision and restarts (`supervise.py`, `restart.py`, `failures.py`), node
prices (`nodes.py`), the MLflow run (`mlflow_run.py`) and the bill (`cost/run_bill.py`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import yaml

from orchestrator.compose.load import compose, to_dict
from orchestrator.config.errors import BudgetRefusal
from orchestrator.config.names import check_name
from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.cost.estimator import (
    Projection,
    cluster_price_per_hour,
    measured_save_times,
    project,
)
from orchestrator.cost.ledger import Ledger, read_timeline
from orchestrator.cost.lengths import Lengths
from orchestrator.cost.memory import check_job
from orchestrator.cost.prices import apply_live_prices
from orchestrator.cost.run_bill import log_bill, write_bill
from orchestrator.data.formats import DataError
from orchestrator.data.prepared import DataManifest
from orchestrator.launch import autoscale, checks, mlflow_run
from orchestrator.launch.failures import RunFailed
from orchestrator.launch.supervise import supervise
from orchestrator.objectives import config_value
from orchestrator.objectives import spec as objective_spec
from orchestrator.storage import resolve as storage_resolve
from orchestrator.storage.durable import open_durable
from orchestrator.storage.layout import (
    BILL_JSON,
    CONFIGS,
    EXTRA_COSTS,
    LAUNCH_RESULT,
    METRICS_PENDING,
    RESULT,
    RUN_META,
    RunContext,
    RunMeta,
    RunResult,
    RunStorage,
    StopReason,
    run_store,
)
from orchestrator.tracking import runs as mlruns
from orchestrator.tracking.mlflow_logger import replay_all, replay_durable
from orchestrator.tracking.plots import log_run_artifacts
from orchestrator.tracking.redact import redact
from orchestrator.training.model import count_params

__all__ = ["LaunchResult", "RunFailed", "launch"]


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
    stop_reason: StopReason
    eval_loss: float | None
    usd_total: float
    usd_attempt: float
    wall_s: float


def launch(
    job: str,
    scale: str | None = None,
    overrides: list[str] | None = None,
    run_name: str | None = None,
    yes: bool = False,
    parent_run_id: str | None = None,
) -> LaunchResult:
    """Run (or continue) a job on Ray and return where everything is.

    Args:
        yes: launch even when the projected bill exceeds `budget.max_usd` (else ask, or refuse
            when there is nobody to ask).
        parent_run_id: the MLflow run of the pipeline this launch is a stage of.

    Raises:
        ConfigError, DataError: bad input, before anything is spent.
        RunFailed: training stopped for good (the bill is written first).
    """
    t_start = time.time()  # the cluster is paid from the moment we start creating it
    cfg, run_name = _configure(job, scale, overrides, run_name)
    uri = mlruns.tracking_uri()
    storage = _storage(cfg, run_name, uri)
    store = run_store(storage)
    meta = _existing_meta(store, cfg, run_name)
    data_url, data = _prepare_data(cfg, storage, meta)
    _publish_base(cfg, storage)
    hooks = _launcher_hooks(cfg)
    if hooks is not None:  # e.g. the eval stage's question set, before anything is spent
        hooks.before_run(cfg, storage)
    digests = _model_digests(cfg)
    resume_bytes = checks.check_resume(cfg, storage, digests) if meta is not None else 0
    projection = _project_this_run(cfg, store, data, meta is not None)
    check_startup_budget(cfg, store, projection, meta is not None)
    checks.confirm_budget(cfg, projection, yes)
    run_id = _open_run(cfg, uri, run_name, storage, meta, data, parent_run_id)
    ledger = Ledger(store)
    context, attempt = _begin_attempt(cfg, storage, ledger, uri, run_id, data_url, t_start)
    context.model_digests, context.resume_bytes = digests, resume_bytes
    status, launcher_stop, extra = "FAILED", None, {}
    try:
        plan = _plan(projection, store, _alternative_step_s(cfg, data))
        launcher_stop = supervise(cfg, context, store, ledger, t_start, plan)
        result = _read_result(store)
        if hooks is not None and result and result.stop_reason == StopReason.COMPLETED:
            # e.g. the eval stage's judge, within what the budget leaves
            extra = hooks.after_run(cfg, storage, uri, run_id, _budget_left(cfg, store, ledger))
        status = "FINISHED"
    except RunFailed as e:
        e.job, e.run, e.run_url = cfg.job, run_name, storage.run_url
        raise
    finally:  # also after a failure: the bill of what was spent
        ledger.end(attempt, scale_down_at=_scale_down_at(cfg, store, attempt["attempt"]))
        result = _read_result(store)
        stop_reason = result.stop_reason if result else (launcher_stop or StopReason.FAILED)
        bill = write_bill(cfg.job, store, ledger, projection, stop_reason)
        _finish_mlflow_run(cfg, uri, run_id, run_name, storage, bill, attempt, result, status)
    res = LaunchResult(
        job=cfg.job,
        run=run_name,
        run_dir=storage.run_url,
        checkpoint_dir=storage.checkpoint_url,
        mlflow_run_id=run_id,
        tracking_uri=uri,
        attempt=context.attempt,
        step=result.step if result else 0,
        total_steps=result.total_steps if result else 0,
        stop_reason=stop_reason,
        eval_loss=result.eval_loss if result else None,
        usd_total=bill["usd_total"],
        usd_attempt=ledger.usd_between(attempt["start"], attempt["end"]) + sum(extra.values()),
        wall_s=time.time() - t_start,
    )
    _print_summary(res, objective_spec(cfg.train.objective).trains)
    store.write_text(LAUNCH_RESULT, json.dumps(asdict(res), indent=1))
    return res


def hand_over(job: str, prev_url: str, next_url: str) -> float | None:
    """A pipeline's next stage (`next_url`) took over worker nodes its previous stage
    (`prev_url`) left up: the previous stage's bill stops billing them when the next one
    started, instead of at their scale-down (bill, ledger and MLflow tags written again).
    Returns the previous stage's new total; None when no node was handed over."""
    prev, nxt = open_durable(prev_url), open_durable(next_url)
    ledger, later = Ledger(prev), Ledger(nxt)
    ends = [a["end"] for a in ledger.attempts if a["end"] is not None]
    starts = [a["start"] for a in later.attempts if ends and a["start"] >= max(ends)]
    if not starts or not ledger.hand_over({n.node_id for n in later.nodes}, min(starts)):
        return None
    old = json.loads(prev.read_text(BILL_JSON) or "{}")
    bill = write_bill(job, prev, ledger, None, old.get("stop_reason", StopReason.COMPLETED))
    meta = RunMeta.from_json(prev.read_text(RUN_META) or "{}")
    try:
        log_bill(meta.tracking_uri, meta.mlflow_run_id, prev)
        tags = mlflow_run.bill_tags(bill, ledger.attempts[-1], _read_result(prev))
        mlruns.set_tags(meta.tracking_uri, meta.mlflow_run_id, tags)
    except Exception as e:  # noqa: BLE001 - the durable bill is the record
        print(f"warning: could not update the MLflow run's bill: {e}", file=sys.stderr)
    return float(bill["usd_total"])


def _scale_down_s(cfg: JobConfig) -> float:
    """How long this launch's worker nodes are expected to outlive it (billed to the run): the
    cluster's idle timeout and half an autoscaler update on a Ray cluster, else 0."""
    if not os.environ.get("RAY_ADDRESS"):
        return 0.0
    return autoscale.scale_down_at(0.0, autoscale.idle_timeout_s(cfg))


def _scale_down_at(cfg: JobConfig, store, attempt: int) -> float | None:
    """On a Ray cluster, when the worker nodes this launch leaves up are expected to be gone:
    the cluster's idle timeout after the workers' last record (None elsewhere: a private local
    cluster stops with the launch)."""
    if not os.environ.get("RAY_ADDRESS"):
        return None
    ends = [r["end"] for r in read_timeline(store) if r["attempt"] == attempt]
    return autoscale.scale_down_at(max(ends, default=time.time()), autoscale.idle_timeout_s(cfg))


def _configure(
    job: str, scale: str | None, overrides: list[str] | None, run_name: str | None
) -> tuple[JobConfig, str]:
    """The resolved config and the run's name; a config that cannot run here fails now."""
    if run_name is not None:
        check_name("run", run_name)  # a folder and an object prefix: checked before anything
    cfg = compose(job, scale, overrides)  # bad config: fails here, before any cluster
    check_job(cfg)  # GPU memory and node disk: a job that cannot fit fails here
    checks.check_hardware(cfg)
    checks.check_capabilities(cfg)
    if os.environ.get("RAY_ADDRESS"):  # a bad $ORCHESTRATOR_IDLE_TIMEOUT_S fails here, not
        autoscale.idle_timeout_s(cfg)  # when the bill is written
    note = apply_live_prices(cfg)
    if note:
        print(note)
    _print_projection(cfg, job, overrides or [])
    return cfg, run_name or f"{cfg.job}-{cfg.scale}-{datetime.now():%Y%m%d-%H%M%S}"


def _storage(cfg: JobConfig, run_name: str, uri: str) -> RunStorage:
    """Where the run lives; on a cluster, storage its nodes (which share no disk) can reach."""
    storage = storage_resolve.resolve(cfg, run_name, os.environ)
    if os.environ.get("RAY_ADDRESS"):
        storage_resolve.check_cluster(cfg, storage, uri, os.environ)
    return storage


def check_startup_budget(cfg: JobConfig, store, projection: Projection, continued: bool) -> None:
    """Refuse (BudgetRefusal, a ConfigError) a launch whose cap cannot cover what it spends
    before and after its steps, given what the run (`store`, when `continued`) has spent."""
    if cfg.budget.max_usd is None:
        return
    spent = Ledger(store).bill(read_timeline(store))["usd_total"] if continued else 0.0
    rate = cluster_price_per_hour(cfg)
    why = checks.startup_refusal(
        cfg.budget.max_usd, spent, projection.overhead_hours.get("startup", 0.0) * rate,
        (cfg.budget.teardown_s + _scale_down_s(cfg)) / 3600.0 * rate,
    )  # fmt: skip
    if why:
        raise BudgetRefusal(f"{cfg.job} ({cfg.scale}): {why}")


def _project_this_run(cfg: JobConfig, store, data: DataManifest, continued: bool) -> Projection:
    """This run's bill, from its measured lengths (and a continued run's measured saves)."""
    previous = _read_result(store) if continued else None
    lengths = _measured_lengths(cfg, data)
    saves = (
        measured_save_times(previous.checkpoint_s, previous.checkpoint_persist_s)
        if previous
        else None
    )
    projection = project(cfg, lengths=lengths, vocab_size=data.vocab_size, saves=saves)
    low, high = projection.usd_range
    print(
        f"projected bill of this run ({cfg.scale}): ${projection.usd:.4f} "
        f"(${low:.4f}-${high:.4f}), {projection.hours * 3600:,.0f} s"
    )
    return projection


def _open_run(
    cfg: JobConfig,
    uri: str,
    run_name: str,
    storage: RunStorage,
    meta: RunMeta | None,
    data: DataManifest,
    parent_run_id: str | None = None,
) -> str:
    """Start (or continue) the MLflow run, write run.json, and send what earlier launches
    could not. Returns the MLflow run id."""
    mlruns.set_fail_fast_http()
    run_id = mlflow_run.start_run(cfg, uri, run_name, meta, parent_run_id)
    store = run_store(storage)
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
    return run_id


def _begin_attempt(
    cfg: JobConfig,
    storage: RunStorage,
    ledger: Ledger,
    uri: str,
    run_id: str,
    data_url: str,
    t_start: float,
) -> tuple[RunContext, dict[str, Any]]:
    """Open this launch in the ledger (its record: attempt number, start, end), record its
    config, and say what the workers need."""
    store = run_store(storage)
    ledger.close_dangling(read_timeline(store))
    usd_before = ledger.bill(read_timeline(store))["usd_total"]
    hours_before = ledger.hours()
    record = ledger.begin(t_start)
    attempt = record["attempt"]
    mlruns.log_config(uri, run_id, to_dict(cfg), attempt)
    store.write_text(  # the resolved config of this launch, beside its results (redacted)
        f"{CONFIGS}/attempt-{attempt}.yaml",
        yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False),
    )
    store.delete(RESULT)
    context = RunContext(
        storage=storage,
        data_url=data_url,
        tracking_uri=uri,
        mlflow_run_id=run_id,
        attempt=attempt,
        attempt_start_time=t_start,
        usd_before_attempt=usd_before,
        price_per_hour_usd=cluster_price_per_hour(cfg),
        config_hash=mlflow_run.config_hash(cfg),
        flush_s=cfg.storage.flush_s,
        hours_before_attempt=hours_before,
        scale_down_s=_scale_down_s(cfg),
    )
    return context, record


def _finish_mlflow_run(
    cfg: JobConfig,
    uri: str,
    run_id: str,
    run_name: str,
    storage: RunStorage,
    bill: dict[str, Any],
    attempt: dict[str, Any],
    result: RunResult | None,
    status: str,
) -> None:
    """Metrics the workers could not send, the bill, plots, the export as a logged model, the
    bill as tags, and the run's status. A dead tracking server must not hide the result."""
    store = run_store(storage)
    try:
        replay_durable(uri, store, METRICS_PENDING)
        log_bill(uri, run_id, store)
        log_run_artifacts(uri, run_id, store, storage.checkpoint_url)
        mlflow_run.register_export(cfg, uri, run_id, run_name, store, bill, result)
        mlruns.finish(uri, run_id, mlflow_run.bill_tags(bill, attempt, result), status)
    except Exception as e:  # noqa: BLE001
        print(f"warning: could not finalize the MLflow run: {e}", file=sys.stderr)


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
    """Local bases (`base:NAME` in model.pretrained or an objective's model input, e.g.
    eval.base) into the durable store, where every node finds them; built on this machine
    first if not cached."""
    from orchestrator.training import bases

    if bases.is_base(cfg.model.pretrained):
        cfg.model.pretrained = bases.publish(cfg.model.pretrained, storage.root)
        print(f"  base model: {cfg.model.pretrained}")
    for key in objective_spec(cfg.train.objective).input_keys:
        ref = config_value(cfg, key)
        if ref and bases.is_base(ref):
            section, _, name = key.partition(".")
            setattr(getattr(cfg, section), name, bases.publish(ref, storage.root))
            print(f"  {key}: {config_value(cfg, key)}")


def _model_digests(cfg: JobConfig) -> dict[str, str]:
    """The identity of every model the job reads (training/bases.model_identity), taken before
    any worker starts: workers verify what they load against it, checkpoints record it."""
    from orchestrator.training.bases import model_identity

    out = {"model.pretrained": model_identity(cfg.model.pretrained, cfg.model.revision)}
    for key in objective_spec(cfg.train.objective).input_keys:
        ref = config_value(cfg, key)
        if ref:
            out[key] = model_identity(ref)
    return out


def _plan(
    projection: Projection, store, alternative_step_s: dict[str, float]
) -> tuple[int, float, dict[str, float]]:
    """(steps left, projected seconds a step, the same on each alternative node type) for the
    capacity policy."""
    steps = int(projection.assumptions.get("steps") or 0)
    previous = _read_result(store)  # a continued run: the steps it has done
    done = previous.step if previous is not None else 0
    step_s = float(projection.assumptions.get("step_s") or 0.0)
    return max(0, steps - done), step_s, alternative_step_s


def _alternative_step_s(cfg: JobConfig, data: DataManifest) -> dict[str, float]:
    """Projected seconds a step on each of `hardware.alternatives` that fits (its own
    micro-batch and GPUs), from the same measured lengths as this run's projection."""
    from orchestrator.launch.failover import alternatives

    out = {}
    for a in alternatives(cfg):
        if a.cfg is not None:
            p = project(a.cfg, lengths=_measured_lengths(cfg, data), vocab_size=data.vocab_size)
            out[a.name] = float(p.assumptions.get("step_s") or 0.0)
    return out


def _measured_lengths(cfg: JobConfig, data: DataManifest) -> Lengths | None:
    """The prepared data's example lengths (None for text streams, or none recorded)."""
    if cfg.data.format == "text" or not data.train_length_counts:
        return None
    values = tuple(data.train_lengths())
    return Lengths(values, len(values), "measured", f"prepared data {data.key}")


def _budget_left(cfg: JobConfig, store, ledger: Ledger) -> float | None:
    """budget.max_usd minus what the run has spent so far (node time and billed extras)."""
    if cfg.budget.max_usd is None:
        return None
    extra = json.loads(store.read_text(EXTRA_COSTS) or "{}")
    return cfg.budget.max_usd - ledger.usd_between(0.0, time.time()) - sum(extra.values())


def _launcher_hooks(cfg: JobConfig):
    """The module whose before_run/after_run the launcher calls around the workers, when the
    objective's spec names one (ObjectiveSpec.launcher)."""
    import importlib

    name = objective_spec(cfg.train.objective).launcher
    return importlib.import_module(name) if name else None


def _read_result(store) -> RunResult | None:
    text = store.read_text(RESULT)
    return RunResult.from_json(text) if text else None


def _print_projection(cfg: JobConfig, job: str, overrides: list[str]) -> None:
    """The projected full-scale bill of the recipe (its variant and stage), before anything
    runs."""
    keep = [o for o in overrides if o.partition("=")[0] in ("variant", "stage")]
    try:
        full = cfg if cfg.scale == "full" else compose(job, "full", keep)
        print(f"projected full-scale bill of {cfg.job!r}: {project(full).summary()}")
    except ConfigError as e:
        print(f"(no full-scale projection: {e})")


def _print_summary(r: LaunchResult, trains: bool = True) -> None:
    loss = f"{r.eval_loss:.4f}" if r.eval_loss is not None else "n/a"
    print("\n" + "=" * 72)
    progress = f"step {r.step}/{r.total_steps}, " if trains else "an evaluation, "
    print(f"run {r.run} ({r.job}): {progress}stop reason: {r.stop_reason}, eval loss {loss}")
    print(
        f"  bill:        ${r.usd_total:.6f} total (this launch ${r.usd_attempt:.6f}, "
        f"{r.wall_s:.0f} s, attempt {r.attempt})"
    )
    if trains:
        print(f"  checkpoints: {r.checkpoint_dir}")
    else:
        print(f"  results:     {r.run_dir}/eval (answers, judgments)")
    print(f"  MLflow:      {r.tracking_uri}  run {r.mlflow_run_id}")
    print(
        f"               view: make mlflow-ui, then open {mlruns.run_url(r.tracking_uri, r.mlflow_run_id)}"
    )
    if trains:
        print(f'  continue:    make launch job={r.job} run={r.run} set="train.max_steps=<more>"')
    print("=" * 72)
