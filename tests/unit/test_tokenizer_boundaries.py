"""Template tokens at piece boundaries, with a SentencePiece-style (LLaMA) tokenizer built here:
LLaMA's tokenizer prepends "▁" to every text it encodes, so encoding the pieces of a prompt one
by one gives different tokens at every boundary than encoding the whole conversation, which is
what FastChat (and Alpaca, Dolly) did. Examples must equal the whole-text tokenization, with the
loss on exactly the assistant replies and their </s>."""

from __future__ import annotations

import pytest

from orchestrator.config.schema import DataConfig
from orchestrator.data.dataset import iter_samples
from orchestrator.data.templates import IGNORE_INDEX, VICUNA_V11_SYSTEM, VicunaV11Template
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def llama_style():
    """A byte-fallback BPE with LLaMA's normalizer (prepend "▁", spaces as "▁")."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    cfg = DataConfig(source=str(REPO_ROOT / "data/samples/sharegpt_sample.json"))
    texts = [t for s in iter_samples(cfg) for _, t in s.turns] + [VICUNA_V11_SYSTEM]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])  # fmt: skip
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>", *bytes_], show_progress=False))  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")  # fmt: skip


def _conversations():
    cfg = DataConfig(source=str(REPO_ROOT / "data/samples/sharegpt_sample.json"))
    return [s.turns for s in iter_samples(cfg)][:40]


def test_vicuna_examples_equal_the_whole_conversation_tokenized(llama_style):
    tok = llama_style
    template = VicunaV11Template(tok)
    piecewise_differs = 0
    for turns in _conversations():
        for ex in template.examples(turns, max_seq_len=4096):
            # the text FastChat builds for this example, tokenized whole
            n_rounds = sum(1 for t in ex.labels if t == tok.eos_token_id)
            text = VICUNA_V11_SYSTEM + " "
            replies = []
            for i in range(n_rounds):
                user, reply = turns[2 * i][1], turns[2 * i + 1][1]
                text += f"USER: {user} ASSISTANT: {reply}</s>"
                replies.append(f" {reply}</s>")
            whole = [tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids
            assert ex.input_ids == whole
            # the loss is on the replies and their </s>, and on nothing else (compared without
            # spaces: decoding drops the "▁" that follows a special token)
            trained = [t for t in ex.labels if t != IGNORE_INDEX]
            masked = [t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX]
            squash = lambda x: "".join(x.split())  # noqa: E731
            assert squash(tok.decode(trained)) == squash("".join(replies))
            prompts = text
            for r in replies:
                prompts = prompts.replace(r, "", 1)
            assert squash(tok.decode(masked[1:])) == squash(prompts)  # [1:]: the BOS
            assert trained.count(tok.eos_token_id) == n_rounds
            # what tokenizing piece by piece would have given
            pieces = [tok.bos_token_id] + tok.encode(VICUNA_V11_SYSTEM, add_special_tokens=False)
            for i in range(n_rounds):
                user, reply = turns[2 * i][1], turns[2 * i + 1][1]
                pieces += tok.encode(f"{' ' if i == 0 else ''}USER: {user} ASSISTANT:",
                                     add_special_tokens=False)  # fmt: skip
                pieces += tok.encode(f" {reply}", add_special_tokens=False) + [tok.eos_token_id]
            piecewise_differs += pieces != whole
    assert piecewise_differs > 0  # the check has teeth: piecewise tokens differ with this tokenizer
