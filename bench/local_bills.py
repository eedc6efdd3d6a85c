"""Projected vs measured wall time and bill of every recipe's local scale: the CPU kernel
constants fitted on half the recipes, checked on the other half.

    .venv/bin/python bench/run.py local_bills
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from bench._common import scratch_cwd


def _sft_recipes() -> list[str]:
    """The single-stage fine-tuning recipes of jobs/ (not pretraining, not RL), by name."""
    from orchestrator.compose.load import compose, job_names, job_stages

    out = []
    for job in job_names():
        if job_stages(job):
            continue
        cfg = compose(job, "local")
        if cfg.train.objective == "sft" and cfg.data.format != "text":
            out.append(job)
    return out


# Alternating by name: the fit and the check halves both hold chat and instruction recipes.
RECIPES = _sft_recipes()
FIT = RECIPES[0::2]
CHECK = RECIPES[1::2]


def run() -> dict:
    """One fresh local run of each recipe (a private Ray cluster each, as `make launch` does);
    then the CPU kernel (e_max, t_half) is fitted on the mean step times of FIT, and CHECK is
    projected with it and compared with what it measured: wall time and dollars."""
    from orchestrator.compose.load import compose
    from orchestrator.cost.calibration import fit_cpu, predicted_step_s, recorded_run
    from orchestrator.cost.estimator import project
    from orchestrator.cost.lengths import Lengths
    from orchestrator.data.prepared import DataManifest
    from orchestrator.launch.run import launch

    measured: dict[str, dict] = {}
    with scratch_cwd(mlflow=True) as d:
        for job in RECIPES:
            t = time.perf_counter()
            res = launch(job, "local", [], run_name=f"bench-{job}", yes=True)
            measured[job] = {
                "wall_s": res.wall_s,
                "usd": res.usd_total,
                "steps": res.step,
                "stop_reason": res.stop_reason,
                "elapsed_s": time.perf_counter() - t,
                "run_dir": res.run_dir,
            }
        runs = {job: recorded_run(Path(m["run_dir"])) for job, m in measured.items()}
        missing = [j for j, r in runs.items() if r is None]
        assert not missing, f"runs without a recorded result: {missing}"
        e_max, t_half = fit_cpu([runs[j] for j in FIT])
        # Fixed time per launch, from the FIT half's bills: before the first step (Ray and the
        # worker group starting) and after the last (eval, export, shutdown), in seconds at the
        # instance's price.
        fixed = {job: _fixed_seconds(Path(measured[job]["run_dir"])) for job in RECIPES}
        startup_s = statistics.median(fixed[j][0] for j in FIT)
        teardown_s = statistics.median(fixed[j][1] for j in FIT)

        rows = {}
        for job in RECIPES:
            cfg = compose(job, "local")
            cfg.cost.cpu_kernel = replace(
                cfg.cost.cpu_kernel, e_max=e_max, t_half=t_half, d_half=0.0
            )
            it = cfg.hardware.instance_type
            cfg.cost.instances[it] = replace(
                cfg.cost.instances[it], startup_s=startup_s, teardown_s=teardown_s
            )
            run_dir = Path(measured[job]["run_dir"])
            meta = json.loads((run_dir / "run.json").read_text())
            manifest = DataManifest.from_json(
                (run_dir.parent.parent / ".data" / meta["data_key"] / "manifest.json").read_text()
            )
            values = tuple(manifest.train_lengths())
            p = project(cfg, vocab_size=manifest.vocab_size,
                        lengths=Lengths(values, len(values), "measured", "prepared"))  # fmt: skip
            m = measured[job]
            rows[job] = {
                "half": "fit" if job in FIT else "check",
                "step_s_measured": round(runs[job].step_s, 4),
                "step_s_projected": round(predicted_step_s(runs[job], e_max, t_half), 4),
                "wall_s_measured": round(m["wall_s"], 1),
                "wall_s_projected": round(p.hours * 3600.0, 1),
                "usd_measured": round(m["usd"], 6),
                "usd_projected": round(p.usd, 6),
                "wall_error": round(p.hours * 3600.0 / m["wall_s"] - 1.0, 3),
                "usd_error": round(p.usd / m["usd"] - 1.0, 3),
                "steps": m["steps"],
                "startup_s_measured": round(fixed[job][0], 1),
                "teardown_s_measured": round(fixed[job][1], 1),
            }
        _ = d
    check = [rows[j] for j in CHECK]
    return {
        "cpu_kernel": {"e_max": round(e_max, 4), "t_half": round(t_half, 1), "d_half": 0.0},
        "local_startup_s": round(startup_s, 1),
        "local_teardown_s": round(teardown_s, 1),
        "fit_on": FIT,
        "checked_on": CHECK,
        "check_worst_wall_error": max(abs(r["wall_error"]) for r in check),
        "check_worst_usd_error": max(abs(r["usd_error"]) for r in check),
        "cpus": os.cpu_count(),
        "recipes": rows,
    }


def _fixed_seconds(run_dir: Path) -> tuple[float, float]:
    """(start-up, tail) seconds of a finished local run, from its bill: dollars of the
    `startup` category, and of `eval_export` + `idle`, at the instance's price."""
    from orchestrator.compose.load import compose

    bill = json.loads((run_dir / "bill.json").read_text())
    cats = bill["by_category"]
    cfg = compose("alpaca", "local")
    per_s = cfg.cost.instances[cfg.hardware.instance_type].on_demand_per_hour_usd / 3600.0
    return cats["startup"] / per_s, (cats["eval_export"] + cats["idle"]) / per_s
