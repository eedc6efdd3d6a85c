"""MLflow as users run it: a tracking server (sqlite + S3 artifacts on moto_server), a server
outage in the middle of a run that training never waits on, and the UI in headless Chromium."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.launch.ray_session import free_port
from orchestrator.tracking.server import runs_page_url, start_server, stop_server

pytestmark = pytest.mark.integration

STEP_METRICS = [
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "hfu",
    "padding_efficiency",
    "cost/usd_total",
    "cost/usd_per_hour",
    "cost/usd_wasted",
    "cost/usd_projected_total",
]
STEPS = 60
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, start_moto):
    """moto_server (S3) + an MLflow server storing artifacts in it; yields a dict of handles."""
    import boto3

    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    s3_url, moto = start_moto()
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        **{k.lower(): v for k, v in creds.items() if k != "AWS_DEFAULT_REGION"},
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="mlflow")
    env = {**creds, "MLFLOW_S3_ENDPOINT_URL": s3_url}
    args = (port, f"sqlite:///{d / 'mlflow.db'}", "s3://mlflow/artifacts", d / "server.log")
    server = start_server(*args, env=env)
    handles = {
        "dir": d,
        "port": port,
        "url": f"http://127.0.0.1:{port}",
        "s3": s3,
        "server": server,
        "start": lambda: start_server(*args, env=env),
    }
    yield handles
    stop_server(handles["server"])


@pytest.fixture(scope="module")
def outage_run(stack):
    """A local run during which the tracking server is stopped for ~10 s and started again."""
    import os

    from orchestrator.launch.run import launch

    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(stack["dir"])
    os.environ["MLFLOW_TRACKING_URI"] = stack["url"]
    outage: dict[str, float] = {}

    def chaos() -> None:
        events = stack["dir"] / "runs" / "vicuna" / "outage" / "events.jsonl"
        while not (events.exists() and len(events.read_text().splitlines()) >= 5):
            time.sleep(0.2)
        stop_server(stack["server"])
        outage["down"] = time.time()
        time.sleep(10)
        stack["server"] = stack["start"]()
        outage["up"] = time.time()

    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    try:
        res = launch(
            "vicuna",
            "local",
            [f"train.max_steps={STEPS}", "checkpoint.every_steps=30"],
            run_name="outage",
        )
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    t.join(timeout=120)
    return res, outage


def test_training_never_waits_on_a_dead_server_and_no_metric_is_lost(outage_run, stack):
    res, outage = outage_run
    assert res.stop_reason == "completed" and res.step == STEPS
    assert "down" in outage and "up" in outage, "the server was never stopped"
    events = [json.loads(x) for x in (Path(res.run_dir) / "events.jsonl").read_text().splitlines()]
    during = [e for e in events if outage["down"] < e["time"] < outage["up"]]
    assert during, "training should have kept stepping while the server was down"
    result = json.loads((Path(res.run_dir) / "result.json").read_text())
    assert result["max_log_call_s"] < 1.0  # no step waited on logging

    client = MlflowClient(stack["url"])
    for key in STEP_METRICS:
        steps = [m.step for m in client.get_metric_history(res.mlflow_run_id, key)]
        assert sorted(steps) == list(range(1, STEPS + 1)), key  # every step exactly once
    run = client.get_run(res.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    assert run.data.tags["git_commit"] and run.data.tags["scale"] == "local"
    assert any(k.startswith("system/") for k in run.data.metrics)  # psutil, through the outage too


def test_artifacts_land_in_the_s3_store(outage_run, stack):
    res, _ = outage_run
    keys = [o["Key"] for o in stack["s3"].list_objects_v2(Bucket="mlflow").get("Contents", [])]
    for name in (
        "bill/bill.md",
        "bill/bill.json",
        "plots/loss_vs_step.png",
        "plots/loss_vs_usd.png",
        "checkpoint/manifest.json",
        "samples/samples.json",
        "config/resolved_attempt1.yaml",
    ):
        assert any(k.endswith(f"{res.mlflow_run_id}/artifacts/{name}") for k in keys), name


def test_the_export_is_a_logged_model_with_its_bill_and_the_experiment_trains_models(
    outage_run, stack
):
    """The bill follows the model: a logged model by reference (no weights copied), tagged with
    the bill, in an experiment marked as model training (MLflow 3 opens it in that view)."""
    res, _ = outage_run
    c = MlflowClient(res.tracking_uri)
    run = c.get_run(res.mlflow_run_id)
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    models = c.search_logged_models([exp.experiment_id])
    mine = [m for m in models if m.source_run_id == res.mlflow_run_id]
    assert len(mine) == 1, models
    m = mine[0]
    assert m.tags["export_uri"].endswith("/export")
    assert float(m.tags["bill_usd"]) == pytest.approx(float(run.data.tags["bill_usd"]))
    for key in ("bill_usd_projected", "bill_usd_wasted_by_preemptions", "tokens", "eval_loss"):
        assert key in m.tags, key
    assert m.params["data_key"] and m.params["method"] == "full"
    assert not c.list_logged_model_artifacts(m.model_id)  # by reference: nothing copied


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)"
)
def test_the_ui_shows_the_cost_metric_and_the_bill(outage_run, stack):
    from playwright.sync_api import sync_playwright

    res, _ = outage_run
    exp_id = MlflowClient(stack["url"]).get_run(res.mlflow_run_id).info.experiment_id
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(runs_page_url(stack["url"], exp_id))
        # Charts below the fold render lazily: filter to the one a user looks for, as they would.
        search = page.get_by_placeholder("Search metric charts")
        search.wait_for(timeout=30_000)
        search.fill("cost/usd_total")
        page.get_by_text("cost/usd_total").first.wait_for(timeout=30_000)
        page.screenshot(path=str(stack["dir"] / "runs_page.png"))
        page.goto(
            f"{stack['url']}/#/experiments/{exp_id}/runs/{res.mlflow_run_id}/artifacts/bill/bill.md"
        )
        page.get_by_text("Bill: vicuna / outage").first.wait_for(timeout=30_000)
        page.screenshot(path=str(stack["dir"] / "bill.png"))
        browser.close()
