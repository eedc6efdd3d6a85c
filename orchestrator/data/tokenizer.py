"""Tokenizers: load one by Hugging Face id/folder, or train a small byte-level BPE on the data.

Local runs cannot download LLaMA's tokenizer, so they train a byte-level BPE (Hugging Face
`tokenizers`) on the job's own text with LLaMA's special tokens (<unk>, <s>, </s>) plus <pad>.
Training is deterministic for the same text, and the result is saved with the run so a resumed
run tokenizes exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from orchestrator.training.bases import is_base, local_base

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def train_bpe(texts: Iterable[str], vocab_size: int, extra_special: Sequence[str] | None = None):
    """A byte-level BPE with LLaMA-style special tokens, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(extra_special or []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=list(extra_special or []),
    )


def tokenizer_source(ref: str) -> str:
    """A tokenizer id or folder; `base:NAME` is a local base's folder (built on first use)."""
    return str(local_base(ref)) if is_base(ref) else ref


def load_or_train_tokenizer(
    out_dir: Path,
    source: str | None,
    vocab_size: int,
    texts: Callable[[], Iterator[str]],
    special: Sequence[str] = (),
):
    """Returns (tokenizer, folder it is saved in). Reuses `out_dir` when it already holds one;
    else loads `source` (an id, folder or `base:NAME`) or, when it is None, trains a byte-level
    BPE of `vocab_size` on `texts()`. `special`: a template's keys that become single tokens
    (as Dolly and OpenAssistant did)."""
    from transformers import AutoTokenizer

    if (out_dir / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(out_dir)), out_dir
    if source is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(source))
        if special:
            tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    else:
        tokenizer = train_bpe(texts(), vocab_size, special)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer, out_dir
