"""Countdown problems generated here (no download), in TinyZero's row shape
(Jiayi-Pan/Countdown-Tasks-3to4: `target`, `nums`).

Each problem is solvable by construction: 3 or 4 numbers in [1, 99] are combined by a random
expression tree of + - * / whose every intermediate value is a positive integer, and the
target is its value (kept when 1 <= target <= 999). Seeded: the same arguments give the same
file on every machine.

    python -m orchestrator.data.countdown --rows 400 --seed 0 --out data/samples/countdown_sample.jsonl
    python -m orchestrator.data.countdown --rows 600 --seed 1 --solutions \
        --out data/samples/countdown_solutions.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def _combine(rng: random.Random, a: int, b: int) -> tuple[str, int] | None:
    op = rng.choice("+-*/")
    if op == "+":
        return op, a + b
    if op == "-":
        return (op, a - b) if a > b else None
    if op == "*":
        return op, a * b
    return (op, a // b) if b > 1 and a % b == 0 else None


def problem(rng: random.Random, max_target: int = 999) -> tuple[int, list[int], str, list[str]]:
    """(target, numbers, a solving equation, its steps) of one solvable problem."""
    while True:
        nums = [rng.randint(1, 99) for _ in range(rng.choice((3, 4)))]
        pool = [(n, str(n)) for n in nums]
        steps: list[str] = []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            (a, ea), (b, eb) = pool[i], pool[j]
            made = _combine(rng, a, b)
            if made is None:
                break
            op, v = made
            steps.append(f"{a} {op} {b} = {v}")
            pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [(v, f"({ea} {op} {eb})")]
        if len(pool) == 1 and 1 <= pool[0][0] <= max_target:
            return pool[0][0], nums, pool[0][1][1:-1], steps


def rows(n: int, seed: int) -> list[dict]:
    """Problems in TinyZero's row shape."""
    rng = random.Random(seed)
    return [{"target": t, "nums": nums} for t, nums, _, _ in (problem(rng) for _ in range(n))]


def solution_texts(n: int, seed: int) -> list[dict]:
    """Worked problems as text ({"text": prompt + reasoning + answer}) in the r1_zero template:
    the pretraining text of the local scale's base (conf/bases/tiny_llama_countdown.yaml), so
    that, like Qwen2.5-3B at full scale, the base RL starts from can already write the format
    and some arithmetic (R1-Zero's premise: RL from a capable base)."""
    from orchestrator.data.prompt_tasks import COUNTDOWN_QUESTION
    from orchestrator.data.prompts import r1_zero_prompt

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target, nums, equation, steps = problem(rng)
        prompt = r1_zero_prompt(COUNTDOWN_QUESTION.format(numbers=nums, target=target))
        out.append({"text": f"{prompt} {', '.join(steps)} </think> <answer> {equation} </answer>"})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--solutions", action="store_true", help="worked solutions as text rows")
    a = ap.parse_args(argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    made = solution_texts(a.rows, a.seed) if a.solutions else rows(a.rows, a.seed)
    a.out.write_text("".join(json.dumps(r) + "\n" for r in made))
    print(f"{a.rows} Countdown {'solutions' if a.solutions else 'problems'} -> {a.out}")


if __name__ == "__main__":
    main()
