"""`make eval job=X run=R` (or `model=...`): evaluate an existing export without training.

The evaluation is a launch of the job with `train.objective=eval` (docs/evaluation.md), its
model the export of run R of job X in the job's durable store (or `model=`: a Hugging Face
folder, an s3:// export, a model id), under its own run name (`R-eval` unless `run_as=`).

A pipeline job is evaluated with the configuration of its eval stage when it has one (its
question set, judge, base and baseline), else of its first stage (its data and template); R
may name the pipeline run: the export evaluated is then that of its last stage before the
evaluation that has one (R-sft for koala), and the run is named `R-reeval` (R-eval is the
pipeline's own eval stage).
"""

from __future__ import annotations

import os

from orchestrator.errors import ConfigError
from orchestrator.names import check_name

EVAL_OVERRIDES = ("train.objective=eval", "train.strategy=ddp", "train.method=full",
                  "model.load_8bit=false")  # fmt: skip
"""What makes any recipe's config an evaluation: nothing trained, the whole model on every
worker (it generates on its own), no int8 base (an export is a merged model)."""


def export_of(job: str, scale: str | None, run: str, overrides: list[str]) -> str:
    """The durable URL of run `run`'s export of job `job` (for a pipeline run, of its last
    stage with one, the evaluation excepted).

    Raises:
        ConfigError: the run has no export, or only a LoRA adapter (not loadable alone yet).
    """
    from orchestrator.compose.load import job_configs
    from orchestrator.storage import resolve as storage_resolve
    from orchestrator.storage.layout import EXPORT, run_store

    check_name("run", run)
    configs = job_configs(job, scale, overrides)
    cfg = next(iter(configs.values()))
    trained = [s for s, c in reversed(configs.items()) if s and c.train.objective != "eval"]
    for name in [run, *(f"{run}-{s}" for s in trained)]:
        store = run_store(storage_resolve.resolve(cfg, name, os.environ))
        if store.exists(f"{EXPORT}/config.json"):
            return f"{store.url}/{EXPORT}"
        if store.exists(f"{EXPORT}/adapter/adapter_config.json"):
            raise ConfigError(
                f"run {name!r} of {job!r} exported a LoRA adapter ({store.url}/{EXPORT}/"
                "adapter), which is not loadable without its base yet: export it merged "
                "(export.merge_lora=true) or pass model=<a merged folder>"
            )
    store = run_store(storage_resolve.resolve(cfg, run, os.environ))
    raise ConfigError(
        f"run {run!r} of {job!r} has no export at {store.url}/{EXPORT} (did it finish? "
        "`make bills` lists the runs)"
    )


def eval_launch_args(
    job: str,
    scale: str | None,
    run: str | None,
    model: str | None,
    overrides: list[str],
    run_as: str | None = None,
) -> tuple[list[str], str]:
    """(overrides, run name) of the evaluation launch."""
    if (run is None) == (model is None):
        raise ConfigError("make eval: give run=<a run of the job> or model=<folder | s3:// | id>")
    from orchestrator.compose.load import job_configs

    configs = job_configs(job, scale, overrides)
    evals = [s for s, c in configs.items() if s and c.train.objective == "eval"]
    stage = evals[0] if evals else next(iter(configs))
    first = [f"stage={stage}"] if stage else []
    url = model if model is not None else export_of(job, scale, run or "", overrides)
    name = run_as or f"{run or 'model'}-" + ("reeval" if "eval" in configs else "eval")
    check_name("run", name)
    return [*first, *EVAL_OVERRIDES, f"model.pretrained={url}", *overrides], name


def cmd_eval(job: str, scale: str | None, run: str | None, model: str | None,
             overrides: list[str], run_as: str | None, yes: bool) -> int:  # fmt: skip
    from orchestrator.launch.run import launch
    from orchestrator.storage.layout import StopReason

    over, name = eval_launch_args(job, scale, run, model, overrides, run_as)
    res = launch(job, scale, over, name, yes=yes)
    return 0 if StopReason(res.stop_reason).ok else 1
