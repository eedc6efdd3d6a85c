"""On local Ray, kill -> first resumed step, and steps lost, without and with a spot notice.

.venv/bin/python bench/run.py recovery
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench._common import local_ray


def run(steps: int = 40, every: int = 10) -> dict:
    """Preemptions on local Ray (2 workers, the local vicuna): a worker SIGKILLed 15 steps into
    a try (no warning), then SIGTERM (a spot notice) 8 steps into the next. Per interruption:
    seconds from the signal to the first resumed step completing, and steps lost (redone)."""
    import signal

    import ray

    from orchestrator.launch.run import launch
    from tests.faults import Chaos, rows_after

    with tempfile.TemporaryDirectory() as d:
        old = Path.cwd()
        os.chdir(d)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
        local_ray()
        chaos = Chaos(Path(d) / "runs/vicuna/chaos", [(signal.SIGKILL, 15), (signal.SIGTERM, 8)])
        chaos.start()
        try:
            res = launch(
                "vicuna",
                "local",
                [f"train.max_steps={steps}", f"checkpoint.every_steps={every}"],
                run_name="chaos",
            )
        finally:
            chaos.done.set()
            ray.shutdown()
            os.chdir(old)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        rows = rows_after(Path(res.run_dir) / "events.jsonl", 0)
        failures = [json.loads(x) for x in (Path(res.run_dir) / "failures.jsonl").open()]
        timeline = rows_after(Path(res.run_dir) / "timeline.jsonl", 0)
    assert res.stop_reason == "completed" and len(chaos.log) == 2, chaos.log
    out: dict = {"steps": steps, "checkpoint_every_steps": every, "interruptions": []}
    for hit, failure in zip(chaos.log, failures):
        done = max(r["step"] for r in rows if r["time"] < failure["time"])
        first = next(r for r in rows if r["time"] > failure["time"])
        setup = next(r for r in timeline if r["kind"] == "setup" and r["end"] > failure["time"])
        out["interruptions"].append(
            {
                "signal": hit["signal"],
                "at_step": hit["at_step"],
                "last_step_done": done,
                "resumed_at_step": first["step"],
                "steps_lost": done - (first["step"] - 1),
                "recovery_s": round(first["time"] - hit["time"], 2),
                "of_which_detect_s": round(failure["time"] - hit["time"], 2),
                "of_which_new_workers_s": round(setup["start"] - failure["time"], 2),
                "of_which_setup_and_load_s": round(setup["end"] - setup["start"], 2),
                "of_which_first_step_s": round(first["time"] - setup["end"], 2),
            }
        )
    step_s = [b["time"] - a["time"] for a, b in zip(rows, rows[1:]) if b["step"] == a["step"] + 1]
    out["median_step_s"] = round(sorted(step_s)[len(step_s) // 2], 3)
    return out
