"""The hard budget cap: a run stops cleanly before it overspends, and a higher cap resumes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.checkpoint.manifest import latest_complete

pytestmark = pytest.mark.integration

# $36/h = 1 cent per second: the cap of $0.60 is hit about 60 s into the launch, i.e. after
# start-up (~25 s here) and well before 2000 steps are done.
PRICE = [
    "cost.instances.local-2vcpu.on_demand_per_hour_usd=36.0",
    "checkpoint.every_steps=1000",
    "export.enabled=false",
]


def test_budget_cap_stops_cleanly_and_a_higher_cap_resumes(tmp_path, monkeypatch):
    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    res = launch(
        "vicuna",
        "local",
        PRICE + ["train.max_steps=2000", "budget.max_usd=0.6"],
        run_name="capped",
        yes=True,
    )
    assert res.stop_reason == "budget" and 0 < res.step < 2000
    step_cost = json.loads((Path(res.run_dir) / "bill.json").read_text())
    result = json.loads((Path(res.run_dir) / "result.json").read_text())
    one_step_usd = max(result["step_s"]) / 3600 * 36.0
    assert res.usd_total <= 0.6 + one_step_usd  # never past the cap by more than a step
    found = latest_complete(Path(res.checkpoint_dir))
    assert found is not None and found[1]["step"] == res.step  # a complete checkpoint at the stop
    run = MlflowClient(res.tracking_uri).get_run(res.mlflow_run_id)
    assert run.data.tags["stop_reason"] == "budget"
    assert step_cost["stop_reason"] == "budget"

    more = launch(
        "vicuna",
        "local",
        PRICE + [f"train.max_steps={res.step + 5}", "budget.max_usd=5"],
        run_name="capped",
        yes=True,
    )
    assert more.stop_reason == "completed" and more.step == res.step + 5 and more.attempt == 2
    run = MlflowClient(res.tracking_uri).get_run(res.mlflow_run_id)
    assert (
        run.data.tags["stop_reason"] == "completed"
        and float(run.data.tags["bill_usd"]) > res.usd_total
    )
    history = MlflowClient(res.tracking_uri).get_metric_history(
        res.mlflow_run_id, "cost/usd_projected_total"
    )
    assert history and all(m.value > 0 for m in history)
