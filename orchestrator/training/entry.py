"""The Ray Train entry point every worker runs: the recipe of the job's objective."""

from __future__ import annotations

import os
from typing import Any

from orchestrator.config.load import from_dict
from orchestrator.rl.recipes import RECIPES
from orchestrator.storage.layout import RunContext


def train_fn(loop_config: dict[str, Any]) -> None:
    """Build the job's recipe (fine-tuning, reward model, DPO, PPO) and run it."""
    from orchestrator.tracking.runs import set_fail_fast_http

    set_fail_fast_http()
    os.environ.update(loop_config.get("env", {}))  # the driver's S3/MLflow settings (run.py)
    cfg = from_dict(loop_config["config"])
    ctx = RunContext.from_dict(loop_config["context"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    RECIPES[cfg.train.objective](cfg, ctx).run()
