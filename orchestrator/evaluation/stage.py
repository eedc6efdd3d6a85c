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
from orchestrator.evaluation.objective import (
    ANSWERS,
    BASE_ANSWERS,
    BASE_JUDGMENTS,
    JUDGMENTS,
    PAIR_JUDGMENTS,
    QUESTIONS,
)
from orchestrator.evaluation.questions import parse_questions, resolve_questions
from orchestrator.objectives.eval import BASELINE_BASE, LOCAL_JUDGE, judge_usd
from orchestrator.objectives.eval import SETTINGS as EVAL
from orchestrator.storage.layout import run_store


def preflight(cfg: JobConfig) -> None:
    """What can be checked on the launcher's machine before anything is spent, also by a
    pipeline before its first stage: the judge's key variable is set, a baseline file reads."""
    e = EVAL.of(cfg)
    if e.judge.api_key_env and not os.environ.get(e.judge.api_key_env):
        raise ConfigError(
            f"eval.judge.api_key_env={e.judge.api_key_env}: that environment variable is not "
            "set on this machine (the launcher calls the judge; the key never goes in a config)"
        )
    if e.baseline and e.baseline != BASELINE_BASE:
        load_baseline(e.baseline)


def before_run(cfg: JobConfig, storage) -> None:
    """The question set into the run's store, after the preflight checks (a ConfigError
    before anything is spent)."""
    preflight(cfg)
    questions = resolve_questions(EVAL.of(cfg).questions, storage.node_shared_dir("eval-questions"))
    baseline = EVAL.of(cfg).baseline
    if baseline and baseline != BASELINE_BASE:  # read now: a bad file costs nothing
        missing = {q.question_id for q in questions} - set(load_baseline(baseline))
        if missing:
            raise ConfigError(
                f"eval.baseline={baseline}: no answers to questions {sorted(missing)[:10]} of "
                f"the set {EVAL.of(cfg).questions!r} (the baseline must answer every question)"
            )
    rows = [{k: v for k, v in asdict(q).items() if v is not None} for q in questions]
    run_store(storage).write_text(QUESTIONS, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"eval: {len(questions)} questions ({EVAL.of(cfg).questions})")


SHOWN_ON_MODEL = ("eval/mt_bench_score", "eval/base_mt_bench_score", "eval/gain_over_base",
                  "eval/usd_per_point", "eval/pair_win_rate_adjusted")  # fmt: skip
"""The eval/* metrics also set as tags of the evaluated logged model."""


def judge_label(cfg: JobConfig) -> str:
    """How every score of this run names its judge (scores compare only under the same one)."""
    j = EVAL.of(cfg).judge
    where = "local rubric server" if j.url == LOCAL_JUDGE else j.url
    return f"{j.model} @ {where} ({PROMPT_VERSION})"


def after_run(
    cfg: JobConfig, storage, uri: str, run_id: str, budget_left: float | None = None
) -> dict[str, float]:
    """Judge the workers' answers (and the base's, and pairwise against the baseline), log the
    eval/* metrics to MLflow; what this launch added to the bill, by line ({"judge_api": $}).
    With `budget_left` (budget.max_usd minus what the run has spent), the judge stops asking
    once its calls have cost that much: the judgments not asked are counted as failed."""
    store = run_store(storage)
    text, qtext = store.read_text(ANSWERS), store.read_text(QUESTIONS)
    if text is None or qtext is None:
        print("eval: no answers in the run's store; nothing to judge")
        return {}
    questions = parse_questions(qtext, f"{store.url}/{QUESTIONS}")
    answers = answers_of(text, f"{store.url}/{ANSWERS}")
    metrics, judgments, usd = _judge(cfg, storage, questions, answers, budget_left)
    costs = json.loads(store.read_text(EXTRA_COSTS) or "{}")
    costs["judge_api"] = costs.get("judge_api", 0.0) + usd  # each launch's calls, summed
    store.write_text(EXTRA_COSTS, json.dumps(costs))
    _log(cfg, uri, run_id, metrics, questions, answers, judgments)
    _print(metrics, judge_label(cfg), EVAL.of(cfg).judge.url == LOCAL_JUDGE)
    return {"judge_api": usd}


def _judge(cfg: JobConfig, storage, questions, answers, budget_left: float | None):
    """(eval/* metrics, the judgments of the evaluated model's answers, the judge's dollars):
    single grades of the model's answers and of the base's, then the pairwise games against
    the baseline, each set written beside the answers."""
    e, store = EVAL.of(cfg), run_store(storage)
    base = None
    if e.base:
        base = answers_of(store.read_text(BASE_ANSWERS) or "", f"{store.url}/{BASE_ANSWERS}")
    baseline = base if e.baseline == BASELINE_BASE else None
    if e.baseline and e.baseline != BASELINE_BASE:
        baseline = load_baseline(e.baseline)
    j = e.judge
    with ExitStack() as stack:
        url = j.url
        if url == LOCAL_JUDGE:
            from orchestrator.evaluation.judge_server import JudgeServer

            url = stack.enter_context(JudgeServer()).url
        client = JudgeClient(
            url, j.model, storage.node_shared_dir("judge-cache"), api_key_env=j.api_key_env,
            max_concurrency=j.max_concurrency, max_retries=j.max_retries,
            timeout_s=j.timeout_s, budget_usd=budget_left,
            # our own rubric server on 127.0.0.1 has no rate limit to respect
            requests_per_s=0.0 if j.url == LOCAL_JUDGE else j.requests_per_s,
            price=lambda p, c: judge_usd(cfg, tokens=(p, c)),
        )  # fmt: skip
        judgments = client.judge_all(questions, answers)
        metrics = summarise(judgments)
        _write(store, JUDGMENTS, judgments)
        if base is not None:
            judged = client.judge_all(questions, base)
            _write(store, BASE_JUDGMENTS, judged)
            metrics.update(_prefixed(summarise(judged), "eval/base_"))
        if baseline is not None:
            missing = sorted(q.question_id for q in questions if q.question_id not in baseline)
            if missing:
                raise ConfigError(
                    f"eval.baseline={e.baseline}: no answers to questions {missing[:10]} "
                    "(the baseline must answer every question of the set)"
                )
            games = client.judge_all(questions, answers, baseline=baseline)
            _write(store, PAIR_JUDGMENTS, games)
            pair = summarise(games)
            metrics.update({k: v for k, v in pair.items() if k.startswith("eval/pair_")})
            metrics["eval/pair_games"] = pair["eval/judgments"]
            for k in ("eval/judge_unparseable", "eval/judge_failed"):
                metrics[k] += pair[k]
    s = client.stats
    usd = judge_usd(cfg, tokens=(s.prompt_tokens, s.completion_tokens))
    metrics.update({"eval/judge_calls": float(s.calls), "eval/judge_cached": float(s.cached),
                    "eval/judge_usd": usd})  # fmt: skip
    if "eval/mt_bench_score" in metrics and "eval/base_mt_bench_score" in metrics:
        metrics["eval/gain_over_base"] = (
            metrics["eval/mt_bench_score"] - metrics["eval/base_mt_bench_score"]
        )
    return metrics, judgments, usd


def _log(cfg: JobConfig, uri: str, run_id: str, metrics, questions, answers, judgments) -> None:
    """The judge's name and the metrics on the stage's run; the judgments through
    mlflow.genai.evaluate, linked to the evaluated export's logged model, which gets the
    metrics too (and dollars per point, from its training bill)."""
    from orchestrator.tracking.runs import client as mlflow_client

    label = judge_label(cfg)
    mlflow = mlflow_client(uri)
    mlflow.set_tag(run_id, "eval.judge", label)
    if EVAL.of(cfg).judge.url == LOCAL_JUDGE:
        mlflow.set_tag(run_id, "eval.note", "local rubric judge: a plumbing check, not quality")
    model_id: str | None = None
    try:  # MLflow's evaluation views; the metrics are logged whatever happens here
        from orchestrator.evaluation import mlflow_eval

        model_id = mlflow_eval.record(uri, run_id, questions, answers, judgments, label,
                                      cfg.model.pretrained)  # fmt: skip
        mlflow.set_tag(run_id, "eval.model_id", model_id or "")
        trained = mlflow_eval.trained_usd(mlflow, model_id)
        if trained is not None:
            metrics["eval/trained_usd"] = trained
            if metrics.get("eval/gain_over_base", 0.0) > 0:
                metrics["eval/usd_per_point"] = trained / metrics["eval/gain_over_base"]
    except Exception as err:  # noqa: BLE001 - a view, not the result
        print(f"warning: eval: could not record the judgments with mlflow.genai.evaluate: {err}")
    for key, value in metrics.items():  # on the stage's run, and on the evaluated model
        mlflow.log_metric(run_id, key, value, model_id=model_id)
    if model_id:  # its page shows the score with its judge (scores compare under one judge)
        shown = {k: f"{v:.6g}" for k, v in metrics.items() if k in SHOWN_ON_MODEL}
        mlflow.set_logged_model_tags(model_id, {"eval.judge": label, **shown})


def answers_of(text: str, where: str) -> dict[int, list[str]]:
    """{question_id: [answer per turn]} of a JSON-lines file: our rows ({"question_id",
    "turns"}) or FastChat's model_answer rows ({"question_id", "choices": [{"turns"}]})."""
    out: dict[int, list[str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            turns = row["turns"] if "turns" in row else row["choices"][0]["turns"]
            qid = row["question_id"]
            if not isinstance(qid, int) or not all(isinstance(t, str) for t in turns):
                raise TypeError("question_id must be an integer and turns strings")
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise ConfigError(
                f"{where}, line {n}: not an answer row ({err}); expected "
                '{"question_id": 81, "turns": ["...", "..."]} or FastChat\'s '
                '{"question_id": 81, "choices": [{"turns": [...]}]}'
            ) from None
        out[qid] = list(turns)
    return out


def load_baseline(path: str) -> dict[int, list[str]]:
    """eval.baseline's answers, from a file on the launcher's machine."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"eval.baseline={path!r}: no such file on this machine; give a JSON-lines file of "
            "answers, or `base` (the answers of eval.base)"
        )
    return answers_of(p.read_text(encoding="utf-8"), str(p))


def _write(store, rel: str, judgments) -> None:
    store.write_text(rel, "".join(json.dumps(asdict(x)) + "\n" for x in judgments))


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    keep = ("eval/mt_bench_score", "eval/mt_bench_turn1", "eval/mt_bench_turn2")
    return {prefix + k[len("eval/") :]: v for k, v in metrics.items() if k in keep}


def _print(m: dict[str, Any], label: str, local: bool) -> None:
    score = m.get("eval/mt_bench_score")
    print(
        f"eval: judged {m['eval/judgments']:.0f} answers by {label}: "
        + (f"score {score:.2f}" if score is not None else "no parseable score")
        + f"; {m['eval/judge_unparseable']:.0f} unparseable, {m['eval/judge_failed']:.0f} failed; "
        f"{m['eval/judge_calls']:.0f} calls, {m['eval/judge_cached']:.0f} from the cache, "
        f"${m['eval/judge_usd']:.4f}"
    )
    if "eval/base_mt_bench_score" in m:
        line = (f"eval: the base scored {m['eval/base_mt_bench_score']:.2f}: gain "
                f"{m.get('eval/gain_over_base', float('nan')):+.2f}")  # fmt: skip
        if "eval/usd_per_point" in m:
            line += f", ${m['eval/usd_per_point']:,.4f} of training per point"
        print(line)
    if "eval/pair_win_rate" in m:
        print(f"eval: against the baseline: won {m['eval/pair_win_rate']:.0%}, lost "
              f"{m['eval/pair_loss_rate']:.0%} of {m['eval/pair_games']:.0f} games (adjusted "
              f"win rate {m['eval/pair_win_rate_adjusted']:.0%})")  # fmt: skip
    if local:
        print("eval: the local judge is a rubric: these scores check the plumbing, not quality")
