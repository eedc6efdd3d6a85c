"""Generate the small ShareGPT-format sample that local runs train on.

The real Vicuna data (~70K ShareGPT conversations) was never released and no hub is reachable
here, so local runs use conversations in the exact ShareGPT JSON format, generated from templates
with structure a tiny model can learn (arithmetic, unit conversion, spelling, sorting, facts).
Conversation lengths vary from one to many rounds; some are longer than the local context so the
Vicuna splitter is exercised.

    python -m orchestrator.data.samples            # rewrites every file in data/samples/
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Canada": "Ottawa",
    "Norway": "Oslo",
    "Egypt": "Cairo",
    "Chile": "Santiago",
    "India": "New Delhi",
    "Spain": "Madrid",
    "Ghana": "Accra",
    "Italy": "Rome",
    "Poland": "Warsaw",
    "Vietnam": "Hanoi",
    "Cuba": "Havana",
}
WORDS = [
    "apple",
    "river",
    "planet",
    "garden",
    "silver",
    "window",
    "rocket",
    "forest",
    "candle",
    "pencil",
    "harbor",
    "meadow",
    "violin",
    "thunder",
    "lantern",
    "compass",
    "marble",
]
UNITS = [
    ("kilometers", "meters", 1000),
    ("hours", "minutes", 60),
    ("kilograms", "grams", 1000),
    ("minutes", "seconds", 60),
    ("meters", "centimeters", 100),
    ("days", "hours", 24),
]
OPENERS = ["", "Hi! ", "Hello, ", "Quick question: ", "Can you help me? ", "Please tell me: "]


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op, name, val = rng.choice([("+", "plus", a + b), ("-", "minus", a - b), ("*", "times", a * b)])
    q = rng.choice(
        [f"What is {a} {name} {b}?", f"Compute {a} {op} {b}.", f"How much is {a} {op} {b}?"]
    )
    return q, f"{a} {op} {b} = {val}. So {a} {name} {b} is {val}."


def _units(rng: random.Random) -> tuple[str, str]:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(1, 40)
    q = f"How many {small} are in {n} {big}?"
    return (
        q,
        f"There are {factor} {small} in one of the {big}, so {n} {big} is {n} x {factor} = {n * factor} {small}.",
    )


def _spelling(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    if rng.random() < 0.5:
        return f"Spell the word '{w}' backwards.", f"The word '{w}' backwards is '{w[::-1]}'."
    letters = ", ".join(w.upper())
    return f"Spell '{w}' letter by letter.", f"Sure: {letters}. That is {len(w)} letters."


def _sorting(rng: random.Random) -> tuple[str, str]:
    xs = rng.sample(range(1, 100), rng.randint(3, 8))
    q = "Sort these numbers from smallest to largest: " + ", ".join(map(str, xs)) + "."
    steps = "\n".join(f"{i + 1}. {x}" for i, x in enumerate(sorted(xs)))
    return (
        q,
        f"Here they are in ascending order:\n\n{steps}\n\nThe smallest is {min(xs)} and the largest is {max(xs)}.",
    )


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    q = rng.choice(
        [f"What is the capital of {country}?", f"Which city is the capital of {country}?"]
    )
    return q, f"The capital of {country} is {CAPITALS[country]}."


TASKS = [_arithmetic, _units, _spelling, _sorting, _capital]


def make_conversations(n: int = 400, seed: int = 0) -> list[dict]:
    """`n` ShareGPT rows: {"id", "conversations": [{"from": "human"|"gpt", "value"}, ...]}."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        # Mostly short chats, a long tail of long ones (like ShareGPT).
        rounds = min(1 + int(rng.expovariate(0.45)), 16)
        turns = []
        for r in range(rounds):
            q, a = rng.choice(TASKS)(rng)
            if r == 0:
                q = rng.choice(OPENERS) + q
            turns.append({"from": "human", "value": q})
            turns.append({"from": "gpt", "value": a})
        rows.append({"id": f"sample_{i:05d}", "conversations": turns})
    return rows


CONTEXT_TASKS = [
    ("Summarize the passage in one sentence.", "The passage says that {w} is a common word."),
    ("What word does the passage mention?", "The passage mentions the word '{w}'."),
]


def make_instructions(n: int = 400, seed: int = 1) -> list[dict]:
    """Alpaca rows (alpaca_data.json): {"instruction", "input", "output"}; ~40% with an input."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.4:
            w = rng.choice(WORDS)
            instruction, answer = rng.choice(CONTEXT_TASKS)
            context = f"Among many words, the word {w} appears in this short text."
            rows.append(
                {"instruction": instruction, "input": context, "output": answer.format(w=w)}
            )
        else:
            q, a = rng.choice(TASKS)(rng)
            rows.append({"instruction": q, "input": "", "output": a})
    return rows


def make_dolly(n: int = 400, seed: int = 2) -> list[dict]:
    """databricks-dolly-15k rows: {"instruction", "context", "response", "category"}."""
    out = []
    for i, r in enumerate(make_instructions(n, seed)):
        category = "closed_qa" if r["input"] else "open_qa"
        out.append(
            {
                "instruction": r["instruction"],
                "context": r["input"],
                "response": r["output"],
                "category": category,
            }
        )
        if i % 50 == 7:  # an over-long record: Dolly drops these
            out[-1]["context"] = " ".join(WORDS) * 40
    return out


def make_prompt_generations(n: int = 400, seed: int = 3) -> list[dict]:
    """nomic-ai/gpt4all_prompt_generations rows: {"prompt", "response", "source"}."""
    rng = random.Random(seed)
    sources = ["unified_chip2", "stackoverflow", "laion/unified_chip2"]
    rows = []
    for _ in range(n):
        q, a = rng.choice(TASKS)(rng)
        rows.append(
            {"prompt": rng.choice(OPENERS) + q, "response": a, "source": rng.choice(sources)}
        )
    return rows


def make_self_chat(n: int = 300, seed: int = 4) -> list[dict]:
    """Baize self-chat rows (data/quora_chat_data.json): {"topic", "input"} with the transcript
    "The conversation between human and AI assistant.\n[|Human|] ...\n[|AI|] ...\n[|Human|] "."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        first, _ = rng.choice(TASKS)(rng)
        text = "The conversation between human and AI assistant.\n"
        for r in range(1 + int(rng.expovariate(0.6))):
            q, a = rng.choice(TASKS)(rng)
            text += f"[|Human|] {q if r else first}\n[|AI|] {a}\n"
            if r == 0:
                first = q
        rows.append({"topic": first, "input": text + "[|Human|] "})
    return rows


def make_oasst(n_trees: int = 150, seed: int = 5) -> list[dict]:
    """oasst1 message rows: message_id, parent_id, role, text, rank, deleted, review_result,
    message_tree_id, lang. Each prompt gets 1-3 ranked replies (rank 0 best, the others worse),
    some with a follow-up prompt."""
    rng = random.Random(seed)
    rows = []
    for t in range(n_trees):
        tree = f"tree{t:04d}"

        def msg(mid, parent, role, text, rank=None, tree=tree):
            rows.append(
                {
                    "message_id": mid,
                    "parent_id": parent,
                    "message_tree_id": tree,
                    "role": role,
                    "text": text,
                    "rank": rank,
                    "deleted": False,
                    "review_result": True,
                    "lang": "en",
                }
            )

        parent, depth = None, 1 + int(rng.expovariate(0.8))
        for d in range(depth):
            q, a = rng.choice(TASKS)(rng)
            pid = f"{tree}-p{d}"
            msg(pid, parent, "prompter", q)
            replies = 1 + rng.randrange(3)
            for k in range(replies):
                text = a if k == 0 else "I am not sure about that."
                msg(f"{tree}-a{d}-{k}", pid, "assistant", text, rank=k if replies > 1 else None)
            parent = f"{tree}-a{d}-0"
    return rows


# Koala's feedback sources: the same tasks, each with a good and a worse answer.
UNHELPFUL = ["I am not sure about that.", "I don't know.", "Please ask someone else.", "Maybe 7?"]


def _dialogue(rng: random.Random, rounds: int) -> list[tuple[str, str]]:
    return [rng.choice(TASKS)(rng) for _ in range(rounds)]


def make_hh(n: int = 120, seed: int = 6) -> list[dict]:
    """Anthropic/hh-rlhf rows {"chosen", "rejected"}: "\n\nHuman: ...\n\nAssistant: ..."; the
    two transcripts share every turn but the last answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        qa = _dialogue(rng, 1 + int(rng.expovariate(0.9)))
        prefix = "".join(f"\n\nHuman: {q}\n\nAssistant: {a}" for q, a in qa[:-1])
        last_q, last_a = qa[-1]
        head = f"{prefix}\n\nHuman: {last_q}\n\nAssistant: "
        rows.append({"chosen": head + last_a, "rejected": head + rng.choice(UNHELPFUL)})
    return rows


def make_stack_exchange_paired(n: int = 240, seed: int = 11) -> list[dict]:
    """lvwerra/stack-exchange-paired rows {"qid", "question", "date", "metadata", "response_j"
    (the preferred answer), "response_k"}: the better answer solves the question, the other is
    unhelpful or answers a different question."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q, good = rng.choice(TASKS)(rng)
        bad = rng.choice(UNHELPFUL) if rng.random() < 0.5 else rng.choice(TASKS)(rng)[1]
        qid = 1000 + i
        rows.append({
            "qid": qid, "question": q, "date": f"2023/{1 + i % 12:02d}/{1 + i % 28:02d}",
            "metadata": [f"https://stackoverflow.com/questions/{qid}"],
            "response_j": good, "response_k": bad,
        })  # fmt: skip
    return rows


def make_webgpt(n: int = 80, seed: int = 7) -> list[dict]:
    """openai/webgpt_comparisons rows: question.full_text, answer_0/1, score_0/1 (some ties)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q, a = rng.choice(TASKS)(rng)
        score = rng.choice([1.0, 0.5, 0.0])
        good_first = rng.random() < 0.5
        answers = [a, rng.choice(UNHELPFUL)] if good_first else [rng.choice(UNHELPFUL), a]
        scores = [score, -score] if good_first else [-score, score]
        rows.append(
            {
                "question": {"full_text": q, "dataset": "eli5"},
                "quotes_0": {"title": [], "extract": []},
                "answer_0": answers[0],
                "tokens_0": [],
                "score_0": scores[0],
                "quotes_1": {"title": [], "extract": []},
                "answer_1": answers[1],
                "tokens_1": [],
                "score_1": scores[1],
            }
        )
    return rows


def make_summarize(n: int = 60, seed: int = 8) -> list[dict]:
    """openai/summarize_from_feedback comparisons rows: info{id, post, title, subreddit},
    summaries[{text, policy}], choice."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        w1, w2 = rng.sample(WORDS, 2)
        post = f"Today I found a {w1} next to a {w2}. The {w1} was old, but the {w2} was new."
        good = f"Found an old {w1} next to a new {w2}."
        bad = rng.choice(UNHELPFUL)
        choice = rng.randrange(2)
        summaries = [{"text": good, "policy": "ref"}, {"text": bad, "policy": "sup"}]
        if choice == 1:
            summaries.reverse()
        rows.append(
            {
                "info": {
                    "id": f"t3_{i:05d}",
                    "post": post,
                    "title": f"A {w1}",
                    "subreddit": "tifu",
                },
                "summaries": summaries,
                "choice": choice,
                "worker": "w0",
                "batch": "batch0",
                "split": "train",
            }
        )
    return rows


def make_hc3(n: int = 80, seed: int = 9) -> list[dict]:
    """Hello-SimpleAI/HC3 rows: {"id", "question", "human_answers": [...], "chatgpt_answers": [...]}."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q, a = rng.choice(TASKS)(rng)
        rows.append(
            {
                "id": str(i),
                "question": q,
                "human_answers": [a.split(". ")[-1]],
                "chatgpt_answers": [a] if rng.random() < 0.6 else [],
            }
        )
    return rows


def make_oig(n: int = 80, seed: int = 10) -> list[dict]:
    """LAION OIG unified_*.jsonl rows: {"text": "<human>: ...\n<bot>: ...", "metadata"}."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        qa = _dialogue(rng, 1 + int(rng.expovariate(1.0)))
        text = "\n".join(f"<human>: {q}\n<bot>: {a}" for q, a in qa)
        rows.append(
            {"text": text, "metadata": {"source": "unified_grade_school_math_instructions"}}
        )
    return rows


SAMPLES = {
    "sharegpt_sample.json": (make_conversations, "json"),
    "alpaca_sample.json": (make_instructions, "json"),
    "dolly_sample.jsonl": (make_dolly, "jsonl"),
    "gpt4all_sample.jsonl": (make_prompt_generations, "jsonl"),
    "baize_sample.json": (make_self_chat, "json"),
    "oasst_sample.jsonl": (make_oasst, "jsonl"),
    "koala/hh_rlhf_sample.jsonl": (make_hh, "jsonl"),
    "koala/webgpt_sample.jsonl": (make_webgpt, "jsonl"),
    "koala/summarize_sample.jsonl": (make_summarize, "jsonl"),
    "koala/hc3_sample.jsonl": (make_hc3, "jsonl"),
    "koala/oig_sample.jsonl": (make_oig, "jsonl"),
    "stack_exchange_paired_sample.jsonl": (make_stack_exchange_paired, "jsonl"),
}


def main() -> None:
    folder = Path(__file__).resolve().parents[2] / "data" / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (make, kind) in SAMPLES.items():
        rows = make()
        if kind == "json":
            text = json.dumps(rows, indent=1, ensure_ascii=False) + "\n"
        else:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
        print(f"wrote {folder / name} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
