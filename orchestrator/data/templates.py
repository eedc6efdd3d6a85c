"""Chat templates -> token ids and labels, with -100 exactly where the original run masked.

Vicuna v1.1 (FastChat `conversation.py`, sep_style TWO, seps " " and "</s>"):

    {system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT: {a2}</s>

FastChat v1.1 trains only on the assistant replies and their "</s>"; the system prompt and the
"USER: ... ASSISTANT:" parts get label -100. Each piece is tokenized on its own (as torchtune does
per message) so the mask boundary falls exactly between pieces; "</s>" is the EOS token id.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.data.formats import Turn

IGNORE_INDEX = -100

VICUNA_V11_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


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
        examples: list[Example] = []
        ids: list[int] = []
        labels: list[int] = []
        for first, later in self.rounds(turns):
            rnd = later if ids else first
            if ids and len(ids) + len(rnd.prompt) + len(rnd.reply) > max_seq_len:
                examples.append(Example(ids, labels))
                ids, labels, rnd = [], [], first
            if not ids:
                ids = self.bos + self.header
                labels = [IGNORE_INDEX] * len(ids)
            ids = ids + rnd.prompt + rnd.reply
            labels = labels + [IGNORE_INDEX] * len(rnd.prompt) + rnd.reply
        if ids:
            examples.append(Example(ids, labels))
        out = []
        for ex in examples:
            ex = Example(ex.input_ids[:max_seq_len], ex.labels[:max_seq_len])
            if any(label != IGNORE_INDEX for label in ex.labels[1:]):
                out.append(ex)  # an example whose replies were all truncated away teaches nothing
        return out


TEMPLATES = {"vicuna_v1.1": VicunaV11Template}
