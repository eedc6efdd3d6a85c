"""Prepare a job's data once (driver side): rows -> turns -> template -> token ids + labels.

`build_prepared` reads and validates every row before any cluster starts, splits off the
held-out eval set, and writes a prepared data folder (memory-mapped arrays, `prepared.py`) that
`publish.py` puts in the durable store for the workers. `StepBatches` is the deterministic,
resumable order of batches: the batch of optimizer step s depends only on (seed, s), so a
resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.schema import DataConfig
from orchestrator.data.batching import (
    MicroBatch,
    collate_micro_batch,
    default_budget,
    plan_step,
)
from orchestrator.data.formats import DataError, read_rows
from orchestrator.data.instruct import SAMPLE_ADAPTERS, Sample, oasst_threads
from orchestrator.data.prepared import DataManifest, PreparedData, open_prepared, write_prepared
from orchestrator.data.prompts import PieceTemplate, style
from orchestrator.data.templates import IGNORE_INDEX, Example
from orchestrator.data.text import build_text_data
from orchestrator.data.tokenizer import load_or_train_tokenizer

log = logging.getLogger(__name__)


def iter_samples(cfg: DataConfig) -> Iterator[Sample | DataError]:
    """Every sample of the source in file order; a bad row yields its DataError (the caller
    raises or skips it). oasst1 builds its threads from the whole message table. A mixture
    yields each source in turn, its samples tagged with the source's weight; Koala's negative
    samples are dropped under `conditioning: positive_only`."""
    if cfg.format == "mixture":
        for src in cfg.sources:
            block = (src.format, src.source, src.split, src.max_examples)
            drop = [d.lower() for d in src.drop_containing]
            for item in _iter_source(*block):
                if isinstance(item, Sample):
                    if drop and any(d in t.lower() for _, t in item.turns for d in drop):
                        continue
                    item.weight = src.weight
                yield item
    else:
        yield from _iter_source(cfg.format, cfg.source, cfg.split, cfg.max_examples, cfg.data_dir)


def _iter_source(
    fmt: str, source: str, split: str, max_examples: int | None, data_dir: str | None = None
):
    rows = read_rows(source, split, max_examples, data_dir)
    if fmt == "oasst":  # threads need the whole message table: unreadable lines come after
        bad: list[DataError] = []
        table = (r for r in rows if not (isinstance(r, DataError) and not bad.append(r)))
        yield from oasst_threads(table)
        yield from bad
        return
    for row in rows:
        if isinstance(row, DataError):  # an unreadable line: the caller raises or skips it
            yield row
            continue
        try:
            yield from SAMPLE_ADAPTERS[fmt](row)
        except DataError as e:
            yield e


def build_examples(cfg: DataConfig, tokenizer) -> tuple[list[Example], int, int]:
    """All examples of the source, in file order. Returns (examples, samples read, rows skipped)."""
    template = PieceTemplate(cfg.template, tokenizer)

    examples: list[Example] = []
    rows = skipped = 0
    for item in iter_samples(cfg):
        rows += 1
        if isinstance(item, DataError):
            if cfg.on_error == "raise":
                raise DataError(f"{item} (set data.on_error=skip to skip bad rows)") from None
            skipped += 1
            log.warning("skipping bad row: %s", item)
            continue
        if item.negative and cfg.conditioning == "positive_only":
            continue
        for e in template.examples(item, cfg.max_seq_len):
            e.weight = item.weight
            examples.append(e)
    if not examples:
        raise DataError(f"data.source={cfg.source!r}: no usable examples in {rows} rows")
    return examples, rows, skipped


def template_texts(cfg: DataConfig) -> Iterator[str]:
    """The text a local BPE is trained on: every sample as its template renders it."""
    st = style(cfg.template)
    for s in iter_samples(cfg):
        if isinstance(s, DataError):
            continue  # bad rows are reported (or skipped) by the dataset pass
        yield from st.bpe_texts(s)
    yield from st.bpe_extra_texts()


def build_prepared(
    cfg: DataConfig, folder: Path, key: str = "", identity: dict[str, Any] | None = None
) -> DataManifest:
    """Tokenize the job's data into a new prepared data folder `folder` (see `prepared.py`).

    Raises:
        DataError: a bad row (unless data.on_error=skip), or no usable examples.
    """
    if cfg.format == "text":  # pretraining: streamed by the workers, see text.py
        return build_text_data(cfg, folder, key, identity or {})
    if cfg.kind in ("preference", "prompts"):  # ranked groups; prompts with their answers
        from orchestrator.data.preference import build_preference_prepared

        return build_preference_prepared(cfg, folder, key, identity)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, tok_dir = load_or_train_tokenizer(
            Path(tmp) / "tokenizer",
            cfg.tokenizer,
            cfg.tokenizer_vocab_size,
            texts=lambda: template_texts(cfg),
            special=style(cfg.template).special_tokens,
        )
        examples, rows, skipped = build_examples(cfg, tokenizer)
        order = list(range(len(examples)))
        random.Random(cfg.shuffle_seed).shuffle(order)
        n_eval = int(round(len(examples) * cfg.eval_fraction))
        if cfg.eval_fraction > 0:
            n_eval = max(1, n_eval)
        eval_idx, train_idx = sorted(order[:n_eval]), sorted(order[n_eval:])
        train_idx = _weighted(train_idx, [examples[i].weight for i in train_idx], cfg.shuffle_seed)
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
        )
        return write_prepared(
            folder,
            key=key,
            examples=examples,
            train_index=train_idx,
            eval_index=eval_idx,
            tokenizer_dir=tok_dir,
            vocab_size=len(tokenizer),
            pad_id=int(pad_id if pad_id is not None else tokenizer.eos_token_id),
            num_rows=rows,
            skipped_rows=skipped,
            identity=identity or {},
        )


def prepare_data(cfg: DataConfig, folder: Path) -> PreparedData:
    """Build (or reuse) a prepared data folder on this machine and open it: for estimates,
    tests and benchmarks. Launches publish theirs to the durable store (`publish.py`)."""
    if not (folder / "manifest.json").exists():
        build_prepared(cfg, folder)
    return open_prepared(folder)


def _weighted(idx: list[int], weights: list[float], seed: int) -> list[int]:
    """Mixture weights on the training set (after the eval split, so no copy of an eval example
    is trained on): weight w gives floor(w) copies, plus one more for a seeded random share
    w - floor(w) of the examples (0.5 keeps half of a source, 2.0 doubles it)."""
    if all(w == 1.0 for w in weights):
        return idx
    rng = random.Random(seed + 7)
    out = []
    for i, w in zip(idx, weights, strict=True):
        whole, frac = divmod(w, 1.0)
        out += [i] * (int(whole) + (rng.random() < frac))
    return out


def _lengths(examples: Sequence[Example]) -> list[int]:
    if hasattr(examples, "lengths"):  # a memory-mapped ExampleSet: no need to read the tokens
        return [int(n) for n in examples.lengths()]
    return [len(e.input_ids) for e in examples]


def _n_targets(e: Example) -> int:
    # Position t predicts token t+1, so the first label never counts.
    return sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)


class StepBatches:
    """The micro-batches of each optimizer step, for one rank.

    Every epoch is a fresh permutation seeded by (seed, epoch); step s of the run is step
    s % steps_per_epoch of epoch s // steps_per_epoch, and its `global_batch_size` examples
    depend only on (seed, s). How they are split into micro-batches and spread over ranks is
    the batching `mode` (pad / grouped / packed, see `batching.py`); it changes speed, never
    which examples a step trains on or its token-mean loss.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        global_batch_size: int,
        micro_batch_size: int,
        world_size: int,
        rank: int,
        seed: int,
        pad_id: int,
        mode: str = "pad",
        tokens_per_micro_batch: int | None = None,
        pack_len: int | None = None,
        group_steps: int = 1,
        flatten: bool = False,
    ) -> None:
        if len(examples) < global_batch_size:
            raise DataError(
                f"only {len(examples)} training examples, fewer than one global batch "
                f"(train.global_batch_size={global_batch_size}); lower the batch size or add data"
            )
        self.examples = examples
        self.global_batch_size = global_batch_size
        self.micro = micro_batch_size
        self.world = world_size
        self.rank = rank
        self.seed = seed
        self.pad_id = pad_id
        self.mode = mode
        self.group_steps = group_steps
        self.flatten = flatten and mode == "packed"
        """Packed micro-batches as one flat row with explicit boundaries (flash attention)."""
        self._lens = _lengths(examples)
        longest = max(self._lens)
        self.pack_len = max(pack_len or longest, longest)
        budget = tokens_per_micro_batch or default_budget(micro_batch_size, longest)
        self.budget = max(budget, self.pack_len)
        self.steps_per_epoch = len(examples) // global_batch_size
        self._perm_epoch = -1
        self._perm: list[int] = []
        self._plans: dict[int, list[list[MicroBatch]]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            rng = random.Random(self.seed * 100_003 + epoch)
            self._perm = list(range(len(self.examples)))
            rng.shuffle(self._perm)
            if self.group_steps > 1:
                self._perm = self._length_grouped(self._perm, rng)
            self._perm_epoch = epoch
        return self._perm

    def _length_grouped(self, perm: list[int], rng: random.Random) -> list[int]:
        """HF group_by_length at the step level: megabatches of `group_steps` global batches
        are sorted by length and cut into steps, whose order in the megabatch is shuffled (HF
        puts the longest first). Each step then holds examples of like length."""
        g, k = self.global_batch_size, self.group_steps
        out: list[int] = []
        for start in range(0, len(perm), g * k):
            mega = sorted(perm[start : start + g * k], key=lambda i: -self._lens[i])
            steps = [mega[j : j + g] for j in range(0, len(mega), g)]
            rng.shuffle(steps)
            out += [i for step in steps for i in step]
        return out

    def global_examples(self, step: int) -> list[Example]:
        """All examples of optimizer step `step` (0-based), on every rank."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        idx = perm[offset * self.global_batch_size : (offset + 1) * self.global_batch_size]
        return [self.examples[i] for i in idx]

    def plan(self, step: int) -> list[list[MicroBatch]]:
        """The micro-batches of every rank for `step` (deterministic; cached for a few steps)."""
        if step not in self._plans:
            if len(self._plans) > 8:
                self._plans.clear()
            self._plans[step] = plan_step(
                [len(e.input_ids) for e in self.global_examples(step)],
                mode=self.mode,
                world=self.world,
                micro_batch_size=self.micro,
                tokens_per_micro_batch=self.budget,
                pack_len=self.pack_len,
            )
        return self._plans[step]

    def step_targets(self, step: int) -> int:
        """Number of trained (next-token) positions in the whole global batch of `step`."""
        return sum(_n_targets(e) for e in self.global_examples(step))

    def padded_tokens(self, step: int) -> int:
        """Token slots processed in `step` over all ranks (the padding efficiency denominator)."""
        lengths = [len(e.input_ids) for e in self.global_examples(step)]
        if self.flatten:  # one flat row per micro-batch: no padding at all
            return sum(lengths)
        return sum(mb.slots(lengths) for rank in self.plan(step) for mb in rank if mb.rows)

    def step(self, step: int) -> tuple[list[dict[str, torch.Tensor]], int]:
        """(this rank's micro-batches, number of trained tokens in the whole global batch)."""
        batch = self.global_examples(step)
        mine = self.plan(step)[self.rank]
        tensors = [
            collate_micro_batch(mb, batch, self.pad_id, batch[0], self.flatten) for mb in mine
        ]
        return tensors, self.step_targets(step)
