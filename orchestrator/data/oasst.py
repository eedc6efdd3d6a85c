"""OpenAssistant message trees, checked: every message once, every parent present, no cycle, no
empty text.

oasst1 rows are messages (`message_id`, `parent_id`, `role`, `text`, `rank`, `deleted`,
`review_result`, `message_tree_id`); the SFT threads and the reward model's ranked groups are read
off the trees they form. A careless or hostile file breaks that silently: a cycle of parents
made the walk up a conversation grow without bound (killed at 24 GB), a missing parent trained
the orphan as a conversation of its own, a repeated `message_id` moved another tree's replies.
`build_forest` keeps only messages reachable from a root prompt and reports each problem as a
DataError naming the file, line and id, which the caller raises or skips and counts
(`data.on_error`). Memory and time are linear in the input.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.data.formats import DataError, Row


@dataclass
class Forest:
    by_id: dict[str, dict] = field(default_factory=dict)
    """Messages reachable from a root, by id."""
    children: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    roots: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)
    """Each message's file and line."""


def build_forest(rows: Iterable[Row]) -> tuple[Forest, list[DataError]]:
    """The checked trees of oasst1 message rows, and a DataError per problem: a malformed row,
    an empty text, a repeated id (the first one stays), a missing parent (the orphan's subtree
    is left out), a cycle of parents (left out). Deleted messages and messages that failed
    review are left out with their replies, as in the OA data pipeline."""
    kept, where, removed, problems = _read_messages(rows)
    forest = Forest(where=where)
    for mid, d in kept.items():
        parent = d.get("parent_id")
        if parent:
            forest.children[parent].append(mid)
        else:
            forest.roots.append(mid)
    # Reachable from a root: every message of a well-formed tree, nothing of a cycle or an orphan.
    todo = list(forest.roots)
    while todo:
        mid = todo.pop()
        forest.by_id[mid] = kept[mid]
        todo.extend(c for c in forest.children.get(mid, ()) if c in kept)
    problems += _unreachable(kept, set(forest.by_id), where, removed)
    return forest, problems


def _read_messages(
    rows: Iterable[Row],
) -> tuple[dict[str, dict], dict[str, str], set[str], list[DataError]]:
    """(kept messages by id, each one's file and line, ids left out with their replies, the
    problems of single rows)."""
    problems: list[DataError] = []
    kept: dict[str, dict] = {}
    where: dict[str, str] = {}
    removed: set[str] = set()  # deleted, failed review, or empty: their replies go too
    for row in rows:
        d = row.data
        if not isinstance(d, dict) or not all(
            isinstance(d.get(k), str) for k in ("message_id", "role", "text")
        ):
            problems.append(DataError(f"{row.where}: expected an oasst1 message object with "
                                      "string fields message_id, role and text"))  # fmt: skip
            continue
        mid = d["message_id"]
        problem = _row_problem(d, row.where, where if mid in kept or mid in removed else None)
        if problem is not None:
            problems.append(problem)
            if problem.args[0].endswith("has an empty text"):
                removed.add(mid)
            continue
        if d.get("deleted") or d.get("review_result") is False:
            removed.add(mid)
            continue
        kept[mid] = d
        where[mid] = row.where
    return kept, where, removed, problems


def _row_problem(d: dict, at: str, seen_where: dict[str, str] | None) -> DataError | None:
    """What is wrong with one message on its own (None: nothing). `seen_where` is given when
    its id was seen before."""
    mid = d["message_id"]
    if d["role"] not in ("prompter", "assistant"):
        return DataError(f"{at}: role={d['role']!r}; valid: ['assistant', 'prompter']")
    if seen_where is not None:
        first = seen_where.get(mid, "an earlier line")
        return DataError(f"{at}: message_id {mid!r} repeats the one at {first}; the first is kept")
    if d.get("parent_id") is not None and not isinstance(d["parent_id"], str):
        return DataError(f"{at}: message {mid!r}: parent_id must be a string")
    if not (d.get("deleted") or d.get("review_result") is False) and not d["text"].strip():
        return DataError(f"{at}: message {mid!r} has an empty text")
    return None


def _unreachable(
    kept: dict[str, dict], reached: set[str], where: dict[str, str], removed: set[str]
) -> list[DataError]:
    """One problem per part no root reaches: a cycle of parents, or a parent that is nowhere
    (a removed parent's replies go quietly)."""
    problems: list[DataError] = []
    reported: set[str] = set()
    for mid in kept:
        if mid in reached or mid in reported:
            continue
        chain: list[str] = []
        seen: set[str] = set()
        node: str | None = mid
        while node is not None and node in kept and node not in seen and node not in reported:
            seen.add(node)
            chain.append(node)
            node = kept[node].get("parent_id")
        reported.update(chain)
        if node in reported and node not in seen:  # joins a part already named
            continue
        if node is not None and node in seen:  # a cycle of parents
            loop = chain[chain.index(node) :]
            problems.append(DataError(
                f"{where[node]}: message {node!r} is in a cycle of parents "
                f"({' -> '.join(loop[:6])}{' -> ...' if len(loop) > 6 else ''}); left out"
            ))  # fmt: skip
        elif node is not None and node not in removed:  # a parent that is nowhere
            top = chain[-1]
            problems.append(DataError(
                f"{where[top]}: message {top!r} names parent_id {node!r}, which is not in the "
                "data; its replies are left out (not trained as a conversation of their own)"
            ))  # fmt: skip
    return problems
