"""The judge client against a real local HTTP judge (orchestrator/evaluation/judge_server.py):
parsing, the cache, retries, position swap, the pinned download's checksum and the API key."""

from __future__ import annotations

import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.evaluation import questions as qmod
from orchestrator.evaluation.judge import (
    JudgeClient,
    parse_rating,
    parse_verdict,
    summarise,
)
from orchestrator.evaluation.judge_server import Faults, JudgeServer
from orchestrator.evaluation.questions import SAMPLE, load_questions, parse_questions

QUESTIONS = load_questions(SAMPLE)
ANSWERS = {q.question_id: [f"answer {i} to {q.turns[i][:20]}" for i in range(len(q.turns))]
           for q in QUESTIONS}  # fmt: skip


def client(url: str, tmp_path: Path, **kw) -> JudgeClient:
    kw = {"backoff_s": 0.01, "requests_per_s": 0, "timeout_s": 5.0, **kw}
    return JudgeClient(url, "local-rubric", tmp_path / "cache", **kw)


@pytest.mark.parametrize(
    "text, want",
    [
        ("Fine work.\nRating: [[7]]", 7.0),
        ("Rating: [[8.5]]", 8.5),
        ("Rating: [6]", 6.0),  # FastChat's backup pattern
        ("No grade here.", None),  # missing
        ("Rating: [[11]]", None),  # out of range
        ("Rating: [[0]]", None),
        ("First [[3]], on reflection [[8]]", None),  # two different ratings: ambiguous
        ("[[4]] ... so: [[4]]", 4.0),  # the same rating twice
    ],
)
def test_ratings_are_parsed_as_fastchat_writes_them_and_ambiguity_is_refused(text, want):
    assert parse_rating(text) == want


def test_verdicts():
    assert parse_verdict("so [[A]]") == "A" and parse_verdict("[[C]]") == "tie"
    assert parse_verdict("[[A]] or maybe [[B]]") is None and parse_verdict("A wins") is None


def test_every_turn_is_judged_and_a_second_run_makes_no_call(tmp_path):
    with JudgeServer() as server:
        first = client(server.url, tmp_path).judge_all(QUESTIONS, ANSWERS)
        calls = server.calls
        again = client(server.url, tmp_path)  # a relaunch: a new client, the same cache
        second = again.judge_all(QUESTIONS, ANSWERS)
        assert server.calls == calls == 2 * len(QUESTIONS)  # two turns each
    assert again.stats.calls == 0 and again.stats.cached == len(second)
    assert [j.score for j in first] == [j.score for j in second]
    assert all(j.score is not None and j.calls == 0 for j in second)
    metrics = summarise(first)
    assert 1 <= metrics["eval/mt_bench_score"] <= 10 and metrics["eval/judge_failed"] == 0
    assert {"eval/mt_bench_turn1", "eval/mt_bench_turn2", "eval/mt_bench_math"} <= set(metrics)


@pytest.mark.parametrize("status", [429, 500])
def test_transient_errors_are_retried(tmp_path, status):
    with JudgeServer(Faults(status_first=2, status=status)) as server:
        c = client(server.url, tmp_path, max_concurrency=1)
        j = c.judge_single(QUESTIONS[0], 1, ANSWERS[1])
    assert j.score is not None and c.stats.retries == 2 and c.stats.failed == 0


def test_a_judge_that_keeps_failing_or_stalls_is_counted_not_fatal(tmp_path):
    with JudgeServer(Faults(status_first=100, status=500)) as server:
        c = client(server.url, tmp_path, max_retries=2)
        out = c.judge_all(QUESTIONS[:2], ANSWERS)
    assert all(j.score is None and "HTTP 500 after 3 attempt(s)" in j.error for j in out)
    assert summarise(out)["eval/judge_failed"] == len(out)
    with JudgeServer(Faults(stall_first=100, stall_s=1.0)) as server:
        c = client(server.url, tmp_path / "t", max_retries=1, timeout_s=0.2)
        j = c.judge_single(QUESTIONS[0], 1, ANSWERS[1])
    assert j.score is None and "after 2 attempt(s)" in j.error


def test_unparseable_judgments_are_counted_and_shown(tmp_path):
    with JudgeServer(Faults(no_verdict=True)) as server:
        out = client(server.url, tmp_path).judge_all(QUESTIONS[:3], ANSWERS)
    m = summarise(out)
    assert m["eval/judge_unparseable"] == len(out) and "eval/mt_bench_score" not in m
    assert all(j.texts == ["I cannot decide."] for j in out)


def test_pairwise_plays_both_orders_and_a_split_verdict_is_a_tie(tmp_path):
    long = {k: [v + " with many more distinct words in it than the other" for v in a]
            for k, a in ANSWERS.items()}  # fmt: skip
    with JudgeServer() as server:
        c = client(server.url, tmp_path)
        better = c.judge_all(QUESTIONS[:2], long, baseline=ANSWERS)
        same = c.judge_all(QUESTIONS[:2], ANSWERS, baseline=ANSWERS)
        assert server.calls == 2 * 2 * 2 * 2  # 2 questions x 2 turns x 2 orders, twice
    # the rubric prefers the longer reply in either position: ours wins both orders
    assert all(j.winner == "ours" and len(j.texts) == 2 for j in better)
    assert "[[A]]" in better[0].texts[0] and "[[B]]" in better[0].texts[1]
    assert all(j.winner == "tie" for j in same)
    m = summarise(better + same)
    assert m["eval/pair_win_rate"] == 0.5 and m["eval/pair_win_rate_adjusted"] == 0.75


def test_the_api_key_is_sent_and_kept_nowhere(tmp_path):
    secret = "sk-test-" + "9" * 24
    env = {"JUDGE_KEY": secret}
    with JudgeServer(Faults(status_first=1, status=401)) as server:
        c = client(server.url, tmp_path, api_key_env="JUDGE_KEY", environ=env)
        failed = c.judge_single(QUESTIONS[0], 1, ANSWERS[1])  # 401: not retried
        ok = c.judge_all(QUESTIONS[:2], ANSWERS)
        assert server.authorizations[-1] == f"Bearer {secret}"
    assert failed.error and secret not in failed.error and "HTTP 401" in failed.error
    assert all(j.score is not None for j in ok)
    for path in (tmp_path / "cache").rglob("*"):
        assert secret not in path.read_text()
    with pytest.raises(ConfigError, match="JUDGE_KEY") as err:
        client("http://127.0.0.1:9/v1", tmp_path, api_key_env="JUDGE_KEY", environ={})
    assert secret not in str(err.value)


def test_bad_question_files_name_the_line():
    with pytest.raises(ConfigError, match=r"q.jsonl:2: not a question"):
        parse_questions('{"question_id": 1, "category": "math", "turns": ["a", "b"]}\n'
                        '{"question_id": 2, "turns": ["a"]}\n', "q.jsonl")  # fmt: skip
    with pytest.raises(ConfigError, match="appears twice"):
        parse_questions('{"question_id": 1, "category": "x", "turns": ["a"]}\n' * 2, "q")


@pytest.fixture()
def fastchat_mirror(tmp_path):
    """A local HTTP server laid out as raw.githubusercontent.com's FastChat data folder."""
    root = tmp_path / "mirror"
    (root / "mt_bench" / "reference_answer").mkdir(parents=True)
    files = {
        "mt_bench/question.jsonl": b'{"question_id": 101, "category": "reasoning", "turns": '
        b'["q1", "q2"]}\n{"question_id": 81, "category": "writing", "turns": ["w1", "w2"]}\n',
        "mt_bench/reference_answer/gpt-4.jsonl": b'{"question_id": 101, "choices": '
        b'[{"index": 0, "turns": ["r1", "r2"]}]}\n',
        "judge_prompts.jsonl": b'{"name": "single-v1"}\n',
    }
    for rel, body in files.items():
        (root / rel).write_bytes(body)
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, files
    httpd.shutdown()
    httpd.server_close()


def test_mt_bench_is_checked_against_its_pinned_sha256(fastchat_mirror, tmp_path, monkeypatch):
    url, root, files = fastchat_mirror
    # the mirror's files are not FastChat's: the pinned checksums refuse them
    with pytest.raises(ConfigError, match="not the pinned.*eval.questions=sample"):
        qmod.download_mt_bench(tmp_path / "dl", base_url=url)
    pinned = {name: (path, hashlib.sha256(files[path]).hexdigest())
              for name, (path, _) in qmod.MT_BENCH.items()}  # fmt: skip
    monkeypatch.setattr(qmod, "MT_BENCH", pinned)
    merged = qmod.download_mt_bench(tmp_path / "dl", base_url=url)
    qs = {q.question_id: q for q in load_questions(merged)}
    assert qs[101].reference == ("r1", "r2") and qs[81].reference is None
    (root / "judge_prompts.jsonl").write_bytes(b"tampered\n")  # intact copies are kept
    qmod.download_mt_bench(tmp_path / "dl", base_url=url)
    with pytest.raises(ConfigError, match="not the pinned"):
        qmod.download_mt_bench(tmp_path / "fresh", base_url=url)


def test_no_network_names_the_local_sample(tmp_path):
    with pytest.raises(ConfigError, match="cannot download.*eval.questions=sample"):
        qmod.download_mt_bench(tmp_path, base_url="http://127.0.0.1:9", timeout_s=2)


def test_the_judge_stops_asking_when_the_budget_left_is_spent(tmp_path):
    """budget.max_usd covers the judge: once its calls have cost what the run had left, the
    rest are not asked (counted as failed, named), and the cached ones still count."""

    def price(prompt: int, completion: int) -> float:
        return (prompt + completion) * 1e-3  # $ per token, high enough to run out

    with JudgeServer() as server:
        c = client(server.url, tmp_path, max_concurrency=1, budget_usd=1e-6, price=price)
        first = c.judge_single(QUESTIONS[0], 1, ANSWERS[1])  # under the cap: asked
        assert first.score is not None and c.stats.calls == 1
        assert price(c.stats.prompt_tokens, c.stats.completion_tokens) > 0
        rest = c.judge_all(QUESTIONS, ANSWERS)
        assert server.calls == 1  # no call past the cap
    assert rest[0].score == first.score  # from the cache: costs nothing, still counted
    assert all(j.score is None and "budget" in (j.error or "") for j in rest[1:])
    assert summarise(rest)["eval/judge_failed"] == len(rest) - 1
