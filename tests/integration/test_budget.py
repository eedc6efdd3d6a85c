"""The hard budget cap: a run stops cleanly before it overspends, and a higher cap resumes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.checkpoint.manifest import latest_complete

pytestmark = pytest.mark.integration

# $5.40/h = 0.15 cent per second: the cap of $0.20 is 133 s of cluster time, of which start-up
# (~20 s here, over a minute on a loaded machine) and the 20 s reserved for stopping leave at
# least half a minute of steps (~0.2 s each): hit mid-run, long before 5000 steps are done.
PRICE_PER_HOUR = 5.4
CAP = 0.2
PRICE = [
    f"cost.instances.local-2vcpu.on_demand_per_hour_usd={PRICE_PER_HOUR}",
    "checkpoint.every_steps=1000",
    "export.enabled=false",
]


def test_budget_cap_stops_cleanly_and_a_higher_cap_resumes(tmp_path, monkeypatch):
    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    res = launch(
        "vicuna",
        "local",
        PRICE + ["train.max_steps=5000", f"budget.max_usd={CAP}"],
        run_name="capped",
        yes=True,
    )
    assert res.stop_reason == "budget" and 0 < res.step < 5000
    bill = json.loads((Path(res.run_dir) / "bill.json").read_text())
    result = json.loads((Path(res.run_dir) / "result.json").read_text())
    one_step_usd = max(result["step_s"]) / 3600 * PRICE_PER_HOUR
    assert res.usd_total <= CAP + one_step_usd  # never past the cap by more than a step
    found = latest_complete(Path(res.checkpoint_dir))
    assert found is not None and found[1]["step"] == res.step  # a complete checkpoint at the stop
    client = MlflowClient(res.tracking_uri)
    assert client.get_run(res.mlflow_run_id).data.tags["stop_reason"] == "budget"
    assert bill["stop_reason"] == "budget"

    more = launch(
        "vicuna",
        "local",
        PRICE + [f"train.max_steps={res.step + 5}", "budget.max_usd=5"],
        run_name="capped",
        yes=True,
    )
    assert more.stop_reason == "completed" and more.step == res.step + 5 and more.attempt == 2
    run = client.get_run(res.mlflow_run_id)
    assert run.data.tags["stop_reason"] == "completed"
    assert float(run.data.tags["bill_usd"]) > res.usd_total
    history = client.get_metric_history(res.mlflow_run_id, "cost/usd_projected_total")
    assert history and all(m.value > 0 for m in history)
