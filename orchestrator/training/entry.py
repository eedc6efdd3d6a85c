"""The Ray Train entry point every worker runs: the trainer, around the job's objective."""

from __future__ import annotations

import os
from typing import Any

from orchestrator.compose.load import from_dict
from orchestrator.objectives import spec as objective_spec
from orchestrator.storage.layout import RunContext


def train_fn(loop_config: dict[str, Any]) -> None:
    """Build the trainer around the job's objective (its spec names it) and run it."""
    from orchestrator.tracking.runs import set_fail_fast_http
    from orchestrator.training.loop import Trainer  # torch: on workers only

    set_fail_fast_http()
    os.environ.update(loop_config.get("env", {}))  # the driver's S3/MLflow settings (run.py)
    cfg = from_dict(loop_config["config"])
    ctx = RunContext.from_dict(loop_config["context"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    Trainer(cfg, ctx, objective_spec(cfg.train.objective).recipe_class()).run()
