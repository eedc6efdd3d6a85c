"""Generate the small ShareGPT-format sample that local runs train on.

The real Vicuna data (~70K ShareGPT conversations) was never released and no hub is reachable
here, so local runs use conversations in the exact ShareGPT JSON format, generated from templates
with structure a tiny model can learn (arithmetic, unit conversion, spelling, sorting, facts).
Conversation lengths vary from one to many rounds; some are longer than the local context so the
Vicuna splitter is exercised.

    python -m orchestrator.data.samples            # rewrites data/samples/sharegpt_sample.json
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


def main() -> None:
    out = Path(__file__).resolve().parents[2] / "data" / "samples" / "sharegpt_sample.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(make_conversations(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
