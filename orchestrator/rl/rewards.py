"""Verifiable rewards: plain functions (completion text, answer text) -> float.

A completion is model output: untrusted text. Nothing here evaluates it as code; the Countdown
equation is parsed by `ast` and only numbers, + - * / and parentheses are computed.

- countdown (TinyZero, examples/reward_score/countdown.py): the last <answer>...</answer> of
  the completion must be an equation using each of the numbers exactly once that equals the
  target (within 1e-5): 1.0; an answer that is not: `format_score` (0.1); no answer: 0.
- math: the last <answer>, else the last number in the completion, equal to the reference
  answer after normalisation (commas, a trailing `.0`, surrounding `$`): 1.0, else 0.
- format: 1.0 when the completion closes its reasoning and gives one answer
  (`... </think> <answer> ... </answer>`), else 0.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Callable

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
FORMAT = re.compile(r"^.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
MAX_EQUATION_CHARS = 200


def last_answer(completion: str) -> str | None:
    found = ANSWER.findall(completion)
    return found[-1].strip() if found else None


_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}  # fmt: skip


def evaluate_equation(text: str) -> tuple[float, list[int]] | None:
    """(value, the integer literals used) of an arithmetic expression of integers, + - * / and
    parentheses; None for anything else (names, calls, powers, `=`, a division by zero)."""
    text = text.strip()
    if not text or len(text) > MAX_EQUATION_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return None
    used: list[int] = []

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("not an arithmetic expression of integers")

    try:
        return ev(tree.body), used
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def countdown(completion: str, answer: str, format_score: float = 0.1) -> float:
    truth = json.loads(answer)
    equation = last_answer(completion)
    if equation is None:
        return 0.0
    result = evaluate_equation(equation)
    if result is None:
        return format_score
    value, used = result
    if sorted(used) != sorted(truth["numbers"]) or abs(value - truth["target"]) > 1e-5:
        return format_score
    return 1.0


def normalise_number(text: str) -> str:
    t = text.strip().strip("$").replace(",", "").rstrip(".")
    try:
        x = float(t)
    except ValueError:
        return t.lower()
    return str(int(x)) if x == int(x) else repr(x)


def math_exact(completion: str, answer: str) -> float:
    given = last_answer(completion)
    if given is None:
        numbers = NUMBER.findall(completion)
        if not numbers:
            return 0.0
        given = numbers[-1]
    return 1.0 if normalise_number(given) == normalise_number(answer) else 0.0


def format_only(completion: str, answer: str) -> float:
    return 1.0 if FORMAT.match(completion) else 0.0


def reward_fn(name: str, format_score: float = 0.1) -> Callable[[str, str], float]:
    """The verifiable reward `name` (grpo.reward) as (completion, answer) -> float."""
    if name == "countdown":
        return lambda c, a: countdown(c, a, format_score)
    if name == "math":
        return math_exact
    if name == "format":
        return format_only
    raise ValueError(f"grpo.reward={name!r} is not a verifiable reward (countdown, math, format)")
