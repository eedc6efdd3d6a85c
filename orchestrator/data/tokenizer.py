"""Tokenizers: load one by Hugging Face id/folder, or train a small byte-level BPE on the data.

Local runs cannot download LLaMA's tokenizer, so they train a byte-level BPE (Hugging Face
`tokenizers`) on the job's own text with LLaMA's special tokens (<unk>, <s>, </s>) plus <pad>.
Training is deterministic for the same text, and the result is saved with the run so a resumed
run tokenizes exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from orchestrator.config.schema import DataConfig
from orchestrator.data.formats import DataError

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def _texts(cfg: DataConfig) -> Iterator[str]:
    """The text a local BPE is trained on: every sample as its template renders it."""
    from orchestrator.data.dataset import iter_samples
    from orchestrator.data.instruct import render
    from orchestrator.data.templates import TEMPLATES, VICUNA_V11_SYSTEM

    for s in iter_samples(cfg):
        if isinstance(s, DataError):
            continue  # bad rows are reported (or skipped) by the dataset pass
        if cfg.template in TEMPLATES:
            yield from (text for _, text in s.turns)
        else:
            yield from (p.text for p in render(cfg.template, s) if p.text)
    if cfg.template in TEMPLATES:
        yield VICUNA_V11_SYSTEM + " USER: ASSISTANT:"


def train_bpe(texts: Iterator[str], vocab_size: int, extra_special: list[str] | None = None):
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
    from orchestrator.training.bases import is_base, local_base

    return str(local_base(ref)) if is_base(ref) else ref


def load_or_train_tokenizer(cfg: DataConfig, out_dir: Path):
    """Returns (tokenizer, folder it is saved in). Reuses `out_dir` when it already holds one."""
    from transformers import AutoTokenizer

    if (out_dir / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(out_dir)), out_dir
    from orchestrator.data.instruct import TEMPLATE_SPECIAL_TOKENS

    special = TEMPLATE_SPECIAL_TOKENS.get(cfg.template, [])
    if cfg.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(cfg.tokenizer))
        if special:  # as Dolly and OpenAssistant did: the template keys become single tokens
            tokenizer.add_special_tokens({"additional_special_tokens": special})
    else:
        tokenizer = train_bpe(_texts(cfg), cfg.tokenizer_vocab_size, special)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer, out_dir
