"""The judgments in MLflow 3's evaluation views: `mlflow.genai.evaluate` over the answers with a
scorer that reads the judge client's results (it calls no judge itself), in the eval stage's
run and linked to the evaluated export's logged model, so the UI's evaluation and trace views
show each question, answer, rating and the judge's reasoning. Answers and judgments are also
artifacts of the run (eval/). Text goes through the project's secret scrubber first."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.evaluation.judge import Judgment
from orchestrator.evaluation.questions import NEEDS_REFERENCE, Question
from orchestrator.tracking.redact import scrub

RATIONALE_CHARS = 4000
SETTINGS = {
    "MLFLOW_GENAI_EVAL_MAX_WORKERS": "2",
    "MLFLOW_GENAI_EVAL_MAX_SCORER_WORKERS": "1",
    "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",
}
"""The scorer only reads results: two rows at a time, and each trace written before the next
(MLflow's defaults, ten evaluation workers and ten background trace writers, exhaust a
sqlite store's connection pool: 'QueuePool limit of size 5 overflow 10 reached')."""


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in SETTINGS}
    os.environ.update(SETTINGS)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def logged_model_of(client, run_id: str, export_url: str | None) -> str | None:
    """The logged model whose `export_uri` is the evaluated export (register_export tags it),
    in the run's experiment; None when the export was not registered there."""
    if not export_url:
        return None
    exp = client.get_run(run_id).info.experiment_id
    want = export_url.rstrip("/")
    for m in client.search_logged_models(experiment_ids=[exp]):
        if (m.tags or {}).get("export_uri", "").rstrip("/") == want:
            return m.model_id
    return None


def rows_of(questions: list[Question], answers: dict[int, list[str]]) -> list[dict[str, Any]]:
    rows = []
    for q in questions:
        for t, answer in enumerate(answers.get(q.question_id, []), 1):
            row: dict[str, Any] = {
                "inputs": {"question_id": q.question_id, "turn": t, "category": q.category,
                           "question": scrub(q.turns[t - 1])},
                "outputs": scrub(answer),
            }  # fmt: skip
            if q.reference and q.category in NEEDS_REFERENCE:
                row["expectations"] = {"reference": scrub(q.reference[t - 1])}
            rows.append(row)
    return rows


def record(
    uri: str,
    run_id: str,
    questions: list[Question],
    answers: dict[int, list[str]],
    judgments: list[Judgment],
    judge: str,
    export_url: str | None,
) -> str | None:
    """Record the judged answers with mlflow.genai.evaluate in run `run_id`; the logged model
    they were linked to (None: none found)."""
    import mlflow
    from mlflow.entities import Feedback
    from mlflow.genai import scorer

    from orchestrator.tracking.runs import client as mlflow_client

    client = mlflow_client(uri)
    by_turn = {(j.question_id, j.turn): j for j in judgments}

    @scorer(name="judge_rating")
    def judge_rating(inputs: dict[str, Any]) -> Feedback:
        j = by_turn[(inputs["question_id"], inputs["turn"])]
        why = scrub(j.texts[0])[:RATIONALE_CHARS] if j.texts else None
        if j.score is None:  # unparseable or failed: shown as a failed assessment, not dropped
            return Feedback(value=None, error=j.error or "no judgment", rationale=why)
        return Feedback(value=j.score, rationale=f"{judge}: {why}")

    model_id = logged_model_of(client, run_id, export_url)
    mlflow.set_tracking_uri(uri)
    with _quiet_tracing(), mlflow.start_run(run_id=run_id):
        mlflow.genai.evaluate(data=rows_of(questions, answers), scorers=[judge_rating],
                              model_id=model_id)  # fmt: skip
    mlflow.clear_active_model()  # evaluate() made it active; the next stage logs its own
    client.update_run(run_id, status="RUNNING")  # leaving start_run() ended it: the launcher does
    for name, body in (("answers", answers), ("judgments", [vars(j) for j in judgments])):
        client.log_text(run_id, json.dumps(body, indent=1), f"eval/{name}.json")
    return model_id


def trained_usd(client, model_id: str | None) -> float | None:
    """What the logged model's training cost: its own stage's bill plus its upstream stages'
    (register_export's `bill_usd` and `bill_usd_upstream` tags); None when unknown."""
    if not model_id:
        return None
    tags = client.get_logged_model(model_id).tags or {}
    if "bill_usd" not in tags:
        return None
    return float(tags["bill_usd"]) + float(tags.get("bill_usd_upstream", 0.0))
