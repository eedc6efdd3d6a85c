"""An LLM judge over any OpenAI-compatible chat endpoint, in FastChat's llm_judge formats.

Single-answer grading asks for a rating 1-10 written `[[rating]]`; pairwise comparison asks for
`[[A]]`, `[[B]]` or `[[C]]` (tie) and is played twice with the answers' positions swapped, a
pair of verdicts that disagree counting as a tie (as FastChat's show_result.py counts them).
The prompts are this project's own (PROMPT_VERSION), in those output formats; the parsing
follows FastChat's (common.py: `[[x]]`, else `[x]`), stricter where a reply is ambiguous: two
different ratings, a rating outside 1-10, or both `[[A]]` and `[[B]]` are unparseable. An
unparseable or failed judgment is counted and shown, never dropped silently.

The client caches every judgment by (prompt version, judge model, question, turn, answers'
hash), so a relaunch or a second evaluation of the same answers makes no call; retries 429,
5xx and timeouts with exponential backoff (honouring Retry-After); spaces requests to at most
`requests_per_s`; and runs at most `max_concurrency` at once. The API key is read from the
environment variable the config names, sent in the Authorization header and nowhere else: not
in the cache, errors, logs or MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.evaluation.questions import NEEDS_REFERENCE, Question

PROMPT_VERSION = "orchestrator-judge-v1"

_SINGLE_SYSTEM = (
    "You are grading one reply of an AI assistant. Consider whether it is correct, helpful, "
    "relevant, detailed enough and clearly written{ref_note}. First explain your grade in a "
    "few sentences, as neutrally as you can. Then give the grade, an integer from 1 (useless) "
    "to 10 (excellent), in double square brackets on its own line, like this: Rating: [[5]]"
)
_PAIR_SYSTEM = (
    "You are comparing the replies of two AI assistants, A and B, to the same user. Decide "
    "which reply serves the user better: correctness, helpfulness, relevance, depth and "
    "clarity{ref_note}. The order in which the replies appear and their length must not "
    "sway you. Explain briefly, then end with exactly one verdict: [[A]] if A is better, "
    "[[B]] if B is better, [[C]] for a tie."
)
_REF_NOTE = "; a reference answer is given: a reply that contradicts it is wrong"

_ONE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_ONE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(text: str) -> float | None:
    """The rating in `[[x]]` (else `[x]`), None when missing, outside 1-10 or ambiguous."""
    found = _ONE.findall(text) or _ONE_BACKUP.findall(text)
    values = {float(v) for v in found}
    if len(values) != 1:
        return None
    (value,) = values
    return value if 1.0 <= value <= 10.0 else None


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from `[[A]]`, `[[B]]`, `[[C]]`; None when missing or ambiguous."""
    marks = {m for m in ("[[A]]", "[[B]]", "[[C]]") if m in text}
    if len(marks) != 1:
        return None
    return {"[[A]]": "A", "[[B]]": "B", "[[C]]": "tie"}[marks.pop()]


def _conversation(q: Question, turn: int, answers: list[str], label: str = "") -> str:
    """The exchange up to `turn` (1-based) as the judge reads it."""
    parts = []
    for t in range(turn):
        parts.append(f"[User, turn {t + 1}]\n{q.turns[t]}")
        parts.append(f"[Assistant{label}, turn {t + 1}]\n{answers[t]}")
    return "\n\n".join(parts)


def single_messages(q: Question, turn: int, answers: list[str]) -> list[dict[str, str]]:
    ref = q.reference if q.category in NEEDS_REFERENCE and q.reference else None
    system = _SINGLE_SYSTEM.format(ref_note=_REF_NOTE if ref else "")
    user = _conversation(q, turn, answers)
    if ref:
        user = f"[Reference answer to turn {turn}]\n{ref[turn - 1]}\n\n{user}"
    user += f"\n\nGrade the assistant's reply to turn {turn}."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def pair_messages(q: Question, turn: int, a: list[str], b: list[str]) -> list[dict[str, str]]:
    ref = q.reference if q.category in NEEDS_REFERENCE and q.reference else None
    system = _PAIR_SYSTEM.format(ref_note=_REF_NOTE if ref else "")
    user = _conversation(q, turn, a, " A") + "\n\n" + _conversation(q, turn, b, " B")
    if ref:
        user = f"[Reference answer to turn {turn}]\n{ref[turn - 1]}\n\n{user}"
    user += f"\n\nCompare the replies of A and B to turn {turn}."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@dataclass
class Judgment:
    kind: str
    """single | pair"""
    question_id: int
    category: str
    turn: int
    score: float | None = None
    """single: the rating 1-10 (None: unparseable or failed)."""
    winner: str | None = None
    """pair: 'ours', 'baseline' or 'tie' after both orders (None: unparseable or failed)."""
    texts: list[str] = field(default_factory=list)
    """The judge's replies (two for a pair)."""
    error: str | None = None
    """Why there is no judgment: the call failed after its retries, or a reply had no
    parseable verdict ('unparseable')."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    """Calls made for it now (0 when every part came from the cache)."""


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int


class JudgeError(RuntimeError):
    """A call that failed after its retries (the message names the URL and status, never the
    key)."""


@dataclass
class JudgeStats:
    calls: int = 0
    cached: int = 0
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JudgeClient:
    """Calls a chat-completions endpoint as the judge (see the module docstring)."""

    def __init__(
        self,
        url: str,
        model: str,
        cache_dir: Path,
        api_key_env: str | None = None,
        max_concurrency: int = 4,
        requests_per_s: float = 5.0,
        max_retries: int = 4,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        max_tokens: int = 1024,
        environ: Mapping[str, str] | None = None,
        budget_usd: float | None = None,
        price: Callable[[int, int], float] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._key = None
        if api_key_env:
            self._key = env.get(api_key_env)
            if not self._key:
                raise ConfigError(
                    f"eval.judge.api_key_env={api_key_env}: that environment variable is not "
                    "set (it holds the judge's API key; the key itself never goes in a config)"
                )
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model, self.max_concurrency = model, max(1, max_concurrency)
        self.max_retries, self.timeout_s, self.backoff_s = max_retries, timeout_s, backoff_s
        self.max_tokens = max_tokens
        self._interval = 1.0 / requests_per_s if requests_per_s > 0 else 0.0
        self._next_start = 0.0
        self._lock = threading.Lock()
        self.stats = JudgeStats()
        # No new call once `price(prompt tokens, completion tokens)` of the calls made reaches
        # `budget_usd` (calls already in flight finish: at most max_concurrency calls over).
        self.budget_usd, self._price = budget_usd, price
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._cache_file = cache_dir / "judgments.jsonl"
        self._cache: dict[str, dict[str, Any]] = {}
        if self._cache_file.exists():
            for line in self._cache_file.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line: that judgment is asked again

    # ------------------------------------------------------------------ one call
    def _wait_turn(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
        if start > now:
            time.sleep(start - now)

    def complete(self, messages: list[dict[str, str]]) -> Reply:
        """One chat completion at temperature 0, retried on 429, 5xx and timeouts."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode()  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            self._wait_turn()
            delay = self.backoff_s * 2**attempt
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers)
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:  # noqa: S310
                    out = json.loads(r.read())
                with self._lock:
                    self.stats.calls += 1
                usage = out.get("usage") or {}
                return Reply(str(out["choices"][0]["message"]["content"]),
                             int(usage.get("prompt_tokens", 0)),
                             int(usage.get("completion_tokens", 0)))  # fmt: skip
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code != 429 and e.code < 500:
                    break  # 4xx other than 429: asking again will not help
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.isdigit():
                    delay = min(float(retry_after), 60.0)
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                last = type(getattr(e, "reason", e)).__name__
            except (ValueError, KeyError, IndexError, TypeError):
                last = "a reply that is not a chat completion"
                break
            if attempt < self.max_retries:
                with self._lock:
                    self.stats.retries += 1
                time.sleep(delay)
        with self._lock:
            self.stats.failed += 1
        raise JudgeError(f"judge {self.url}: {last} after {attempt + 1} attempt(s)")

    # ------------------------------------------------------------------ cached calls
    def _key_of(self, kind: str, q: Question, turn: int, *answers: list[str]) -> str:
        digest = hashlib.sha256(json.dumps([a[:turn] for a in answers]).encode()).hexdigest()
        raw = json.dumps([PROMPT_VERSION, self.model, kind, q.question_id, turn, digest])
        return hashlib.sha256(raw.encode()).hexdigest()

    def _cached_call(self, key: str, messages: list[dict[str, str]]) -> tuple[Reply, bool]:
        hit = self._cache.get(key)
        if hit is not None:
            with self._lock:
                self.stats.cached += 1
            return Reply(hit["text"], hit["prompt_tokens"], hit["completion_tokens"]), True
        if self.over_budget():
            with self._lock:
                self.stats.failed += 1
            raise JudgeError(
                f"judge {self.url}: not asked, the budget left for judging (${self.budget_usd:.4f},"
                " budget.max_usd) is spent"
            )
        reply = self.complete(messages)
        row = {"key": key, **asdict(reply)}
        with self._lock:
            self.stats.prompt_tokens += reply.prompt_tokens
            self.stats.completion_tokens += reply.completion_tokens
            self._cache[key] = row
            with self._cache_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        return reply, False

    def over_budget(self) -> bool:
        if self.budget_usd is None or self._price is None:
            return False
        with self._lock:
            spent = self._price(self.stats.prompt_tokens, self.stats.completion_tokens)
        return spent >= self.budget_usd

    def judge_single(self, q: Question, turn: int, answers: list[str]) -> Judgment:
        j = Judgment("single", q.question_id, q.category, turn)
        try:
            reply, cached = self._cached_call(
                self._key_of("single", q, turn, answers), single_messages(q, turn, answers)
            )
        except JudgeError as e:
            j.error = str(e)
            return j
        j.texts, j.calls = [reply.text], 0 if cached else 1
        if not cached:
            j.prompt_tokens, j.completion_tokens = reply.prompt_tokens, reply.completion_tokens
        j.score = parse_rating(reply.text)
        if j.score is None:
            j.error = "unparseable"
        return j

    def judge_pair(self, q: Question, turn: int, ours: list[str], base: list[str]) -> Judgment:
        """Ours as A then as B; the two verdicts agree or it is a tie."""
        j = Judgment("pair", q.question_id, q.category, turn)
        verdicts = []
        for name, a, b in (("pair-ab", ours, base), ("pair-ba", base, ours)):
            try:
                reply, cached = self._cached_call(
                    self._key_of(name, q, turn, a, b), pair_messages(q, turn, a, b)
                )
            except JudgeError as e:
                j.error = str(e)
                return j
            j.texts.append(reply.text)
            if not cached:
                j.calls += 1
                j.prompt_tokens += reply.prompt_tokens
                j.completion_tokens += reply.completion_tokens
            verdicts.append(parse_verdict(reply.text))
        if None in verdicts:
            j.error = "unparseable"
            return j
        first = {"A": "ours", "B": "baseline", "tie": "tie"}[verdicts[0]]
        second = {"A": "baseline", "B": "ours", "tie": "tie"}[verdicts[1]]
        j.winner = first if first == second else "tie"
        return j

    def judge_all(
        self,
        questions: list[Question],
        answers: dict[int, list[str]],
        baseline: dict[int, list[str]] | None = None,
    ) -> list[Judgment]:
        """Every turn of every question with answers: single grades, or pairwise against
        `baseline` when given; at most max_concurrency calls at once."""
        tasks = [(q, t) for q in questions if q.question_id in answers
                 for t in range(1, len(q.turns) + 1)]  # fmt: skip

        def one(task: tuple[Question, int]) -> Judgment:
            q, t = task
            if baseline is None:
                return self.judge_single(q, t, answers[q.question_id])
            return self.judge_pair(q, t, answers[q.question_id], baseline[q.question_id])

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(one, tasks))


def summarise(judgments: list[Judgment]) -> dict[str, float]:
    """The eval/* metrics of a set of judgments: the mean rating overall, per turn and per
    category (single), FastChat's win rates (pair), and how many were unparseable or failed."""
    out: dict[str, float] = {}
    unparseable = sum(j.error == "unparseable" for j in judgments)
    failed = sum(j.error is not None and j.error != "unparseable" for j in judgments)
    out["eval/judgments"] = float(len(judgments))
    out["eval/judge_unparseable"] = float(unparseable)
    out["eval/judge_failed"] = float(failed)
    singles = [j for j in judgments if j.kind == "single" and j.score is not None]
    if singles:
        out["eval/mt_bench_score"] = sum(j.score for j in singles) / len(singles)  # type: ignore[misc]
        for key, pick in [(f"turn{t}", lambda j, t=t: j.turn == t) for t in (1, 2)] + [
            (c, lambda j, c=c: j.category == c) for c in sorted({j.category for j in singles})
        ]:
            got = [j.score for j in singles if pick(j)]
            if got:
                out[f"eval/mt_bench_{key}"] = sum(got) / len(got)  # type: ignore[arg-type]
    pairs = [j for j in judgments if j.kind == "pair" and j.winner is not None]
    if pairs:
        win = sum(j.winner == "ours" for j in pairs)
        loss = sum(j.winner == "baseline" for j in pairs)
        tie = len(pairs) - win - loss
        out["eval/pair_win_rate"] = win / len(pairs)
        out["eval/pair_loss_rate"] = loss / len(pairs)
        out["eval/pair_win_rate_adjusted"] = (win + 0.5 * tie) / len(pairs)
    return out
