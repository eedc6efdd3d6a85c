"""Every seed recipe runs at local scale through the real launcher (shared Ray cluster): a few
steps with checkpoints, an export, then the resume test every recipe has: the last checkpoint
is deleted and a relaunch redoes exactly the steps after the one before, with the same losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.checkpoint.manifest import step_dirname

pytestmark = pytest.mark.integration

# vicuna has its own, longer tests (test_launch_vicuna.py, test_chaos.py).
RECIPES = ["dolly"]
OVERRIDES = ["train.max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=5"]


def losses(run_dir: Path, attempt: int) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["attempt"] == attempt}


@pytest.mark.parametrize("job", RECIPES)
def test_recipe_trains_exports_and_resumes(job, launch_workdir):
    from transformers import AutoModelForCausalLM

    from orchestrator.launch.run import launch

    res = launch(job, "local", OVERRIDES, run_name="it")
    assert res.stop_reason == "completed" and res.step == 4
    run_dir = Path(res.run_dir)
    first = losses(run_dir, 1)
    assert sorted(first) == [1, 2, 3, 4] and first[4] < first[1]
    AutoModelForCausalLM.from_pretrained(run_dir / "export")  # loads as a HF model
    assert len(json.loads((run_dir / "export" / "samples.json").read_text())) == 5

    shutil.rmtree(Path(res.checkpoint_dir) / step_dirname(4))
    again = launch(job, "local", OVERRIDES, run_name="it")
    assert again.attempt == 2 and again.step == 4
    second = losses(run_dir, 2)
    assert sorted(second) == [3, 4]
    for step, loss in second.items():
        assert loss == pytest.approx(first[step], abs=1e-6), (job, step)
