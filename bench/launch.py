"""`launch vicuna` (local) from the call to the first optimizer step, and in total: how much of a
short run is Ray and worker start-up.

    .venv/bin/python bench/run.py launch
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench._common import scratch_cwd


def run(steps: int = 20) -> dict:
    from orchestrator.launch.run import launch

    with scratch_cwd():
        t0 = time.time()
        res = launch(
            "vicuna",
            "local",
            [f"train.max_steps={steps}", "checkpoint.every_steps=1000"],
            run_name="bench",
        )
        events = [
            json.loads(x) for x in (Path(res.run_dir) / "events.jsonl").read_text().splitlines()
        ]
    first = events[0]["time"] - t0
    train_s = events[-1]["time"] - events[0]["time"]
    out = {
        "steps": steps,
        "launch_to_first_step_s": round(first, 2),
        "wall_s": round(res.wall_s, 2),
        "steps_2_to_last_s": round(train_s, 2),
        "share_of_wall_before_first_step": round(first / res.wall_s, 3),
    }
    return out
