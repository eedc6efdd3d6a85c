"""Multi-stage jobs: a job lists `stages:` (e.g. sft -> reward -> ppo), each a config overlay
with its own method, data and resources, run one after another as launches of their own.

    stages:
      sft:   {budget_share: 0.5, config: {...}}
      more:  {input: sft, budget_share: 0.5, gate: {stage: sft, metric: eval_loss, max: 4.0},
              config: {...}}

- A stage's `input` names an earlier stage: its export in the durable store becomes this stage's
  `model.pretrained` (by reference, nothing copied). A mapping {config key: stage} sets other
  keys too: PPO takes `{model.pretrained: sft, ppo.reward_model: reward}`.
- Budget: `budget.max_usd` of the job is split by `budget_share`; what a stage leaves unspent
  rolls over to the next. A stage whose projected bill exceeds what it may spend is not started:
  the pipeline stops at that boundary with stop reason `budget`, saying so.
- A `gate` is checked before its stage starts: the named metric of an earlier stage's MLflow run
  must be >= `min` / <= `max`; else the pipeline stops with stop reason `gate` and the value.
- A stage's identity (`stage_identity`) is its config minus what may change (budget, length,
  checkpoint and log cadence, prices) plus its inputs' export digests. On relaunch a finished
  stage with the same identity is skipped, a started one continues from its own checkpoints,
  and one whose identity changed is refused naming the keys (`fresh=<stage>` starts it and the
  stages after it over in new run folders). Inputs are checked against the digest recorded
  when their stage finished (`verified_input`).
- MLflow: one parent run per pipeline run, a child run per stage (`mlflow.parentRunId`); the
  bill is per stage (each child's `bill_usd`) and in total (the parent's `pipeline_bill_usd`),
  so `make bills` counts each dollar once.

The decisions (budgets, gates, skips) are pure functions below; `run_pipeline` carries them out.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.compose.load import compose, job_stages
from orchestrator.config.errors import BudgetRefusal
from orchestrator.config.names import check_name
from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.objectives import input_keys
from orchestrator.storage import resolve as storage_resolve
from orchestrator.storage.layout import EXPORT, StopReason, run_store
from orchestrator.urls import is_object_store

PIPELINE = "pipeline.json"  # in the pipeline run's folder of the durable store


@dataclass(frozen=True)
class Gate:
    stage: str
    metric: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[tuple[str, str], ...] = ()
    """(config key, earlier stage whose export it names), e.g. ("model.pretrained", "sft")."""
    budget_share: float | None = None
    gate: Gate | None = None


def stages_of(job: str, scale: str | None) -> list[Stage]:
    """The job's stages in order, checked: names, inputs and gates that name earlier stages,
    shares in (0, 1] summing to at most 1."""
    raw = job_stages(job, scale)
    out: list[Stage] = []
    for name, spec in raw.items():
        check_name("stage", name)
        unknown = set(spec) - {"input", "budget_share", "gate", "config"}
        if unknown:
            raise ConfigError(
                f"job {job!r}: stages.{name}: unknown keys {sorted(unknown)}; valid: "
                "['budget_share', 'config', 'gate', 'input']"
            )
        earlier = [s.name for s in out]
        inputs = _inputs(job, name, spec.get("input"), earlier)
        share = spec.get("budget_share")
        if share is not None and not (isinstance(share, int | float) and 0 < share <= 1):
            raise ConfigError(
                f"job {job!r}: stages.{name}.budget_share={share!r}: a number in (0, 1]"
            )
        gate = None
        if spec.get("gate") is not None:
            g = spec["gate"]
            if not isinstance(g, dict) or g.get("stage") not in earlier or not g.get("metric"):
                raise ConfigError(
                    f"job {job!r}: stages.{name}.gate must be {{stage: <an earlier stage>, "
                    f"metric: NAME, min: X and/or max: Y}}, got {g!r}"
                )
            gate = Gate(g["stage"], str(g["metric"]), g.get("min"), g.get("max"))
        out.append(Stage(name, inputs, share, gate))
    total = sum(s.budget_share or 0.0 for s in out)
    if total > 1.0 + 1e-9:
        raise ConfigError(f"job {job!r}: the stages' budget_share values sum to {total:g} > 1")
    return out


INPUT_KEYS = input_keys()
"""Config keys a stage's `input` may set to an earlier stage's export (model.pretrained and
each objective's own model inputs: orchestrator/objectives/)."""


def _inputs(job: str, name: str, raw: Any, earlier: list[str]) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    pairs = {"model.pretrained": raw} if isinstance(raw, str) else raw
    if not isinstance(pairs, dict):
        raise ConfigError(
            f"job {job!r}: stages.{name}.input must be a stage name or a mapping "
            f"{{config key: stage}}, got {raw!r}"
        )
    for key, src in pairs.items():
        if key not in INPUT_KEYS:
            raise ConfigError(
                f"job {job!r}: stages.{name}.input: {key!r} is not a key an export can set; "
                f"valid: {list(INPUT_KEYS)}"
            )
        if src not in earlier:
            raise ConfigError(
                f"job {job!r}: stages.{name}.input.{key}={src!r} must be an earlier stage "
                f"({earlier or 'none'})"
            )
    return tuple(pairs.items())


# ------------------------------------------------------------------------- pure decisions
def stage_budget(
    total: float | None, stages: list[Stage], index: int, spent: float
) -> float | None:
    """What stage `index` may spend: its share of `total` plus what earlier stages left of
    theirs (`spent`: what they cost). Stages without a share split what no share claims."""
    if total is None:
        return None
    unclaimed = 1.0 - sum(s.budget_share or 0.0 for s in stages)
    free = [s for s in stages if s.budget_share is None]

    def share(s: Stage) -> float:
        return s.budget_share if s.budget_share is not None else unclaimed / len(free)

    allowed_so_far = sum(share(s) for s in stages[: index + 1]) * total
    return max(0.0, allowed_so_far - spent)


def gate_passes(gate: Gate, value: float | None) -> bool:
    if value is None:
        return False
    if gate.min is not None and value < gate.min:
        return False
    return not (gate.max is not None and value > gate.max)


@dataclass
class StageRecord:
    status: str  # "started" | "done" | "stopped"
    config_hash: str
    """The stage's identity (`stage_identity`)."""
    run: str
    mlflow_run_id: str
    stop_reason: str
    usd: float
    export_url: str | None
    export_digest: str | None = None
    """The export's model-manifest digest when the stage finished: what the next stage must
    find there (checkpoint/exports.py)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The flattened identity config, to name what changed."""
    generation: int = 0
    """How many times the stage was started fresh (`fresh=<stage>`): its run folder's suffix."""


# What may change in a started or finished stage without making it another stage: how long it
# runs (continuing is `set="train.max_steps=<more>"`), its budget (derived from what the other
# stages spent), its checkpoint and log cadence, prices, tracking, and the input URLs (their
# digests stand for them). Everything else is what the stage is.
CONTINUATION_KEYS = (
    "train.max_steps", "train.epochs", "train.log_every_steps", "train.max_failures",
    "train.max_preemptions", "description", *INPUT_KEYS,
)  # fmt: skip
CONTINUATION_SECTIONS = ("budget.", "checkpoint.", "cost.", "tracking.", "storage.", "replay.")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def identity_config(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Pure: the flattened config that makes a stage what it is (`CONTINUATION_*` left out)."""
    return {
        k: v for k, v in _flat(cfg_dict).items()
        if k not in CONTINUATION_KEYS and not k.startswith(CONTINUATION_SECTIONS)
    }  # fmt: skip


def stage_identity(cfg_dict: dict[str, Any], input_digests: dict[str, str]) -> str:
    """Pure: a stage's identity: its config minus what may change (`identity_config`) and the
    digests of the exports it reads."""
    body = json.dumps([identity_config(cfg_dict), sorted(input_digests.items())],
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Pure: the identity keys whose values differ (or exist on one side only)."""
    return sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))


def stage_decision(record: StageRecord | None, identity: str, fresh: bool) -> tuple[str, str]:
    """Pure: what to do with a stage: ("run", why), ("skip", why) or ("refuse", why).

    - no record, or `fresh`: run (fresh: in a new run folder, the old one kept);
    - the same identity: skip when done, else resume (run under the same run name);
    - another identity: refuse, never silently resume or skip under a different config.
    """
    if record is None:
        return "run", "not run before"
    if fresh:
        return "run", "started fresh"
    if record.config_hash == identity:
        if record.status == "done":
            return "skip", "finished before with the same config"
        return "run", f"continues ({record.status})"
    return "refuse", "its config or inputs changed since it " + (
        "finished" if record.status == "done" else "started"
    )


def skip(record: StageRecord | None, config_hash: str) -> bool:
    """A finished stage with the same identity is not run again."""
    return stage_decision(record, config_hash, False)[0] == "skip"


def project_pipeline(job: str, scale: str | None, overrides: list[str] | None = None) -> dict:
    """The pipeline's projected bill in a single job's shape (`Projection.as_dict()`'s keys,
    each stage's summed: `combine_projections`), with each stage's own under `stages`."""
    from orchestrator.cost.estimator import combine_projections, project

    stages: dict[str, Any] = {}
    for st in stages_of(job, scale):
        p = project(compose(job, scale, list(overrides or []) + [f"stage={st.name}"]))
        stages[st.name] = p.as_dict()
    return {**combine_projections(stages), "stages": stages}


# ------------------------------------------------------------------------------ running
@dataclass
class PipelineResult:
    job: str
    run: str
    stop_reason: str
    message: str
    usd_total: float
    mlflow_run_id: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_pipeline(
    job: str,
    scale: str | None,
    overrides: list[str] | None,
    run_name: str,
    only: str | None = None,
    yes: bool = False,
    fresh: str | None = None,
) -> PipelineResult:
    """Run the job's stages in order (or only `only`), skipping finished ones. A stage whose
    config or inputs changed since it started is refused (naming the keys) unless `fresh`
    names it or an earlier stage: then it and every stage after it start over in new run
    folders (the old ones kept)."""
    check_name("run", run_name)
    overrides = list(overrides or [])
    stages = stages_of(job, scale)
    names = _check_stage_args(job, [s.name for s in stages], only, fresh)
    # The pipeline's own settings (storage, tracking, budget) as its first stage resolves them:
    # a job's top level need not be a whole config (each stage brings its data).
    top = compose(job, scale, overrides + [f"stage={stages[0].name}"])
    configs = _preflight_stages(
        job, scale, overrides, [s.name for s in stages if only in (None, s.name)]
    )
    with _one_cluster(configs) as where:  # stages after the first skip Ray's start-up
        if where:
            print(f"cluster for every stage: {where}")
        return _run_stages(job, scale, overrides, run_name, stages, names, only, yes, fresh, top)


def _one_cluster(configs: list[JobConfig]):
    """Without RAY_ADDRESS, one private Ray cluster for every stage of this pipeline (sized
    for the largest), instead of one started and stopped per stage; with it, nothing."""
    import contextlib

    from orchestrator.launch.ray_session import ray_cluster

    if os.environ.get("RAY_ADDRESS") or not configs:
        return contextlib.nullcontext()
    hw = [c.hardware for c in configs]
    return ray_cluster(
        num_cpus=max(h.num_workers * h.cpus_per_worker for h in hw),
        num_gpus=max(h.num_workers * h.gpus_per_worker for h in hw),
    )


def _run_stages(
    job: str,
    scale: str | None,
    overrides: list[str],
    run_name: str,
    stages: list[Stage],
    names: list[str],
    only: str | None,
    yes: bool,
    fresh: str | None,
    top: JobConfig,
) -> PipelineResult:
    from orchestrator.compose.load import to_dict
    from orchestrator.launch.failures import RunFailed
    from orchestrator.launch.run import hand_over, launch

    fresh_from = names.index(fresh) if fresh is not None else len(names)
    book = _Book.open(top, run_name)
    records = book.records
    reason, message = StopReason.COMPLETED, "every stage finished"
    before: tuple[str, str] | None = None  # (stage, run folder) of the stage launched last
    for i, st in enumerate(stages):
        if only is not None and st.name != only:
            continue
        stage_over, digests = stage_inputs(st, records)
        spent = sum(r.usd for n, r in records.items() if n != st.name)
        cap = stage_budget(top.budget.max_usd, stages, i, spent)
        if cap is not None:
            stage_over.append(f"budget.max_usd={cap:.6g}")
        cfg = compose(job, scale, overrides + stage_over)
        as_dict = to_dict(cfg)
        digest = stage_identity(as_dict, digests)
        ident = {**identity_config(as_dict), **{f"input {k}": v for k, v in digests.items()}}
        record = records.get(st.name)
        action, why = stage_decision(record, digest, i >= fresh_from)
        if action == "skip":
            print(f"stage {st.name}: {why}; skipped")
            continue
        if action == "refuse":
            assert record is not None
            raise ConfigError(refusal(st.name, run_name, why, record, ident))
        generation = (record.generation if record else 0) + (
            1 if record is not None and i >= fresh_from else 0
        )
        stage_run = f"{run_name}-{st.name}" + (f"-g{generation}" if generation else "")
        stop = _boundary_stop(st, records, book.uri, cfg, cap, yes)
        if stop is not None:
            reason, message = stop
            break
        # started: a relaunch with another config is refused from here on
        records[st.name] = started(record, digest, stage_run, ident, generation)
        book.save()
        print(f"stage {st.name} ({i + 1}/{len(stages)})" + (f", budget ${cap:.4f}" if cap else ""))
        try:
            res = launch(job, scale, overrides + stage_over, run_name=stage_run,
                         yes=True, parent_run_id=book.parent)  # fmt: skip
        except BudgetRefusal as e:  # its cap cannot pay its start-up: stop at the boundary
            reason, message = StopReason.BUDGET, f"stage {st.name!r}: {e}"
            break
        except RunFailed as e:  # the stage's own summary says what and how to continue
            book.fail(f"stage {st.name!r} failed")
            e.run = run_name  # continuing the pipeline continues this stage
            raise
        records[st.name] = _finished_record(res, digest, ident, generation)
        if before is not None:  # the nodes it left up ran this stage: billed here, not there
            usd = hand_over(job, before[1], res.run_dir)
            if usd is not None:
                records[before[0]].usd = usd
                print(f"stage {before[0]}: the nodes it left up ran stage {st.name}; its bill "
                      f"is now ${usd:.6f}")  # fmt: skip
        before = (st.name, res.run_dir)
        book.save()
        if res.stop_reason != StopReason.COMPLETED:
            reason = StopReason(res.stop_reason)
            message = f"stage {st.name!r} stopped: {res.stop_reason}"
            break
    if reason == StopReason.COMPLETED:
        message = completion_message(names, only, records)
    return book.finish(job, run_name, reason, message)


def _preflight_stages(
    job: str, scale: str | None, overrides: list[str], names: list[str]
) -> list[JobConfig]:
    """Every stage's launcher checks before the first stage spends anything (a later stage's
    judge key missing is found now, not after the training stages were paid for); the stages'
    configs as composed without their inputs."""
    from orchestrator.launch.run import _launcher_hooks

    configs = []
    for name in names:
        cfg = compose(job, scale, [*overrides, f"stage={name}"])
        configs.append(cfg)
        hooks = _launcher_hooks(cfg)
        if hooks is not None and hasattr(hooks, "preflight"):
            try:
                hooks.preflight(cfg)
            except ConfigError as e:
                raise ConfigError(f"stage {name!r}: {e}") from None
    return configs


def _check_stage_args(job: str, names: list[str], only: str | None, fresh: str | None) -> list[str]:
    """The stage names, after refusing a `stage=` or `fresh=` that names none of them."""
    if not names:
        raise ConfigError(f"job {job!r} has no stages: launch it with make launch job={job}")
    if only is not None and only not in names:
        raise ConfigError(f"stage={only!r}: the job's stages are {names}")
    if fresh is not None and fresh not in names:
        raise ConfigError(f"fresh={fresh!r}: the job's stages are {names}")
    return names


@dataclass
class _Book:
    """The pipeline's record: its stages' records in the run store (pipeline.json) and its
    parent MLflow run, which each stage's run nests under."""

    store: Any
    uri: str
    parent: str
    records: dict[str, StageRecord]

    @classmethod
    def open(cls, top, run_name: str) -> _Book:
        from orchestrator.tracking import runs as mlruns

        store = run_store(storage_resolve.resolve(top, run_name, os.environ))
        state = json.loads(store.read_text(PIPELINE) or "{}")
        records = {k: StageRecord(**v) for k, v in state.get("stages", {}).items()}
        uri = mlruns.tracking_uri()
        parent = state.get("mlflow_run_id") or mlruns.start_or_continue(
            uri, top.tracking.experiment or top.job, run_name, None,
            {"job": top.job, "scale": top.scale, "kind": "pipeline"},
        )  # fmt: skip
        book = cls(store, uri, parent, records)
        book.save()
        return book

    def save(self) -> None:
        state = {
            "mlflow_run_id": self.parent,
            "stages": {k: asdict(v) for k, v in self.records.items()},
        }
        self.store.write_text(PIPELINE, json.dumps(state, indent=1))

    def fail(self, message: str) -> None:
        from orchestrator.tracking import runs as mlruns

        mlruns.finish(self.uri, self.parent, {"stop_reason": str(StopReason.FAILED),
                                              "pipeline_message": message}, "FAILED")  # fmt: skip

    def finish(self, job: str, run_name: str, reason: StopReason, message: str) -> PipelineResult:
        """Close the parent MLflow run with the bill per stage, print the outcome."""
        from orchestrator.tracking import runs as mlruns

        total = sum(r.usd for r in self.records.values())
        c = mlruns.client(self.uri)
        for name, r in self.records.items():
            c.log_metric(self.parent, f"pipeline/{name}/usd", r.usd)
        mlruns.finish(self.uri, self.parent, {"stop_reason": str(reason),
                                              "pipeline_bill_usd": f"{total:.6f}",
                                              "pipeline_message": message},
                      "FINISHED" if reason.ok else "FAILED")  # fmt: skip
        print(f"pipeline {run_name} ({job}): {reason}: {message}; ${total:.6f} in total")
        return PipelineResult(job, run_name, str(reason), message, total, self.parent,
                              {k: asdict(v) for k, v in self.records.items()})  # fmt: skip


def _boundary_stop(
    st: Stage, records: dict[str, StageRecord], uri: str, cfg, cap: float | None, yes: bool
) -> tuple[StopReason, str] | None:
    """Why the pipeline stops before stage `st` (its gate fails, or its projection exceeds
    what is left of the budget without --yes), or None to run it."""
    from orchestrator.cost.estimator import project

    if st.gate is not None:
        value = _metric(uri, records.get(st.gate.stage), st.gate.metric)
        if not gate_passes(st.gate, value):
            return StopReason.GATE, (
                f"gate before stage {st.name!r}: {st.gate.stage}'s {st.gate.metric} = "
                f"{value} (needs min={st.gate.min}, max={st.gate.max})"
            )
    if cap is not None:
        projected = project(cfg).usd
        if projected > cap and not yes:
            return StopReason.BUDGET, (
                f"stage {st.name!r} projects ${projected:.4f}, more than the ${cap:.4f} "
                "left for it (budget.max_usd and budget_share); stopped at its boundary"
            )
    return None


def _finished_record(res, digest: str, ident: dict[str, Any], generation: int) -> StageRecord:
    """What a stage that ran leaves for the next: its outcome, bill, export and the export's
    digest (the next stage verifies its input against it)."""
    from orchestrator.launch.mlflow_run import export_digest
    from orchestrator.storage.durable import open_durable

    exported = store_exists(res.run_dir, f"{EXPORT}/config.json")
    return StageRecord(
        "done" if res.stop_reason == StopReason.COMPLETED else "stopped",
        digest, res.run, res.mlflow_run_id, str(res.stop_reason), res.usd_total,
        f"{res.run_dir}/{EXPORT}" if exported else None,
        export_digest(open_durable(res.run_dir)) if exported else None, ident, generation,
    )  # fmt: skip


def completion_message(stages: list[str], only: str | None, records: dict[str, Any]) -> str:
    """Pure: what a pipeline launch that stopped at no gate, cap or failure says: every stage
    finished, or (with `stage=`) which one ran and which stages are still to run."""
    if only is None:
        return "every stage finished"
    pending = [s for s in stages if s != only and getattr(records.get(s), "status", None) != "done"]
    return f"stage {only} finished" + (
        f"; stages {', '.join(pending)} not run" if pending else "; every stage is done"
    )


def stage_inputs(st: Stage, records: dict[str, StageRecord]) -> tuple[list[str], dict[str, str]]:
    """The overrides that point a stage at its inputs' exports, and those exports' digests
    (each checked: `verified_input`).

    Raises:
        ConfigError: an input stage has no finished export yet.
    """
    over, digests = [f"stage={st.name}"], {}
    for key, src_name in st.inputs:
        src = records.get(src_name)
        if src is None or src.export_url is None or src.status != "done":
            raise ConfigError(
                f"stage {st.name!r} needs stage {src_name!r}'s export, which does not exist "
                f"yet: run the pipeline (or stage={src_name}) first"
            )
        digests[key] = verified_input(src_name, src)
        over.append(f"{key}={src.export_url}")
    return over, digests


def refusal(stage: str, run: str, why: str, record: StageRecord, ident: dict[str, Any]) -> str:
    """Pure: why a changed stage is not run, naming what changed and how to start over."""
    keys = changed_keys(record.config, ident) if record.config else ["(not recorded)"]
    return (
        f"stage {stage!r} of run {run!r}: {why} ({', '.join(keys[:12])}"
        f"{', ...' if len(keys) > 12 else ''}); it is not resumed under another config. "
        f"Start it (and the stages after it) over with fresh={stage}, or use a new "
        "run=<name>; to run longer, change only train.max_steps"
    )


def started(
    record: StageRecord | None, identity: str, run: str, ident: dict[str, Any], generation: int
) -> StageRecord:
    """Pure: the record of a stage about to run (a new one for a new generation)."""
    if record is None or record.generation != generation:
        return StageRecord("started", identity, run, "", "", 0.0, None, None, ident, generation)
    record.status, record.config_hash, record.config = "started", identity, ident
    return record


def verified_input(name: str, record: StageRecord) -> str:
    """The digest of stage `name`'s export as found now, checked against the one recorded when
    the stage finished, and (a folder) every file against the export's manifest.

    Raises:
        ConfigError: the export is gone, was replaced, or a file does not match, naming the
            path and the mismatch.
    """
    from orchestrator.checkpoint.exports import BadModel, verify_model_folder
    from orchestrator.training.bases import model_identity

    url = str(record.export_url)
    try:
        found = model_identity(url)
        if not is_object_store(url):  # a folder: read it all now (workers fetching from
            verify_model_folder(Path(url))  # s3 verify every file as they download it)
    except (BadModel, ConfigError, OSError, ValueError) as e:
        raise ConfigError(f"stage {name!r}'s export {url}: {e}") from None
    if record.export_digest is not None and found != record.export_digest:
        raise ConfigError(
            f"stage {name!r}'s export {url} is not what the stage made: its digest is {found}, "
            f"the stage recorded {record.export_digest}; start the stage over (fresh={name})"
        )
    return found


def store_exists(run_url: str, rel: str) -> bool:
    from orchestrator.storage.durable import open_durable

    return open_durable(run_url).exists(rel)


def _metric(uri: str, record: StageRecord | None, metric: str) -> float | None:
    """The latest value of `metric` in a stage's MLflow run (None: no such stage or metric)."""
    if record is None:
        return None
    from orchestrator.tracking import runs as mlruns

    return mlruns.client(uri).get_run(record.mlflow_run_id).data.metrics.get(metric)
