"""SFT -> eval end to end: the eval stage reads the SFT export by reference, answers the shipped
question set on the workers, the launcher's judge (the local rubric server) grades every turn,
the stage's MLflow run holds the eval/* metrics and its judge, the bill has the judge's line,
and a second evaluation of the same answers asks the judge nothing (its cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.paths import JOBS_DIR

pytestmark = pytest.mark.integration


def test_sft_then_eval_judges_every_turn_and_a_relaunch_pays_nothing(launch_workdir):
    from orchestrator.launch.pipeline import run_pipeline

    raw = yaml.safe_load((JOBS_DIR / "vicuna.yaml").read_text())
    raw["stages"] = {
        "sft": {"config": {"train": {"max_steps": 3}}},
        "eval": {
            "input": "sft",
            "config": {
                "train": {"objective": "eval", "strategy": "ddp"},
                "eval": {"max_new_tokens": 12},
            },
        },
    }
    job = launch_workdir / "evaled.yaml"
    job.write_text(yaml.safe_dump(raw, sort_keys=False))

    own = [f"storage.scratch={launch_workdir / 'ev-scratch'}"]  # a judge cache of its own
    out = run_pipeline(str(job), "local", own, "ev")
    assert out.stop_reason == "completed", out
    run_dir = Path(launch_workdir / "runs" / "vicuna" / "ev-eval")
    cfg = yaml.safe_load(sorted((run_dir / "config").glob("attempt-*.yaml"))[-1].read_text())
    assert cfg["model"]["pretrained"] == out.stages["sft"]["export_url"]

    answers = [json.loads(x) for x in (run_dir / "eval" / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == list(range(1, 9))
    assert all(len(a["turns"]) == 2 for a in answers)  # both turns, from both workers
    judged = (run_dir / "eval" / "judgments.jsonl").read_text().splitlines()
    assert len(judged) == 16 and all(json.loads(j)["score"] is not None for j in judged)

    client = MlflowClient(f"sqlite:///{launch_workdir}/mlflow.db")
    child = client.get_run(out.stages["eval"]["mlflow_run_id"])
    m, tags = child.data.metrics, child.data.tags
    assert 1 <= m["eval/mt_bench_score"] <= 10 and m["eval/judge_calls"] == 16
    assert m["eval/judge_unparseable"] == 0 and m["eval/judge_failed"] == 0
    assert "eval_loss" in m and m["eval/answers"] == 8
    assert "local rubric" in tags["eval.judge"] and "plumbing" in tags["eval.note"]
    # MLflow's evaluation views: one trace per judged turn, its rating an assessment, linked
    # to the SFT export's logged model
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{launch_workdir}/mlflow.db")
    traces = mlflow.search_traces(
        locations=[child.info.experiment_id], run_id=child.info.run_id, return_type="list"
    )
    assert len(traces) == 16
    ratings = [a.value for t in traces for a in t.info.assessments if a.name == "judge_rating"]
    assert len(ratings) == 16 and all(1 <= r <= 10 for r in ratings)
    sft_models = [x for x in client.search_logged_models(experiment_ids=[child.info.experiment_id])
                  if x.tags.get("export_uri") == out.stages["sft"]["export_url"]]  # fmt: skip
    assert tags["eval.model_id"] == sft_models[0].model_id
    bill = json.loads((run_dir / "bill.json").read_text())
    assert bill["by_category"]["judge_api"] == 0.0  # the local judge is free; the line is there
    assert sum(bill["by_category"].values()) == pytest.approx(bill["usd_total"], abs=1e-9)

    # The eval stage again from scratch: the same answers (seeded), every judgment cached.
    again = run_pipeline(str(job), "local", own, "ev", fresh="eval")
    assert again.stop_reason == "completed"
    runs = client.search_runs(
        [child.info.experiment_id], "attributes.run_name LIKE 'ev-eval%'",
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    second = runs[0].data.metrics
    assert second["eval/judge_calls"] == 0 and second["eval/judge_cached"] == 16
    assert second["eval/mt_bench_score"] == m["eval/mt_bench_score"]
