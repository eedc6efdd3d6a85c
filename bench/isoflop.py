"""IsoFLOP mini-sweep (slow, not in CI): model sizes at the same training compute on this machine.

The local `cerebras_gpt` job's FLOP budget is spent by models of several sizes: the planner's
20-tokens-per-parameter choice and sizes around it (its `plan.tokens_per_param` moved from 5 to
80, so N = sqrt(C / 6r) spans 4x). Every run is a real launch of the job (2 Ray CPU workers);
the planner gives each its shape, batch, LR and warmup, exactly as for the job itself. Reported:
final eval loss (held-out documents), training FLOPs, passes over the corpus, wall time; and
where the 20 tokens/param choice lands against the best size.

    .venv/bin/python bench/run.py isoflop
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RATIOS = (5.0, 10.0, 20.0, 40.0, 80.0)


def sweep(ratios: tuple[float, ...] = RATIOS, batch_sequences: int | None = None) -> dict:
    from orchestrator.compose.load import compose
    from orchestrator.launch.run import launch
    from orchestrator.training.model import count_params

    budget = compose("cerebras_gpt", "local").plan.budget_flops
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        old = Path.cwd()
        os.chdir(d)
        try:
            for r in ratios:
                overrides = [f"plan.tokens_per_param={r}", "checkpoint.every_steps=100000"]
                if batch_sequences is not None:
                    overrides.append(f"plan.batch_sequences={batch_sequences}")
                cfg = compose("cerebras_gpt", "local", overrides)
                res = launch("cerebras_gpt", "local", overrides, run_name=f"r{r:g}")
                result = json.loads((Path(res.run_dir) / "result.json").read_text())
                n = count_params(cfg.model, 2048)
                runs[f"{r:g} tok/param"] = {
                    "n_params": n,
                    "shape": f"{cfg.model.num_layers} x {cfg.model.hidden_size}",
                    "tokens": result["tokens"],
                    "flops_6ND": f"{6 * n * result['tokens']:.3g}",
                    "batch_seqs": cfg.train.global_batch_size,
                    "peak_lr": cfg.optim.lr,
                    "eval_loss": round(result["eval_loss"], 4),
                    "corpus_passes": round(result["pretrain/data_epochs"], 2),
                    "wall_s": round(res.wall_s, 1),
                }
        finally:
            os.chdir(old)
    best = min(runs, key=lambda k: runs[k]["eval_loss"])
    chosen = runs["20 tok/param"]
    return {
        "budget_flops": budget,
        "batch": "planner (Cerebras table)"
        if batch_sequences is None
        else f"{batch_sequences} sequences",
        "modes": runs,
        "best": best,
        "planner_choice": "20 tok/param",
        "planner_eval_loss_minus_best": round(chosen["eval_loss"] - runs[best]["eval_loss"], 4),
    }


def run() -> dict:
    """The sweep with the planner's batch for every size (bench/isoflop_fixed_batch.py holds
    the batch fixed, so that only N and D change)."""
    return sweep()
