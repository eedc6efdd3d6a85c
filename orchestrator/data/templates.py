"""Chat templates -> token ids and labels, with -100 exactly where the original run masked.

Vicuna v1.1 (FastChat `conversation.py`, sep_style TWO, seps " " and "</s>"):

    {system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT: {a2}</s>

FastChat v1.1 trains only on the assistant replies and their "</s>"; the system prompt and the
"USER: ... ASSISTANT:" parts get label -100. Like FastChat, each example's text is tokenized
whole (`encode_spans`), then labelled by character offsets: tokenizing piece by piece gives other
tokens at the boundaries with a SentencePiece tokenizer (LLaMA's adds "▁" at the start of every
call). "</s>" is the EOS token id.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.data.formats import Turn

IGNORE_INDEX = -100

VICUNA_V11_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def encode_spans(
    tok, pieces: list[tuple[str | None, bool]], bos: list[int]
) -> tuple[list[int], list[int]]:
    """(ids, labels) of the concatenated pieces tokenized as one text, as the originals did.
    A piece is (text, trained); text None is the EOS token. A token is trained when its first
    character is in a trained piece (fast tokenizers give every token its character span).

    Raises:
        ValueError: a tokenizer without offsets (a slow tokenizer).
    """
    text, spans, at = "", [], 0
    for piece, trained in pieces:
        piece = tok.eos_token if piece is None else piece
        if trained:
            spans.append((at, at + len(piece)))
        text += piece
        at += len(piece)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if "offset_mapping" not in enc:
        raise ValueError("templates need a fast tokenizer (character offsets for the loss mask)")
    ids = list(bos) + list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(bos)
    for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        first = start if end > start else start - 1
        labels.append(tid if any(a <= first < b for a, b in spans) else IGNORE_INDEX)
    return ids, labels


@dataclass
class Round:
    """One user->assistant exchange as token ids: `prompt` is masked, `reply` (with EOS) is trained."""

    prompt: list[int]
    reply: list[int]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    weight: float = 1.0
    """Mixture weight of its source: copies per epoch in the training set."""


def vicuna_v11_text(turns: list[Turn]) -> str:
    """The exact prompt string FastChat builds (for reading and for tests)."""
    out = VICUNA_V11_SYSTEM + " "
    for role, text in turns:
        if role == "user":
            out += f"USER: {text} "
        else:
            out += f"ASSISTANT: {text}</s>"
    return out


class VicunaV11Template:
    """Tokenizes a conversation into a header + rounds, and packs rounds into examples."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = tokenizer.eos_token_id
        self.header = self._encode(VICUNA_V11_SYSTEM)

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def rounds(self, turns: list[Turn]) -> list[tuple[Round, Round]]:
        """Each round tokenized twice: as the first round of a segment (after the system prompt,
        preceded by " ") and as a later one (right after "</s>", no space)."""
        out = []
        for i in range(0, len(turns), 2):
            user, reply = turns[i][1], turns[i + 1][1]
            reply_ids = self._encode(f" {reply}") + [self.eos]
            first = Round(self._encode(f" USER: {user} ASSISTANT:"), reply_ids)
            later = Round(self._encode(f"USER: {user} ASSISTANT:"), reply_ids)
            out.append((first, later))
        return out

    def examples(self, turns: list[Turn], max_seq_len: int) -> list[Example]:
        """Split a conversation into examples of whole rounds that fit `max_seq_len` tokens.

        Like FastChat's split_long_conversation: each example starts with the system prompt and
        holds as many whole rounds as fit; a single round longer than the limit is truncated
        (FastChat truncated at model_max_length).
        """
        # Which rounds go together is decided on per-round token counts; each segment's text is
        # then tokenized whole (FastChat tokenized conv.get_prompt()).
        segments: list[list[int]] = []
        n = 0
        rounds = self.rounds(turns)
        for r, (first, later) in enumerate(rounds):
            rnd = later if segments and segments[-1] else first
            size = len(rnd.prompt) + len(rnd.reply)
            if segments and segments[-1] and n + size > max_seq_len:
                segments.append([])
                rnd = first
                size = len(rnd.prompt) + len(rnd.reply)
            if not segments or not segments[-1]:
                if not segments:
                    segments.append([])
                n = len(self.bos) + len(self.header)
            segments[-1].append(r)
            n += size
        examples = []
        for seg in segments:
            pieces: list[tuple[str | None, bool]] = [(VICUNA_V11_SYSTEM, False)]
            for j, r in enumerate(seg):
                user, reply = turns[2 * r][1], turns[2 * r + 1][1]
                pieces += [(f"{' ' if j == 0 else ''}USER: {user} ASSISTANT:", False),
                           (f" {reply}", True), (None, True)]  # fmt: skip
            examples.append(Example(*encode_spans(self.tok, pieces, self.bos)))
        out = []
        for ex in examples:
            ex = Example(ex.input_ids[:max_seq_len], ex.labels[:max_seq_len])
            if any(label != IGNORE_INDEX for label in ex.labels[1:]):
                out.append(ex)  # an example whose replies were all truncated away teaches nothing
        return out


TEMPLATES = {"vicuna_v1.1": VicunaV11Template}
