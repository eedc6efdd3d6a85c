"""The eval stage on the launcher: the question set before the workers, the judge after them.

`before_run` resolves `eval.questions` on the launcher's machine (the shipped sample, the pinned
MT-bench download, or a file) and puts it in the run's durable store, where workers that share
no disk with the launcher read it. `after_run` reads the workers' answers, asks the judge
(orchestrator/evaluation/judge.py; `eval.judge.url=local` starts the rubric judge on
127.0.0.1 for the duration), writes the judgments beside the answers, logs `eval/*` metrics
and the judge's name to the stage's MLflow run, and records what the judge's tokens cost as a
line of the bill (EXTRA_COSTS). The judge's API key is read here, on the launcher's machine,
and goes nowhere else.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

from orchestrator.config.schema import JobConfig
from orchestrator.contract.records import EXTRA_COSTS
from orchestrator.errors import ConfigError
from orchestrator.evaluation.judge import PROMPT_VERSION, JudgeClient, summarise
from orchestrator.evaluation.objective import ANSWERS, JUDGMENTS, QUESTIONS
from orchestrator.evaluation.questions import parse_questions, resolve_questions
from orchestrator.objectives.eval import LOCAL_JUDGE, judge_usd
from orchestrator.objectives.eval import SETTINGS as EVAL
from orchestrator.storage.layout import run_store


def before_run(cfg: JobConfig, storage) -> None:
    """The question set into the run's store, and the judge's key variable checked (a
    ConfigError before anything is spent)."""
    j = EVAL.of(cfg).judge
    if j.api_key_env and not os.environ.get(j.api_key_env):
        raise ConfigError(
            f"eval.judge.api_key_env={j.api_key_env}: that environment variable is not set on "
            "this machine (the launcher calls the judge; the key never goes in a config)"
        )
    questions = resolve_questions(EVAL.of(cfg).questions, storage.node_shared_dir("eval-questions"))
    rows = [{k: v for k, v in asdict(q).items() if v is not None} for q in questions]
    run_store(storage).write_text(QUESTIONS, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"eval: {len(questions)} questions ({EVAL.of(cfg).questions})")


def judge_label(cfg: JobConfig) -> str:
    """How every score of this run names its judge (scores compare only under the same one)."""
    j = EVAL.of(cfg).judge
    where = "local rubric server" if j.url == LOCAL_JUDGE else j.url
    return f"{j.model} @ {where} ({PROMPT_VERSION})"


def after_run(cfg: JobConfig, storage, uri: str, run_id: str) -> dict[str, float]:
    """Judge the workers' answers; the eval/* metrics (also logged to MLflow)."""
    from orchestrator.tracking.runs import client as mlflow_client

    store = run_store(storage)
    text, qtext = store.read_text(ANSWERS), store.read_text(QUESTIONS)
    if text is None or qtext is None:
        print("eval: no answers in the run's store; nothing to judge")
        return {}
    questions = parse_questions(qtext, f"{store.url}/{QUESTIONS}")
    answers = {r["question_id"]: r["turns"] for r in map(json.loads, text.splitlines()) if r}
    j = EVAL.of(cfg).judge
    with ExitStack() as stack:
        url = j.url
        if url == LOCAL_JUDGE:
            from orchestrator.evaluation.judge_server import JudgeServer

            url = stack.enter_context(JudgeServer()).url
        client = JudgeClient(
            url, j.model, storage.node_shared_dir("judge-cache"), api_key_env=j.api_key_env,
            max_concurrency=j.max_concurrency, requests_per_s=j.requests_per_s,
            max_retries=j.max_retries, timeout_s=j.timeout_s,
        )  # fmt: skip
        judgments = client.judge_all(questions, answers)
    store.write_text(JUDGMENTS, "".join(json.dumps(asdict(x)) + "\n" for x in judgments))
    s = client.stats
    usd = judge_usd(cfg, tokens=(s.prompt_tokens, s.completion_tokens))
    metrics = {**summarise(judgments), "eval/judge_calls": float(s.calls),
               "eval/judge_cached": float(s.cached), "eval/judge_usd": usd}  # fmt: skip
    costs = json.loads(store.read_text(EXTRA_COSTS) or "{}")
    costs["judge_api"] = costs.get("judge_api", 0.0) + usd  # each launch's calls, summed
    store.write_text(EXTRA_COSTS, json.dumps(costs))
    label = judge_label(cfg)
    mlflow = mlflow_client(uri)
    for key, value in metrics.items():
        mlflow.log_metric(run_id, key, value)
    mlflow.set_tag(run_id, "eval.judge", label)
    if j.url == LOCAL_JUDGE:
        mlflow.set_tag(run_id, "eval.note", "local rubric judge: a plumbing check, not quality")
    try:  # MLflow's evaluation views; the metrics above are logged whatever happens here
        from orchestrator.evaluation import mlflow_eval

        model_id = mlflow_eval.record(uri, run_id, questions, answers, judgments, label,
                                      cfg.model.pretrained)  # fmt: skip
        mlflow.set_tag(run_id, "eval.model_id", model_id or "")
    except Exception as e:  # noqa: BLE001 - a view, not the result
        print(f"warning: eval: could not record the judgments with mlflow.genai.evaluate: {e}")
    _print(metrics, label, j.url == LOCAL_JUDGE)
    return metrics


def _print(m: dict[str, Any], label: str, local: bool) -> None:
    score = m.get("eval/mt_bench_score")
    print(
        f"eval: judged {m['eval/judgments']:.0f} answers by {label}: "
        + (f"score {score:.2f}" if score is not None else "no parseable score")
        + f"; {m['eval/judge_unparseable']:.0f} unparseable, {m['eval/judge_failed']:.0f} failed; "
        f"{m['eval/judge_calls']:.0f} calls, {m['eval/judge_cached']:.0f} from the cache, "
        f"${m['eval/judge_usd']:.4f}"
    )
    if local:
        print("eval: the local judge is a rubric: these scores check the plumbing, not quality")
