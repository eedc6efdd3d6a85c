"""Question sets in MT-bench's format, and the full MT-bench fetched from a pinned commit.

A question set is JSON lines, one question per line, as FastChat's `fastchat/llm_judge` reads
them: `{"question_id": 81, "category": "writing", "turns": [first, second]}`, with an optional
`"reference": [answer to first, answer to second]` for the categories judged against a reference
(math, reasoning, coding). FastChat keeps those references in a separate file
(`reference_answer/gpt-4.jsonl`); `download_mt_bench` merges them in.

The repository ships only a small set written here in that format (data/eval/questions_sample.
jsonl). The 80 MT-bench questions, their reference answers and FastChat's judge prompts are
downloaded at evaluation time from the commit in `MT_BENCH` and checked against the SHA-256
recorded there (docs/facts/mt_bench.md).
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.paths import REPO_ROOT

SAMPLE = REPO_ROOT / "data" / "eval" / "questions_sample.jsonl"
"""The local question set (written for this project in MT-bench's format)."""

CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
              "humanities")  # fmt: skip
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
               "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}  # fmt: skip
"""FastChat's sampling temperature per category (fastchat/llm_judge/common.py
`temperature_config`); 0 is greedy."""
NEEDS_REFERENCE = ("math", "reasoning", "coding")
"""Categories judged against a reference answer (FastChat's NEED_REF_CATS)."""

FASTCHAT_COMMIT = "0e6d3e4beaab66f4d3f93db72541a4abab8af28d"
RAW = f"https://raw.githubusercontent.com/lm-sys/FastChat/{FASTCHAT_COMMIT}/fastchat/llm_judge/data"
MT_BENCH = {
    "question.jsonl": (
        "mt_bench/question.jsonl",
        "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
    ),
    "reference.jsonl": (
        "mt_bench/reference_answer/gpt-4.jsonl",
        "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
    ),
    "judge_prompts.jsonl": (
        "judge_prompts.jsonl",
        "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6",
    ),
}
"""Local name -> (path under RAW, SHA-256 of the file at FASTCHAT_COMMIT)."""


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None

    @property
    def temperature(self) -> float:
        return TEMPERATURE.get(self.category, 0.7)


def parse_questions(text: str, where: str) -> list[Question]:
    """Questions from JSON lines; a bad line is a ConfigError naming `where`, the line and the
    expected shape."""
    out: list[Question] = []
    seen: set[int] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            qid, category, turns = row["question_id"], row["category"], row["turns"]
            ref = row.get("reference")
            ok = (isinstance(qid, int) and isinstance(category, str) and isinstance(turns, list)
                  and 1 <= len(turns) <= 2 and all(isinstance(t, str) and t for t in turns)
                  and (ref is None or (isinstance(ref, list) and len(ref) == len(turns)
                                       and all(isinstance(r, str) for r in ref))))  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ConfigError(
                f"{where}:{n}: not a question in MT-bench's format; expected "
                '{"question_id": <int>, "category": <str>, "turns": [<str>, <str>], '
                '"reference": [<str>, <str>] (optional)}'
            )
        if qid in seen:
            raise ConfigError(f"{where}:{n}: question_id {qid} appears twice")
        seen.add(qid)
        out.append(Question(qid, category, tuple(turns), tuple(ref) if ref else None))
    if not out:
        raise ConfigError(f"{where}: no questions")
    return out


def load_questions(path: Path) -> list[Question]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"eval.questions: cannot read {path} ({e.strerror})") from None
    return parse_questions(text, str(path))


def download_mt_bench(dest: Path, base_url: str = RAW, timeout_s: float = 30.0) -> Path:
    """MT-bench's questions (with the reference answers merged in) and FastChat's judge
    prompts from the pinned commit into `dest`, each checked against its SHA-256; returns the
    question file. Files already there and intact are not fetched again.

    Raises:
        ConfigError: no network, or a file whose SHA-256 is not the pinned one.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name, (path, sha) in MT_BENCH.items():
        target = dest / name
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha:
            continue
        url = f"{base_url}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - pinned URL
                body = r.read()
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise ConfigError(
                f"eval.questions=mt_bench: cannot download {url} ({getattr(e, 'reason', e)}); "
                f"without network use eval.questions=sample (the local set, {SAMPLE.name})"
            ) from None
        got = hashlib.sha256(body).hexdigest()
        if got != sha:
            raise ConfigError(
                f"eval.questions=mt_bench: {url} has SHA-256 {got[:16]}..., not the pinned "
                f"{sha[:16]}... (docs/facts/mt_bench.md); refusing it. Use "
                f"eval.questions=sample (the local set) or check the download"
            )
        target.write_bytes(body)
    merged = dest / "mt_bench.jsonl"
    refs = {}
    for line in (dest / "reference.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            refs[row["question_id"]] = row["choices"][0]["turns"]
    rows = []
    for line in (dest / "question.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row["question_id"] in refs:
                row["reference"] = refs[row["question_id"]]
            rows.append(json.dumps(row))
    merged.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return merged


def resolve_questions(spec: str, cache: Path) -> list[Question]:
    """`eval.questions`: `sample` (the shipped set), `mt_bench` (downloaded, checked) or a
    path to a JSON-lines file in the same format."""
    if spec == "sample":
        return load_questions(SAMPLE)
    if spec == "mt_bench":
        return load_questions(download_mt_bench(cache))
    return load_questions(Path(spec))
