"""Koala's own pipeline at local scale, SFT -> eval, end to end: the eval stage reads the SFT
export by reference, the workers answer the shipped question set with the export and with its
base, the launcher's judge (the local rubric server) grades every turn of both and plays the
export against the base pairwise, the stage's MLflow run holds the eval/* metrics, its judge
and dollars per point, the bill has the judge's line, and a second evaluation of the same
answers asks the judge nothing (its cache). Then the resume test every recipe has: the SFT
stage's last checkpoint deleted, a relaunch redoes the steps after the one before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.checkpoint.manifest import step_dirname

pytestmark = pytest.mark.integration

SFT = ["train.max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=5"]


def losses(run_dir: Path, attempt: int) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["attempt"] == attempt}


def test_koala_trains_then_evaluates_against_its_base_and_a_relaunch_pays_nothing(
    launch_workdir,
):
    from orchestrator.launch.pipeline import run_pipeline
    from orchestrator.launch.run import launch

    own = [*SFT, f"storage.scratch={launch_workdir / 'ev-scratch'}"]  # a judge cache of its own
    out = run_pipeline("koala", "local", own, "ev")
    assert out.stop_reason == "completed", out
    runs = launch_workdir / "runs" / "koala"
    run_dir = runs / "ev-eval"
    cfg = yaml.safe_load(sorted((run_dir / "config").glob("attempt-*.yaml"))[-1].read_text())
    assert cfg["model"]["pretrained"] == out.stages["sft"]["export_url"]
    assert "/.bases/" in cfg["eval"]["base"]  # the base, published where every node reads it

    def rows(name: str) -> list[dict]:
        return [json.loads(x) for x in (run_dir / "eval" / name).read_text().splitlines()]

    for name in ("answers.jsonl", "base_answers.jsonl"):
        answers = rows(name)
        assert [a["question_id"] for a in answers] == list(range(1, 9)), name
        assert all(len(a["turns"]) == 2 for a in answers)  # both turns, from both workers
    assert rows("answers.jsonl") != rows("base_answers.jsonl")  # two models answered
    for name in ("judgments.jsonl", "base_judgments.jsonl"):
        assert len(rows(name)) == 16 and all(j["score"] is not None for j in rows(name))
    games = rows("pair_judgments.jsonl")
    assert len(games) == 16 and all(len(g["texts"]) == 2 for g in games)  # both orders

    client = MlflowClient(f"sqlite:///{launch_workdir}/mlflow.db")
    child = client.get_run(out.stages["eval"]["mlflow_run_id"])
    m, tags = child.data.metrics, child.data.tags
    assert 1 <= m["eval/mt_bench_score"] <= 10 and 1 <= m["eval/base_mt_bench_score"] <= 10
    assert m["eval/gain_over_base"] == pytest.approx(
        m["eval/mt_bench_score"] - m["eval/base_mt_bench_score"]
    )
    assert m["eval/judge_calls"] == 16 + 16 + 32  # two graded models, 16 games of two orders
    assert m["eval/pair_games"] == 16 and 0 <= m["eval/pair_win_rate_adjusted"] <= 1
    assert m["eval/judge_unparseable"] == 0 and m["eval/judge_failed"] == 0
    assert "eval_loss" in m and m["eval/answers"] == 8
    sft_bill = json.loads((runs / "ev-sft" / "bill.json").read_text())["usd_total"]
    # the logged model's bill_usd tag holds micro-dollars (6 decimals): a local bill of
    # $0.0004 keeps 3 digits, so it is compared to the micro-dollar
    assert m["eval/trained_usd"] == pytest.approx(sft_bill, abs=5e-7)
    if m["eval/gain_over_base"] > 0:
        assert m["eval/usd_per_point"] == pytest.approx(
            m["eval/trained_usd"] / m["eval/gain_over_base"]
        )
    else:
        assert "eval/usd_per_point" not in m
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
    # the evaluated model carries its score, with its judge, on its own MLflow page
    model = client.get_logged_model(tags["eval.model_id"])
    assert model.tags["eval.judge"] == tags["eval.judge"]
    assert float(model.tags["eval/mt_bench_score"]) == pytest.approx(m["eval/mt_bench_score"])
    assert "eval/gain_over_base" in {x.key for x in model.metrics}
    assert child.info.status == "FINISHED"
    bill = json.loads((run_dir / "bill.json").read_text())
    assert bill["by_category"]["judge_api"] == 0.0  # the local judge is free; the line is there
    assert sum(bill["by_category"].values()) == pytest.approx(bill["usd_total"], abs=1e-9)

    # The eval stage again from scratch: the same answers (seeded), every judgment cached.
    again = run_pipeline("koala", "local", own, "ev", fresh="eval")
    assert again.stop_reason == "completed"
    runs_now = client.search_runs(
        [child.info.experiment_id], "attributes.run_name LIKE 'ev-eval%'",
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    second = runs_now[0].data.metrics
    assert second["eval/judge_calls"] == 0 and second["eval/judge_cached"] == 64
    assert second["eval/mt_bench_score"] == m["eval/mt_bench_score"]

    # The SFT stage resumes from its own checkpoints with the same losses.
    sft_dir = runs / "ev-sft"
    first = losses(sft_dir, 1)
    shutil.rmtree(sft_dir / "checkpoints" / step_dirname(4))
    res = launch("koala", "local", [*own, "stage=sft"], run_name="ev-sft")
    assert res.attempt == 2 and res.step == 4 and res.stop_reason == "completed"
    second_losses = losses(sft_dir, 2)
    assert sorted(second_losses) == [3, 4]
    for step, loss in second_losses.items():
        assert loss == pytest.approx(first[step], abs=1e-6), step
