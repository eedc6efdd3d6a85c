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
from orchestrator.data.formats import ADAPTERS, DataError, read_rows

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def _texts(cfg: DataConfig) -> Iterator[str]:
    adapter = ADAPTERS[cfg.format]
    for row in read_rows(cfg.source, cfg.split, cfg.max_examples):
        try:
            turns = adapter(row)
        except DataError:
            continue  # bad rows are reported (or skipped) by the dataset pass
        for _, text in turns:
            yield text
    from orchestrator.data.templates import VICUNA_V11_SYSTEM

    yield VICUNA_V11_SYSTEM + " USER: ASSISTANT:"


def train_bpe(texts: Iterator[str], vocab_size: int):
    """A byte-level BPE with LLaMA-style special tokens, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
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
    )


def load_or_train_tokenizer(cfg: DataConfig, out_dir: Path):
    """Returns (tokenizer, folder it is saved in). Reuses `out_dir` when it already holds one."""
    from transformers import AutoTokenizer

    if (out_dir / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(out_dir)), out_dir
    if cfg.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    else:
        tokenizer = train_bpe(_texts(cfg), cfg.tokenizer_vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer, out_dir
