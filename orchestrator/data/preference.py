"""Preference data: rows -> `RankedGroup`s (a conversation so far, and two or more replies to
it ranked best -> worst), the input of reward-model and DPO stages.

Formats, each in its real shape (shipped samples under data/samples/):
- stack_exchange_paired (lvwerra/stack-exchange-paired, StackLLaMA): `question`, `response_j`
  (preferred), `response_k`; one pair per row.
- hh_rlhf (Anthropic/hh-rlhf): `chosen`, `rejected` whole transcripts; as OpenAssistant's
  `anthropic_rlhf`: prefix = the chosen dialogue without its last reply, replies = (chosen's last,
  rejected's last); rows whose two transcripts differ before the last reply are bad rows.
- webgpt (openai/webgpt_comparisons): `question.full_text`, `answer_0/1`, `score_0/1`; ties
  dropped (neither is known to be better).
- oasst (oasst1 message trees, OpenAssistant's `oasst_export`): every prefix ending on a prompter
  turn with >= 2 ranked assistant replies, sorted by `rank`; deleted or unreviewed messages left
  out. `group.key` is the tree id: split train/held-out by it, or the metric leaks.
Sources: docs/facts/rlhf.md.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.data.formats import DataError, Row, Turn, read_rows
from orchestrator.data.instruct import Sample, hh_turns, webgpt_ranked
from orchestrator.data.prepared import DataManifest, write_prepared
from orchestrator.data.prompts import PieceTemplate, style
from orchestrator.data.templates import IGNORE_INDEX, Example, encode_spans
from orchestrator.data.tokenizer import load_or_train_tokenizer

log = logging.getLogger(__name__)

STACK_TEMPLATE = "Question: {question}\n\nAnswer: "
"""StackLLaMA's template in all three stages (`"Question: " + q + "\\n\\nAnswer: " + a`)."""


@dataclass
class RankedGroup:
    prompt: list[Turn]
    """The conversation so far, ending with a user turn."""
    replies: list[str]
    """Two or more replies, best first."""
    where: str
    key: str
    """What held-out splits are made by (the question, or the conversation tree)."""


def _text(row: Row, name: str) -> str:
    v = row.data.get(name) if isinstance(row.data, dict) else None
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{row.where}: missing or empty string field {name!r}")
    return v


def stack_exchange_pair(row: Row) -> list[RankedGroup]:
    q = _text(row, "question")
    good, other = _text(row, "response_j"), _text(row, "response_k")
    qid = row.data.get("qid", q)
    return [RankedGroup([("user", q)], [good, other], row.where, f"se:{qid}")]


def hh_pair(row: Row) -> list[RankedGroup]:
    chosen = hh_turns(_text(row, "chosen"), f"{row.where} field 'chosen'")
    rejected = hh_turns(_text(row, "rejected"), f"{row.where} field 'rejected'")
    if chosen[-1][0] != "assistant" or rejected[-1][0] != "assistant":
        raise DataError(f"{row.where}: both transcripts must end with an Assistant reply")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{row.where}: 'chosen' and 'rejected' differ before their last reply")
    prefix = chosen[:-1]
    return [RankedGroup(prefix, [chosen[-1][1], rejected[-1][1]], row.where, f"hh:{prefix[0][1]}")]


def webgpt_group(row: Row) -> list[RankedGroup]:
    ranked = webgpt_ranked(row)
    if ranked is None:
        return []
    question, answers = ranked
    return [RankedGroup([("user", question)], answers, row.where, f"webgpt:{question}")]


ROW_ADAPTERS = {"stack_exchange_paired": stack_exchange_pair, "hh_rlhf": hh_pair,
                "webgpt": webgpt_group}  # fmt: skip
FORMATS = (*ROW_ADAPTERS, "oasst")


def oasst_groups(rows: Iterable[Row]) -> list[RankedGroup | DataError]:
    """Every prefix of every tree that ends on a prompter message with >= 2 ranked replies. The
    trees are checked first (data/oasst.py); each problem follows the groups as a DataError."""
    from orchestrator.data.oasst import build_forest

    forest, problems = build_forest(rows)
    by_id, children, where = forest.by_id, forest.children, forest.where

    def path(mid: str) -> list[Turn]:
        turns: list[Turn] = []
        node: str | None = mid
        while node is not None and node in by_id:
            d = by_id[node]
            turns.append(("user" if d["role"] == "prompter" else "assistant", d["text"]))
            node = d.get("parent_id")
        return turns[::-1]

    groups = []
    for mid, d in by_id.items():
        if d["role"] != "prompter":
            continue
        ranked = [by_id[c] for c in children[mid] if c in by_id and by_id[c]["role"] == "assistant"
                  and isinstance(by_id[c].get("rank"), int)]  # fmt: skip
        if len(ranked) < 2:
            continue
        ranked.sort(key=lambda c: c["rank"])
        tree = str(d.get("message_tree_id") or mid)
        groups.append(RankedGroup(path(mid), [c["text"] for c in ranked], where[mid], tree))
    return [*groups, *problems]


def read_groups(
    source: str,
    fmt: str,
    max_rows: int | None = None,
    split: str = "train",
    data_dir: str | None = None,
) -> Iterator[RankedGroup | DataError]:
    """The ranked groups of a source; a bad row is yielded as its DataError (naming the file
    and line), for the caller to raise or skip and count."""
    if fmt == "oasst":
        rows = [r for r in read_rows(source, split, max_rows, data_dir)]
        bad = [r for r in rows if isinstance(r, DataError)]
        yield from bad
        try:
            yield from oasst_groups(r for r in rows if not isinstance(r, DataError))
        except DataError as e:
            yield e
        return
    if fmt not in ROW_ADAPTERS:
        raise DataError(f"preference format {fmt!r} unknown; valid: {list(FORMATS)}")
    for row in read_rows(source, split, max_rows, data_dir):
        if isinstance(row, DataError):
            yield row
            continue
        try:
            yield from ROW_ADAPTERS[fmt](row)
        except DataError as e:
            yield e


# ------------------------------------------------------------------------------ preparation
def reply_example(template, prompt: list[Turn], reply: str, max_seq_len: int) -> Example | None:
    """The prompt and one reply as one example, labels only on the reply. Prompt and reply are
    tokenized apart and joined (as TRL's DPO and PPO do): the prompt's tokens are exactly what
    a PPO stage generates from, and no reply character merges into the last prompt token.
    None when it does not fit: a pair is compared whole or not at all (TRL's reward script
    filters long pairs out the same way)."""
    pieces = template.style.render(Sample(turns=[*prompt, ("assistant", reply)]))
    last_prompt = max(i for i, p in enumerate(pieces) if not p.trained)
    head, _ = encode_spans(template.tok, [(p.text, False) for p in pieces[: last_prompt + 1]],
                           template.bos)  # fmt: skip
    tail, _ = encode_spans(template.tok, [(p.text, True) for p in pieces[last_prompt + 1 :]], [])
    ids = head + tail
    if len(ids) > max_seq_len or not tail:
        return None
    return Example(ids, [IGNORE_INDEX] * len(head) + tail)


def held_out(key: str, fraction: float) -> bool:
    """The held-out split by group key (question, conversation tree): stable across runs and
    machines, and no key on both sides (an OA tree's prefixes share replies)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h % 1_000_000 < fraction * 1_000_000


def build_preference_prepared(
    cfg, folder: Path, key: str = "", identity: dict[str, Any] | None = None
) -> DataManifest:
    """Tokenize ranked groups into a prepared data folder: each group's replies are consecutive
    examples, best first, with `groups.npy` naming each example's group. Prompt data
    (data.kind=prompts) is a group of one: the prompt and its answer as the reply, the answers
    also kept as text in `answers.json` (what the rewards read). Bad rows raise or are
    skipped and counted (data.on_error) as elsewhere; groups with a reply over data.max_seq_len
    are skipped and counted.

    Raises:
        DataError: a bad row (unless data.on_error=skip), or fewer than 2 usable groups.
    """
    st = style(cfg.template)
    prompts = cfg.kind == "prompts"

    def texts() -> Iterator[str]:
        for g in _groups(cfg):
            if isinstance(g, RankedGroup):
                for r in g.replies:
                    yield from st.bpe_texts(Sample(turns=[*g.prompt, ("assistant", r)]))

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, tok_dir = load_or_train_tokenizer(
            Path(tmp) / "tokenizer", cfg.tokenizer, cfg.tokenizer_vocab_size, texts=texts,
            special=st.special_tokens,
        )  # fmt: skip
        t = _Tokenized(PieceTemplate(cfg.template, tokenizer), cfg.max_seq_len, cfg.eval_fraction)
        for g in _groups(cfg):
            if isinstance(g, DataError):
                if cfg.on_error == "raise":
                    raise DataError(f"{g} (set data.on_error=skip to skip bad rows)") from None
                t.rows, t.skipped = t.rows + 1, t.skipped + 1
                log.warning("skipping bad row: %s", g)
            else:
                t.add(g)
        if t.too_long:
            log.warning("%d groups skipped: a reply over data.max_seq_len=%d tokens", t.too_long,
                        cfg.max_seq_len)  # fmt: skip
        if t.n_groups < 2 or not t.train_idx:
            raise DataError(
                f"data.source={cfg.source!r}: {t.n_groups} usable ranked groups in {t.rows} rows "
                f"({t.too_long} over data.max_seq_len={cfg.max_seq_len}); need at least 2"
            )
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = (
                tokenizer.unk_token_id
                if tokenizer.unk_token_id is not None
                else tokenizer.eos_token_id
            )
        return write_prepared(
            folder, key=key, examples=t.examples, train_index=t.train_idx,
            eval_index=t.eval_idx, tokenizer_dir=tok_dir, vocab_size=len(tokenizer),
            pad_id=int(pad_id), num_rows=t.rows, skipped_rows=t.skipped + t.too_long,
            identity=identity or {}, groups=t.group_of, answers=t.answers if prompts else None,
        )  # fmt: skip


def _groups(cfg) -> Iterator[RankedGroup | DataError]:
    """The data's ranked groups; prompt data (data.kind=prompts) as groups of one reply, the
    prompt's answer (also kept apart as text)."""
    if cfg.kind == "prompts":
        from orchestrator.data.prompt_tasks import read_tasks

        return (
            t if isinstance(t, DataError) else RankedGroup(t.prompt, [t.answer], t.where, t.key)
            for t in read_tasks(cfg.source, cfg.format, cfg.max_examples, cfg.split,
                                cfg.data_dir)
        )  # fmt: skip
    return read_groups(cfg.source, cfg.format, cfg.max_examples, cfg.split, cfg.data_dir)


@dataclass
class _Tokenized:
    """Ranked groups tokenized as they come: each group's replies consecutive examples, best
    first, on the side of the split its key falls on; a group with a reply too long for
    max_seq_len skipped whole and counted."""

    template: PieceTemplate
    max_seq_len: int
    eval_fraction: float
    examples: list[Example] = field(default_factory=list)
    group_of: list[int] = field(default_factory=list)
    """The group of every example."""
    train_idx: list[int] = field(default_factory=list)
    eval_idx: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    """Each group's best reply, as text."""
    rows: int = 0
    skipped: int = 0
    too_long: int = 0
    n_groups: int = 0

    def add(self, g: RankedGroup) -> None:
        self.rows += 1
        replies = [reply_example(self.template, g.prompt, r, self.max_seq_len) for r in g.replies]
        if any(e is None for e in replies):
            self.too_long += 1
            return
        side = self.eval_idx if held_out(g.key, self.eval_fraction) else self.train_idx
        for e in replies:
            side.append(len(self.examples))
            self.examples.append(e)  # type: ignore[arg-type]
            self.group_of.append(self.n_groups)
        self.answers.append(g.replies[0])
        self.n_groups += 1
