"""The budget decision of a launch submitted to a cluster, made where the user is."""

from __future__ import annotations

from orchestrator.config.schema import ConfigError
from orchestrator.launch.checks import confirm_usd


def remote_consent(
    job: str, scale: str | None, overrides: list[str], stage: str | None, yes: bool
) -> bool:
    """A launch submitted to a cluster decides its budget here, where the user is: the
    projection of what will run (the one stage, or the whole pipeline, or the job) against
    its cap. Returns whether the submission carries `--yes` (given, or answered at the
    prompt); raises ConfigError before anything is submitted when it is refused."""
    from orchestrator.config.load import compose, job_stages
    from orchestrator.cost.estimator import project

    if job_stages(job, scale):
        from orchestrator.launch.pipeline import project_pipeline, stages_of

        stages = [s.name for s in stages_of(job, scale)]
        if stage is not None and stage not in stages:
            raise ConfigError(f"stage={stage!r}: the job's stages are {stages}")
        top = compose(job, scale, [*overrides, f"stage={stage or stages[0]}"])
        pp = project_pipeline(job, scale, overrides)
        usd = pp["stages"][stage]["usd"] if stage else pp["total"]["usd"]
        what = f"bill of stage {stage}" if stage else "bill of the pipeline"
        return confirm_usd(top.budget.max_usd, usd, yes, what) or yes
    if stage is not None:
        raise ConfigError(f"job {job!r} has no stages (stage={stage})")
    cfg = compose(job, scale, overrides)
    return confirm_usd(cfg.budget.max_usd, project(cfg).usd, yes) or yes
