"""Instruction and chat formats of the spring-2023 runs beyond ShareGPT: rows -> `Sample`s
(alternating user/assistant turns, an optional input field, Koala's negative marker, a mixture
weight). How a sample becomes text and labels is its prompt style: `prompts.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.data.formats import DataError, Row, Turn, sharegpt_turns

EOS = None  # a piece whose text is None is the tokenizer's EOS token


@dataclass
class Sample:
    """One training sample: alternating user/assistant turns, plus the optional input/context
    field of instruction datasets."""

    turns: list[Turn]
    context: str = ""
    where: str = ""
    negative: bool = False
    """Koala's conditional training: the assistant turns are a worse/unhelpful answer (they get
    the negative marker "An Unhelpful Answer:" instead of "GPT:")."""
    weight: float = 1.0
    """Mixture weight of the sample's source (copies per epoch; see dataset.prepare_data)."""


@dataclass
class Piece:
    text: str | None
    trained: bool


def _where(row: Row, key: str | None = None) -> str:
    rid = row.data.get(key) if key and isinstance(row.data, dict) else None
    return row.where + (f" (id={rid})" if rid is not None else "")


def _field(row: Row, name: str, *, required: bool = True, key: str | None = None) -> str:
    data = row.data
    if not isinstance(data, dict):
        raise DataError(f"{row.where}: expected an object with field {name!r}")
    value = data.get(name)
    if value is None:
        if required:
            raise DataError(f"{_where(row, key)}: missing field {name!r}")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{_where(row, key)}: field {name!r} must be a string")
    return value


# ---------------------------------------------------------------------------------- adapters
def alpaca_samples(row: Row) -> list[Sample]:
    """{"instruction", "input" (may be empty), "output"} (tatsu-lab/alpaca, yahma/alpaca-cleaned)."""
    instruction, output = _field(row, "instruction"), _field(row, "output")
    if not instruction.strip():
        raise DataError(f"{row.where}: field 'instruction' is empty")
    return [
        Sample(
            [("user", instruction), ("assistant", output)],
            _field(row, "input", required=False),
            row.where,
        )
    ]


def dolly_samples(row: Row) -> list[Sample]:
    """{"instruction", "context", "response", "category"} (databricks/databricks-dolly-15k)."""
    instruction, response = _field(row, "instruction"), _field(row, "response")
    context = _field(row, "context", required=False)
    return [Sample([("user", instruction), ("assistant", response)], context, row.where)]


def gpt4all_samples(row: Row) -> list[Sample]:
    """{"prompt", "response", "source"} (nomic-ai/gpt4all_prompt_generations)."""
    prompt, response = _field(row, "prompt"), _field(row, "response")
    return [Sample([("user", prompt), ("assistant", response)], "", row.where)]


BAIZE_HEADER = "The conversation between human and AI assistant.\n"
BAIZE_HUMAN, BAIZE_AI = "[|Human|] ", "[|AI|] "


def baize_samples(row: Row) -> list[Sample]:
    """{"input": "The conversation between human and AI assistant.\\n[|Human|] ...\\n[|AI|] ...
    \\n[|Human|] "}: the self-chat transcript, split into turns (the template puts it back
    together byte for byte)."""
    text = _field(row, "input")
    if not text.startswith(BAIZE_HEADER):
        raise DataError(f"{row.where}: field 'input' must start with {BAIZE_HEADER!r}")
    body = text[len(BAIZE_HEADER) :]
    turns: list[Turn] = []
    for j, chunk in enumerate(body.split("\n")):
        if chunk.startswith(BAIZE_HUMAN) or chunk == BAIZE_HUMAN.strip():
            turns.append(("user", chunk[len(BAIZE_HUMAN) :]))
        elif chunk.startswith(BAIZE_AI):
            turns.append(("assistant", chunk[len(BAIZE_AI) :]))
        elif turns:  # a message spanning several lines
            role, prev = turns[-1]
            turns[-1] = (role, prev + "\n" + chunk)
        else:
            raise DataError(f"{row.where}: line {j + 2} of 'input' is not a [|Human|] turn")
    # The transcript ends with an empty "[|Human|] " prompt for the next turn.
    if turns and turns[-1] == ("user", ""):
        turns = turns[:-1]
    _check_alternating(turns, row.where)
    return [Sample(turns, "", row.where)]


def _check_alternating(turns: list[Turn], where: str) -> None:
    if not turns:
        raise DataError(f"{where}: empty conversation")
    for j, (role, _) in enumerate(turns):
        if role != ("user" if j % 2 == 0 else "assistant"):
            raise DataError(f"{where}: roles must alternate user/assistant; turn {j} is {role}")
    if turns[-1][0] != "assistant":
        raise DataError(f"{where}: conversation ends on a user turn")


def oasst_threads(rows: Iterable[Row]) -> list[Sample | DataError]:
    """oasst1 messages (message_id, parent_id, role prompter/assistant, text, rank, deleted,
    review_result, message_tree_id) -> one thread per tree, as the OA SFT data did for its
    "best" threads: from the root prompt, follow the highest-ranked assistant reply (rank 0 is
    best), then the first prompter follow-up, until a reply has no follow-up. Deleted messages and
    messages that failed review are left out. The trees are checked first (data/oasst.py): each
    problem (a cycle, an orphan, a repeated id, an empty text) comes back as a DataError after
    the threads, for the caller to raise or skip and count."""
    from orchestrator.data.oasst import build_forest

    forest, problems = build_forest(rows)
    by_id, where, children, roots = forest.by_id, forest.where, forest.children, forest.roots

    def best(ids: list[str], role: str) -> str | None:
        ok = [i for i in ids if i in by_id and by_id[i]["role"] == role]
        if not ok:
            return None
        return min(
            ok,
            key=lambda i: (
                by_id[i].get("rank") is None,
                by_id[i].get("rank") or 0,
                ok.index(i),
            ),
        )

    samples = []
    for root in roots:
        if by_id[root]["role"] != "prompter":
            problems.append(DataError(f"{where[root]}: a tree must start with a prompter message"))
            continue
        turns: list[Turn] = []
        node: str | None = root
        while node is not None:
            turns.append(("user", by_id[node]["text"]))
            reply = best(children[node], "assistant")
            if reply is None:
                turns.pop()  # an unanswered prompt teaches nothing
                break
            turns.append(("assistant", by_id[reply]["text"]))
            node = best(children[reply], "prompter")
        if turns:
            samples.append(Sample(turns, "", where[root]))
    if not samples:
        raise DataError(
            "oasst: no tree with an answered prompter message"
            + (f" (first problem: {problems[0]})" if problems else "")
        )
    return [*samples, *problems]


# ------------------------------------------------- Koala's sources (koala_data_pipeline, [R] wording)
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_turns(text: str, where: str) -> list[Turn]:
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(f"{where}: text before the first '\\n\\nHuman: ' turn")
    turns = [
        ("user" if who == "Human" else "assistant", body.strip())
        for who, body in zip(parts[1::2], parts[2::2], strict=True)
    ]
    _check_alternating(turns, where)
    empty = [i for i, (_, body) in enumerate(turns) if not body]
    if empty:
        raise DataError(f"{where}: turn {empty[0]} ({turns[empty[0]][0]}) is empty")
    return turns


def hh_rlhf_samples(row: Row) -> list[Sample]:
    """Anthropic/hh-rlhf {"chosen", "rejected"}: "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts.
    The chosen dialogue is a positive sample, the rejected one a negative sample."""
    chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
    return [
        Sample(hh_turns(chosen, f"{row.where} field 'chosen'"), "", row.where),
        Sample(hh_turns(rejected, f"{row.where} field 'rejected'"), "", row.where, negative=True),
    ]


def webgpt_ranked(row: Row) -> tuple[str, list[str]] | None:
    """openai/webgpt_comparisons {"question": {"full_text"}, "answer_0", "answer_1", "score_0",
    "score_1"}: (question, answers best first); None for a tie or a blank answer (neither is
    known to be better). Read by the SFT adapter below and by data/preference.py."""
    q = row.data.get("question") if isinstance(row.data, dict) else None
    if not isinstance(q, dict) or not isinstance(q.get("full_text"), str):
        raise DataError(f"{row.where}: missing field 'question.full_text'")
    answers = [_field(row, "answer_0"), _field(row, "answer_1")]
    scores = [row.data.get("score_0"), row.data.get("score_1")]
    if not all(isinstance(x, int | float) for x in scores):
        raise DataError(f"{row.where}: fields 'score_0' and 'score_1' must be numbers")
    if scores[0] == scores[1] or not all(a.strip() for a in answers):
        return None
    good = 0 if scores[0] > scores[1] else 1
    return q["full_text"], [answers[good], answers[1 - good]]


def webgpt_samples(row: Row) -> list[Sample]:
    """The higher-scored answer is a positive sample, the other a negative one."""
    ranked = webgpt_ranked(row)
    if ranked is None:
        return []
    turns = [("user", ranked[0])]
    return [
        Sample(turns + [("assistant", ranked[1][0])], "", row.where),
        Sample(turns + [("assistant", ranked[1][1])], "", row.where, negative=True),
    ]


SUMMARIZE_PROMPT = "Summarize the following post.\n\nTitle: {title}\n\n{post}"


def summarize_samples(row: Row) -> list[Sample]:
    """openai/summarize_from_feedback comparisons {"info": {"post"|"article", "title"},
    "summaries": [{"text"}, {"text"}], "choice"}: the chosen summary is positive, the other
    negative."""
    d = row.data if isinstance(row.data, dict) else {}
    info, summaries, choice = d.get("info"), d.get("summaries"), d.get("choice")
    if not isinstance(info, dict):
        raise DataError(f"{row.where}: missing field 'info'")
    post = info.get("post") or info.get("article")
    if not isinstance(post, str) or not post.strip():
        raise DataError(f"{row.where}: missing field 'info.post' (or 'info.article')")
    if not (isinstance(summaries, list) and len(summaries) == 2 and choice in (0, 1)):
        raise DataError(f"{row.where}: expected 2 'summaries' and 'choice' 0 or 1")
    texts = [s.get("text") if isinstance(s, dict) else None for s in summaries]
    if not all(isinstance(t, str) for t in texts):
        raise DataError(f"{row.where}: missing field 'summaries[].text'")
    turns = [("user", SUMMARIZE_PROMPT.format(title=info.get("title") or "", post=post))]
    return [
        Sample(turns + [("assistant", texts[choice].strip())], "", row.where),
        Sample(turns + [("assistant", texts[1 - choice].strip())], "", row.where, negative=True),
    ]


def hc3_samples(row: Row) -> list[Sample]:
    """Hello-SimpleAI/HC3 {"question", "human_answers": [...], "chatgpt_answers": [...]}: every
    answer, human or ChatGPT, is a positive sample (Koala used both)."""
    question = _field(row, "question")
    out = []
    for key in ("human_answers", "chatgpt_answers"):
        answers = row.data.get(key)
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{row.where}: field {key!r} must be a list of strings")
        out += [
            Sample([("user", question), ("assistant", a)], "", row.where)
            for a in answers
            if a.strip()
        ]
    return out


OIG_TURN = re.compile(r"(?:^|\n)<(human|bot)>: ?")


def oig_samples(row: Row) -> list[Sample]:
    """LAION OIG {"text": "<human>: ...\\n<bot>: ...\\n<human>: ..."} (unified_*.jsonl)."""
    parts = OIG_TURN.split(_field(row, "text"))
    if parts[0].strip():
        raise DataError(f"{row.where}: field 'text' must start with '<human>: '")
    turns = [
        ("user" if who == "human" else "assistant", body.strip())
        for who, body in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if turns and turns[-1][0] == "user":
        turns = turns[:-1]  # a trailing prompt without an answer
    _check_alternating(turns, row.where)
    return [Sample(turns, "", row.where)]


def sharegpt_samples(row: Row) -> list[Sample]:
    return [Sample(sharegpt_turns(row), "", row.where)]


def stack_exchange_samples(row: Row) -> list[Sample]:
    """lvwerra/stack-exchange-paired for SFT (StackLLaMA's data/finetune): the question and its
    preferred answer `response_j`."""
    q = _field(row, "question", key="qid")
    a = _field(row, "response_j", key="qid")
    if not q.strip() or not a.strip():
        raise DataError(f"{_where(row, 'qid')}: empty question or response_j")
    return [Sample([("user", q), ("assistant", a)], where=_where(row, "qid"))]


SAMPLE_ADAPTERS = {
    "sharegpt": sharegpt_samples,
    "alpaca": alpaca_samples,
    "dolly": dolly_samples,
    "gpt4all": gpt4all_samples,
    "baize": baize_samples,
    "hh_rlhf": hh_rlhf_samples,
    "webgpt": webgpt_samples,
    "summarize": summarize_samples,
    "hc3": hc3_samples,
    "oig": oig_samples,
    "stack_exchange_paired": stack_exchange_samples,
}
"""Row-wise formats. `oasst` works on the whole message table (oasst_threads)."""
SFT_FORMATS = (*SAMPLE_ADAPTERS, "oasst")
"""Every conversation format (the schema's data.format choices derive from it)."""
