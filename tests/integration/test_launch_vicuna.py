"""The vertical slice for real: local Ray, 2 gloo workers, FSDP2, DCP checkpoints, MLflow (sqlite).

One run is launched, checked, damaged (last checkpoint deleted, the one before corrupted) and
launched again under the same name: it must resume from the newest *complete* checkpoint, run
exactly the missing steps with the same losses, and continue the same MLflow run without logging
any step twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.checkpoint.manifest import list_checkpoints, step_dirname

pytestmark = pytest.mark.integration

OVERRIDES = ["train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep_last=5"]
STEP_METRICS = [
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "cost/usd_total",
    "cost/usd_per_hour",
    "cost/usd_per_1m_tokens",
]


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("launch")


@pytest.fixture(scope="module")
def first_launch(workdir):
    import os

    from orchestrator.launch.run import launch

    old = Path.cwd()
    os.chdir(workdir)  # runs/ and mlflow.db go here
    try:
        yield launch("vicuna", "local", OVERRIDES, run_name="it")
    finally:
        os.chdir(old)


def test_local_run_trains_logs_and_checkpoints(first_launch):
    res = first_launch
    assert (res.step, res.total_steps, res.stop_reason) == (6, 6, "completed")
    run_dir = Path(res.run_dir)

    client = MlflowClient(res.tracking_uri)
    run = client.get_run(res.mlflow_run_id)
    for key in STEP_METRICS:
        steps = [m.step for m in client.get_metric_history(res.mlflow_run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6], key
    losses = [
        m.value
        for m in sorted(client.get_metric_history(res.mlflow_run_id, "loss"), key=lambda m: m.step)
    ]
    assert losses[-1] < losses[0]  # it learns
    assert run.data.metrics["eval_loss"] > 0
    costs = sorted(
        client.get_metric_history(res.mlflow_run_id, "cost/usd_total"), key=lambda m: m.step
    )
    assert all(a.value < b.value for a, b in zip(costs, costs[1:]))  # dollars accrue
    assert run.data.params["train.strategy"] == "fsdp" and run.data.params["job"] == "vicuna"
    assert run.data.tags["stop_reason"] == "completed" and float(run.data.tags["bill_usd"]) > 0
    assert run.info.status == "FINISHED"
    assert any(k.startswith("system/") for k in run.data.metrics)  # psutil system metrics
    assert 0 < run.data.metrics["padding_efficiency"] <= 1 and 0 < run.data.metrics["mfu"] < 1
    artifacts = [a.path for a in client.list_artifacts(res.mlflow_run_id, "config")]
    assert "config/resolved_attempt1.yaml" in artifacts

    assert [s for s, _ in list_checkpoints(Path(res.checkpoint_dir))] == [6, 4, 2]
    manifest = json.loads(
        (Path(res.checkpoint_dir) / step_dirname(6) / "manifest.json").read_text()
    )
    assert manifest["step"] == 6 and manifest["mlflow_run_id"] == res.mlflow_run_id
    assert any(name.endswith(".distcp") for name in manifest["files"])
    assert [e["step"] for e in events(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_relaunch_resumes_from_latest_complete_checkpoint(first_launch, workdir, monkeypatch):
    from orchestrator.launch.run import launch

    ckpts = Path(first_launch.checkpoint_dir)
    shutil.rmtree(ckpts / step_dirname(6))  # the last checkpoint is gone
    shard = next((ckpts / step_dirname(4)).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-16])  # and the one before is truncated

    monkeypatch.chdir(workdir)
    res = launch("vicuna", "local", OVERRIDES, run_name="it")
    assert (res.step, res.stop_reason, res.attempt) == (6, "completed", 2)
    assert res.mlflow_run_id == first_launch.mlflow_run_id  # the same MLflow run continues

    ev = events(Path(res.run_dir))
    first = {e["step"]: e["loss"] for e in ev if e["attempt"] == 1}
    second = {e["step"]: e["loss"] for e in ev if e["attempt"] == 2}
    assert sorted(second) == [3, 4, 5, 6]  # exactly the steps after the complete checkpoint (2)
    for step, loss in second.items():
        assert loss == pytest.approx(first[step], abs=1e-6), step  # same data order, same math

    client = MlflowClient(res.tracking_uri)
    for key in STEP_METRICS:
        steps = [m.step for m in client.get_metric_history(res.mlflow_run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6], key  # no step logged twice
    assert res.usd_total > first_launch.usd_total
    assert "config/resolved_attempt2.yaml" in [
        a.path for a in client.list_artifacts(res.mlflow_run_id, "config")
    ]
