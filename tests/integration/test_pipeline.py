"""A multi-stage job end to end: stage outputs feed the next stage by reference, a gate stops the
pipeline between stages with the metric, a relaunch skips finished stages, and MLflow holds one
parent run with a child run per stage whose bills sum to the parent's (each dollar once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.paths import JOBS_DIR

pytestmark = pytest.mark.integration


def test_stages_chain_gate_and_skip_on_relaunch(launch_workdir):
    from orchestrator.launch.pipeline import PIPELINE, run_pipeline

    raw = yaml.safe_load((JOBS_DIR / "vicuna.yaml").read_text())
    raw["stages"] = {
        "sft": {"budget_share": 0.5, "config": {"train": {"max_steps": 4}}},
        "more": {
            "input": "sft",
            "gate": {"stage": "sft", "metric": "eval_loss", "max": 100.0},  # passes
            "config": {"train": {"max_steps": 3}},
        },
        "last": {
            "input": "more",
            "gate": {"stage": "more", "metric": "eval_loss", "max": 0.001},  # cannot pass
            "config": {"train": {"max_steps": 2}},
        },
    }
    job = launch_workdir / "piped.yaml"
    job.write_text(yaml.safe_dump(raw, sort_keys=False))

    capped = ["budget.max_usd=1"]  # a stage's cap is derived: it is not part of its identity
    out = run_pipeline(str(job), "local", capped, "p1")
    assert out.stop_reason == "gate" and "more's eval_loss" in out.message, out
    sft, more = out.stages["sft"], out.stages["more"]
    assert sft["status"] == more["status"] == "done" and "last" not in out.stages

    # `more` started from `sft`'s export, by reference in the durable store
    run_dir = Path(launch_workdir / "runs" / "vicuna" / "p1-more")
    cfg = yaml.safe_load(sorted((run_dir / "config").glob("attempt-*.yaml"))[-1].read_text())
    assert cfg["model"]["pretrained"] == sft["export_url"]
    assert Path(sft["export_url"], "config.json").exists()

    # MLflow: the parent and one child per stage that ran; the dollars counted once
    client = MlflowClient(f"sqlite:///{launch_workdir}/mlflow.db")
    parent = client.get_run(out.mlflow_run_id)
    assert parent.data.tags["stop_reason"] == "gate" and "bill_usd" not in parent.data.tags
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{out.mlflow_run_id}'")
    assert sorted(r.info.run_name for r in children) == ["p1-more", "p1-sft"]
    child_usd = sum(float(r.data.tags["bill_usd"]) for r in children)
    assert float(parent.data.tags["pipeline_bill_usd"]) == pytest.approx(child_usd, abs=2e-6)
    assert out.usd_total == pytest.approx(child_usd, abs=2e-6)  # tags hold 6 decimals

    # Relaunch: finished stages are skipped (no new attempt), the gate says no again.
    again = run_pipeline(str(job), "local", capped, "p1")
    assert again.stop_reason == "gate"
    for name in ("sft", "more"):
        meta = json.loads(
            (launch_workdir / "runs" / "vicuna" / f"p1-{name}" / "ledger.json").read_text()
        )
        assert len(meta["attempts"]) == 1, name
    state = json.loads((launch_workdir / "runs" / "vicuna" / "p1" / PIPELINE).read_text())
    assert state["mlflow_run_id"] == out.mlflow_run_id

    # A changed stage is refused by name, never resumed or skipped under the new config
    from orchestrator.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"stage 'sft' of run 'p1'.*optim.lr.*fresh=sft"):
        run_pipeline(str(job), "local", [*capped, "optim.lr=0.005"], "p1")
    # fresh=more: that stage starts over in a new folder, the old one kept
    redo = run_pipeline(str(job), "local", capped, "p1", fresh="more")
    assert redo.stop_reason == "gate" and redo.stages["more"]["run"] == "p1-more-g1"
    assert (launch_workdir / "runs" / "vicuna" / "p1-more" / "ledger.json").exists()
    assert redo.stages["more"]["export_digest"].startswith("sha256:")
    # an export changed after its stage made it (4 KB overwritten, size kept) is refused
    shard = max(Path(sft["export_url"]).glob("*.safetensors"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[-4096:] = bytes(4096)
    shard.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"stage 'sft'.s export .*does not match"):
        run_pipeline(str(job), "local", capped, "p1")
