"""Prompt styles: one spec per template (litgpt's `PromptStyle`), the only place a template is
defined. A style says how a `Sample` is rendered (pieces of text, trained or not, and EOS
markers), how a trained model is prompted, where a generation stops, which of its keys become
special tokens, what happens to an example that is too long, and which data formats it reads.
The schema's `data.template` choices and the format/template table are derived from `STYLES`:
adding a recipe's template touches this file only.

What each original did, as implemented here:

| template     | text                                                        | trained               | too long            |
|--------------|-------------------------------------------------------------|-----------------------|---------------------|
| vicuna_v1.1  | "{system} USER: q ASSISTANT: a</s>USER: ..." (FastChat v1.1)  | replies + </s>        | split into whole rounds |
| alpaca       | Alpaca PROMPT_DICT (with/without input) + output + </s>     | output + </s>         | truncated (512)     |
| alpaca_lora  | templates/alpaca.json ("### Response:\\n") + output          | everything (train_on_inputs=True), no EOS (add_eos_token=False) | truncated (cutoff_len) |
| dolly        | Dolly INTRO / ### Instruction: / Input: / ### Response: ... ### End | response + "\\n\\n### End" | record dropped |
| gpt4all      | prompt + "\\n" + response (+ </s> unless truncated)          | response (+ </s>)     | prompt cut to max/2, then truncated |
| baize        | "The conversation between human and AI assistant.\\n[|Human|] ..." | everything (no prompt masking) | truncated (512) |
| oasst        | <|prompter|>q<|endoftext|><|assistant|>a<|endoftext|> ...   | assistant text + <|endoftext|> | truncated |
| r1_zero      | "...User: q\\nAssistant: Let me solve this step by step.\\n<think>" (TinyZero's base template, reworded) | the answer (prompt data: not trained) | truncated |
| koala        | "BEGINNING OF CONVERSATION: USER: q GPT:" a </s> USER: ... (negative samples: "An Unhelpful Answer:" for "GPT:") | answers + </s> | truncated |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.data.instruct import BAIZE_AI, BAIZE_HEADER, BAIZE_HUMAN, Piece, Sample
from orchestrator.data.templates import (
    IGNORE_INDEX,
    VICUNA_V11_SYSTEM,
    Example,
    VicunaV11Template,
    encode_spans,
)

EOS = None  # a piece whose text is None is the tokenizer's EOS token


class TooLong(StrEnum):
    """What a style does with an example over `data.max_seq_len` tokens."""

    TRUNCATE = "truncate"
    DROP = "drop"
    """Dolly: records at or over the model's max length are dropped."""
    PROMPT_HALF = "prompt_half"
    """GPT4All: the prompt is cut to max/2 tokens, EOS only if the response was not cut."""
    SPLIT_ROUNDS = "split_rounds"
    """Vicuna (FastChat): a conversation is split into examples of whole rounds."""


@dataclass(frozen=True)
class PromptStyle:
    name: str
    formats: tuple[str, ...]
    """The data formats it reads (a mixture is checked source by source)."""
    render: Callable[[Sample], list[Piece]]
    """The sample as pieces (before any length policy)."""
    prompt: Callable[[str], str]
    """The text a trained model is prompted with for one user message (sample generations)."""
    too_long: TooLong = TooLong.TRUNCATE
    train_on_inputs: bool = False
    """Every token is trained (Alpaca-LoRA's train_on_inputs, Baize): labels = ids."""
    stop_text: str | None = None
    """Where a generation ends besides EOS (Dolly's end key, OA's end token, Baize's next turn)."""
    special_tokens: tuple[str, ...] = ()
    """Keys added to a pretrained tokenizer as single tokens, as the original did."""
    source: str = ""
    """The original's file this follows."""

    def stop_ids(self, tok) -> list[int]:
        """Token ids besides EOS that end a generation: the stop text when the tokenizer has it
        as one (special) token (Dolly's and OA's keys); a longer stop text is cut in text."""
        if not self.stop_text:
            return []
        ids = tok.encode(self.stop_text, add_special_tokens=False)
        return ids if len(ids) == 1 else []

    def reply(self, text: str) -> str:
        """A generated reply up to its stop text, stripped."""
        return (text.split(self.stop_text)[0] if self.stop_text else text).strip()

    def bpe_texts(self, s: Sample) -> Iterable[str]:
        """What a local BPE tokenizer is trained on for this sample."""
        if self.too_long == TooLong.SPLIT_ROUNDS:
            return [text for _, text in s.turns]
        return [p.text for p in self.render(s) if p.text]

    def bpe_extra_texts(self) -> list[str]:
        """Fixed text a local BPE also learns (the system prompt and role keys)."""
        if self.too_long == TooLong.SPLIT_ROUNDS:
            return [VICUNA_V11_SYSTEM + " USER: ASSISTANT:"]
        return []


# ------------------------------------------------------------------------------------ styles
def _vicuna_render(s: Sample) -> list[Piece]:  # one segment; splitting: VicunaV11Template
    pieces = [Piece(VICUNA_V11_SYSTEM, False)]
    for j in range(0, len(s.turns), 2):
        user, reply = s.turns[j][1], s.turns[j + 1][1]
        pieces += [Piece(f"{' ' if j == 0 else ''}USER: {user} ASSISTANT:", False),
                   Piece(f" {reply}", True), Piece(EOS, True)]  # fmt: skip
    return pieces


ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)


def alpaca_prompt(instruction: str, context: str) -> str:
    if context.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=context)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def _alpaca_render(s: Sample) -> list[Piece]:  # stanford_alpaca train.py: target = output + eos
    (_, instruction), (_, output) = s.turns
    return [
        Piece(alpaca_prompt(instruction, s.context), False),
        Piece(output, True),
        Piece(EOS, True),
    ]


def _alpaca_lora_render(s: Sample) -> list[Piece]:  # templates/alpaca.json, train_on_inputs
    (_, instruction), (_, output) = s.turns
    return [Piece(alpaca_prompt(instruction, s.context) + "\n", True), Piece(output, True)]


DOLLY_INTRO = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)


def _dolly_render(s: Sample) -> list[Piece]:  # training/consts.py; keys are special tokens
    (_, instruction), (_, response) = s.turns
    prompt = f"{DOLLY_INTRO}\n\n### Instruction:\n{instruction}\n\n"
    if s.context.strip():
        prompt += f"Input:\n{s.context}\n\n"
    prompt += "### Response:\n"
    return [Piece(prompt, False), Piece(f"{response}\n\n### End", True)]


def _gpt4all_render(s: Sample) -> list[Piece]:  # data.py: prompt + "\n" masked, response trained
    (_, prompt), (_, response) = s.turns
    return [Piece(prompt + "\n", False), Piece(response, True), Piece(EOS, True)]


def _baize_render(s: Sample) -> list[Piece]:  # no prompt masking: the whole transcript
    text = BAIZE_HEADER
    for role, t in s.turns:
        text += (BAIZE_HUMAN if role == "user" else BAIZE_AI) + t + "\n"
    return [Piece(text + BAIZE_HUMAN, True)]


def _oasst_render(s: Sample) -> list[Piece]:
    pieces = []
    for role, t in s.turns:
        if role == "user":
            pieces.append(Piece(f"<|prompter|>{t}<|endoftext|>", False))
        else:
            pieces += [Piece("<|assistant|>", False), Piece(f"{t}<|endoftext|>", True)]
    return pieces


KOALA_HEADER = "BEGINNING OF CONVERSATION: "
KOALA_POSITIVE, KOALA_NEGATIVE = "GPT:", "An Unhelpful Answer:"


def _koala_render(s: Sample) -> list[Piece]:  # EasyLM koala.md; markers: koala_data_pipeline
    marker = KOALA_NEGATIVE if s.negative else KOALA_POSITIVE
    pieces = [Piece(KOALA_HEADER, False)]
    for j, (role, t) in enumerate(s.turns):
        if role == "user":
            if j == 0 and s.context.strip():  # an Alpaca input goes under its instruction
                t = f"{t}\n\n{s.context}"
            pieces.append(Piece(f"USER: {t} {marker}", False))
        else:
            pieces += [Piece(t, True), Piece(EOS, True)]
    return pieces


def _stack_llama_render(s: Sample) -> list[Piece]:  # TRL examples/stack_llama (all stages)
    pieces = []
    for role, t in s.turns:
        if role == "user":
            pieces.append(Piece(f"Question: {t}\n\nAnswer: ", False))
        else:
            pieces.append(Piece(t, True))
    return pieces


def _hh_render(s: Sample) -> list[Piece]:  # Anthropic hh-rlhf transcripts (ColossalChat's RM)
    pieces = []
    for role, t in s.turns:
        if role == "user":
            pieces.append(Piece(f"\n\nHuman: {t}\n\nAssistant:", False))
        else:
            pieces.append(Piece(f" {t}", True))
    return pieces


R1_ZERO_HEADER = (
    "A conversation between User and Assistant. The user gives a task; the assistant first "
    "reasons about it step by step inside <think> </think> tags, then gives only the final "
    "answer inside <answer> </answer> tags.\n"
)


def r1_zero_prompt(user: str) -> str:
    return f"{R1_ZERO_HEADER}User: {user}\nAssistant: Let me solve this step by step.\n<think>"


def _r1_zero_render(s: Sample) -> list[Piece]:  # TinyZero's base-model template, in its shape
    (_, user), (_, reply) = s.turns
    return [Piece(r1_zero_prompt(user), False), Piece(reply, True)]


def _first_piece(render: Callable[[Sample], list[Piece]]) -> Callable[[str], str]:
    """The prompt is the rendered sample's first piece (the masked prompt)."""
    return lambda user: render(Sample([("user", user), ("assistant", "")]))[0].text or ""


_CHATS = ("hh_rlhf", "webgpt", "summarize", "hc3", "oig")  # Koala's mixture sources
STYLES: dict[str, PromptStyle] = {
    s.name: s
    for s in (
        PromptStyle(
            "vicuna_v1.1", ("sharegpt",), _vicuna_render,
            prompt=lambda u: f"{VICUNA_V11_SYSTEM} USER: {u} ASSISTANT:",
            too_long=TooLong.SPLIT_ROUNDS, source="FastChat conversation.py (sep_style TWO)",
        ),
        PromptStyle(
            "alpaca", ("alpaca",), _alpaca_render, prompt=lambda u: alpaca_prompt(u, ""),
            source="stanford_alpaca train.py PROMPT_DICT",
        ),
        PromptStyle(
            "alpaca_lora", ("alpaca",), _alpaca_lora_render,
            prompt=lambda u: alpaca_prompt(u, "") + "\n", train_on_inputs=True,
            source="alpaca-lora templates/alpaca.json, finetune.py (train_on_inputs, no EOS)",
        ),
        PromptStyle(
            "dolly", ("dolly",), _dolly_render, prompt=_first_piece(_dolly_render),
            too_long=TooLong.DROP, stop_text="### End",
            special_tokens=("### End", "### Instruction:", "### Response:"),
            source="dolly training/consts.py, trainer.py",
        ),
        PromptStyle(
            "gpt4all", ("gpt4all",), _gpt4all_render, prompt=_first_piece(_gpt4all_render),
            too_long=TooLong.PROMPT_HALF, source="gpt4all data.py",
        ),
        PromptStyle(
            "baize", ("baize",), _baize_render,
            prompt=lambda u: f"{BAIZE_HEADER}{BAIZE_HUMAN}{u}\n{BAIZE_AI}".rstrip(" "),
            train_on_inputs=True, stop_text="[|Human|]", source="baize finetune.py",
        ),
        PromptStyle(
            "oasst", ("oasst",), _oasst_render,
            prompt=lambda u: f"<|prompter|>{u}<|endoftext|><|assistant|>",
            stop_text="<|endoftext|>",
            special_tokens=("<|prompter|>", "<|assistant|>", "<|endoftext|>"),
            source="Open-Assistant model/model_training (format_pairs)",
        ),
        PromptStyle(
            "stack_llama", ("stack_exchange_paired",), _stack_llama_render,
            prompt=lambda u: f"Question: {u}\n\nAnswer: ", train_on_inputs=True,
            stop_text="Question:", source="TRL @d8ae4d08 examples/stack_llama/scripts",
        ),
        PromptStyle(
            "hh", ("hh_rlhf",), _hh_render, prompt=lambda u: f"\n\nHuman: {u}\n\nAssistant:",
            stop_text="Human:", source="Anthropic/hh-rlhf transcript format",
        ),
        PromptStyle(
            "koala", ("sharegpt", "alpaca", *_CHATS), _koala_render,
            prompt=lambda u: f"{KOALA_HEADER}USER: {u} {KOALA_POSITIVE}",  # as at eval time
            stop_text="USER:", source="EasyLM docs/koala.md, koala_data_pipeline",
        ),
        PromptStyle(
            "r1_zero", ("countdown", "prompt_answer"), _r1_zero_render, prompt=r1_zero_prompt,
            stop_text="</answer>",
            source="TinyZero examples/data_preprocess/countdown.py (base template), reworded",
        ),
    )
}  # fmt: skip


def style(name: str) -> PromptStyle:
    try:
        return STYLES[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known: {sorted(STYLES)}") from None


def render(template: str, s: Sample) -> list[Piece]:
    """The pieces of `s` under `template` (before any length policy)."""
    return style(template).render(s)


def generation_prompt(template: str, user_text: str) -> str:
    """The text a model trained with `template` is prompted with (sample generations)."""
    return style(template).prompt(user_text)


def format_templates() -> dict[str, tuple[str, ...]]:
    """format -> the templates that read it (the schema's check)."""
    out: dict[str, list[str]] = {}
    for st in STYLES.values():
        for fmt in st.formats:
            out.setdefault(fmt, []).append(st.name)
    return {k: tuple(v) for k, v in out.items()}


# ------------------------------------------------------------------------------ tokenization
class PieceTemplate:
    """Tokenizes a style's pieces and applies its length policy."""

    def __init__(self, name: str, tokenizer) -> None:
        self.style = style(name)
        self.name = name
        self.tok = tokenizer
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = tokenizer.eos_token_id
        self._rounds = VicunaV11Template(tokenizer) if name == "vicuna_v1.1" else None

    def _ids(self, piece: Piece) -> list[int]:
        if piece.text is None:
            return [self.eos]
        return self.tok.encode(piece.text, add_special_tokens=False)

    def examples(self, s: Sample, max_seq_len: int) -> list[Example]:
        policy = self.style.too_long
        if policy == TooLong.SPLIT_ROUNDS:
            assert self._rounds is not None, f"{self.name}: no round splitter"
            return self._rounds.examples(s.turns, max_seq_len)
        pieces = self.style.render(s)
        if policy == TooLong.PROMPT_HALF:
            return self._prompt_half(pieces, max_seq_len)
        # The whole text tokenized at once, as the originals did (Alpaca, Dolly, Baize,
        # OpenAssistant); the mask comes from character offsets (templates.encode_spans).
        ids, labels = encode_spans(self.tok, [(p.text, p.trained) for p in pieces], self.bos)
        if len(ids) > max_seq_len:
            if policy == TooLong.DROP:
                return []
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if self.style.train_on_inputs:
            labels = list(ids)  # trained on every token, BOS included as in HF's collator
            labels[: len(self.bos)] = [IGNORE_INDEX] * len(self.bos)
        if all(label == IGNORE_INDEX for label in labels[1:]):
            return []  # nothing left to learn after truncation
        return [Example(ids, labels)]

    def _prompt_half(self, pieces: list[Piece], max_seq_len: int) -> list[Example]:
        """gpt4all data.py: the prompt is cut to max_len // 2 tokens; EOS only if the response
        was not truncated. It tokenized prompt and response separately, so do we."""
        prompt = self._ids(pieces[0])[: max_seq_len // 2]
        response = self._ids(pieces[1])
        ids = self.bos + prompt + response
        truncated = len(ids) + 1 > max_seq_len
        ids = ids[:max_seq_len] if truncated else ids + [self.eos]
        n_masked = len(self.bos) + len(prompt)
        labels = [IGNORE_INDEX] * n_masked + ids[n_masked:]
        return [Example(ids, labels)]
