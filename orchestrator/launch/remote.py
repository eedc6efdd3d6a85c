"""The budget decision of a launch submitted to a cluster, made where the user is."""

from __future__ import annotations

import os

from orchestrator.config.schema import ConfigError, JobConfig
from orchestrator.launch.checks import confirm_usd


def remote_consent(
    job: str, scale: str | None, overrides: list[str], stage: str | None, yes: bool
) -> bool:
    """A launch submitted to a cluster decides its budget here, where the user is: the
    projection of what will run (the one stage, or the whole pipeline, or the job) against
    its cap. Returns whether the submission carries `--yes` (given, or answered at the
    prompt); raises ConfigError before anything is submitted when it is refused."""
    from orchestrator.compose.load import compose, job_stages
    from orchestrator.cost.estimator import project

    if job_stages(job, scale):
        from orchestrator.launch.pipeline import project_pipeline, stages_of

        stages = [s.name for s in stages_of(job, scale)]
        if stage is not None and stage not in stages:
            raise ConfigError(f"stage={stage!r}: the job's stages are {stages}")
        top = compose(job, scale, [*overrides, f"stage={stage or stages[0]}"])
        pp = project_pipeline(job, scale, overrides)
        usd = pp["stages"][stage]["usd"] if stage else pp["usd"]
        what = f"bill of stage {stage}" if stage else "bill of the pipeline"
        return confirm_usd(top.budget.max_usd, usd, yes, what) or yes
    if stage is not None:
        raise ConfigError(f"job {job!r} has no stages (stage={stage})")
    cfg = compose(job, scale, overrides)
    return confirm_usd(cfg.budget.max_usd, project(cfg).usd, yes) or yes


def remote_startup_check(cfg: JobConfig, run_name: str | None) -> None:
    """Before a job is submitted to a cluster: refuse it, here, when its cap cannot pay its
    start-up and tear-down on top of what the run has spent (read from the run's store when
    this machine can reach it; the launcher on the head checks again, before any worker
    starts, in any case).

    Raises:
        BudgetRefusal: naming what is spent, what is left and what starting costs.
    """
    from orchestrator.cost.estimator import project
    from orchestrator.cost.ledger import Ledger
    from orchestrator.launch.run import check_startup_budget
    from orchestrator.storage import resolve as storage_resolve
    from orchestrator.storage.layout import run_store

    if cfg.budget.max_usd is None:
        return
    store, continued = None, False
    if run_name:
        try:
            store = run_store(storage_resolve.resolve(cfg, run_name, os.environ))
            continued = bool(Ledger(store).attempts)  # it has paid for a launch before
        except Exception as e:  # noqa: BLE001 - not reachable from here: the head checks
            print(f"note: the run's spend is checked on the cluster ({type(e).__name__})")
            store, continued = None, False
    check_startup_budget(cfg, store, project(cfg), continued)
