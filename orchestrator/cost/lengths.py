"""Example lengths, and the passes a batching mode makes of them: what the bill's tokens are.

The processed token slots of a run are not a typed guess: the project's own batch planner
(`data/batching.py plan_step`) is run over the job's length distribution in the configured
mode (the replay: the original's), step by step, and every pass is recorded with its slots
(padding included) and its attention spans.

Where the lengths come from, in order:

- measured: the data is tokenized here (the local scale, or a full dataset on disk), the
  template and tokenizer applied; cached per data key with its provenance;
- published / assumed: a full dataset that cannot be read here declares its size and mean
  tokens per example in `data.lengths` (with the source, and whether it is published or
  assumed); the shape of the distribution is the shipped sample of the same format
  (`data.lengths.sample`), rescaled to that mean and capped at `data.max_seq_len`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.config.schema import ConfigError, DataConfig, JobConfig
from orchestrator.cost.steptime import Pass
from orchestrator.data.batching import default_budget, plan_step
from orchestrator.paths import CONF_DIR, read_yaml_mapping


@dataclass(frozen=True)
class Lengths:
    values: tuple[int, ...]
    """Token lengths of a sample of the examples (the whole epoch when measured)."""
    num_examples: int
    """Examples in one epoch."""
    kind: str
    source: str

    @property
    def mean(self) -> float:
        return sum(self.values) / max(1, len(self.values))


def _cache_dir() -> Path:
    import os

    root = os.environ.get("ORCHESTRATOR_CACHE") or str(Path.home() / ".cache" / "orchestrator")
    return Path(root) / "lengths"


def measured(data: DataConfig) -> Lengths:
    """Lengths of every training example of `data`, tokenized here (cached by data key)."""
    from orchestrator.data.publish import data_key

    key, _ = data_key(data)
    cache = _cache_dir() / f"{key}.json"
    if cache.exists():
        d = json.loads(cache.read_text())
        return Lengths(tuple(d["values"]), d["num_examples"], d["kind"], d["source"])
    import tempfile

    from orchestrator.data.dataset import prepare_data

    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_data(data, Path(tmp) / "data")
        values = tuple(int(n) for n in prepared.train.lengths())
    out = Lengths(
        values, len(values), "measured",
        f"{data.source or 'mixture'} tokenized here ({data.template}, data key {key})",
    )  # fmt: skip
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(asdict(out)))
    return out


SHAPE_MAX_SEQ_LEN = 16384
"""Samples are measured unsplit up to here: their shape, not the sample recipe's cut."""


def sample_block(name: str) -> DataConfig:
    """A shipped sample's data block (conf/data/<name>.yaml), read whole (no split at its own
    max_seq_len: the full scale's cap is applied after rescaling)."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "data" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"data.lengths.sample={name!r}: no data block {path}")
    raw = {**read_yaml_mapping(path), "max_seq_len": SHAPE_MAX_SEQ_LEN}
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), raw)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def rescaled(sample: Lengths, mean: float, cap: int, n: int, kind: str, source: str) -> Lengths:
    """`sample`'s shape with mean `mean` (before the cap), capped at `cap` tokens."""
    scale = mean / max(1e-9, sample.mean)
    values = tuple(max(1, min(cap, round(v * scale))) for v in sample.values)
    return Lengths(values, n, kind, source)


def job_lengths(cfg: JobConfig, prepared_lengths: list[int] | None = None) -> Lengths:
    """The job's length distribution: measured on its prepared data when given (a launch), from
    `data.lengths` when declared (a full dataset not read here), else tokenized here."""
    if prepared_lengths is not None:
        return Lengths(tuple(prepared_lengths), len(prepared_lengths), "measured", "prepared data")
    st = cfg.data.lengths
    if st.mean_tokens is not None:
        if not st.num_examples or not st.sample:
            raise ConfigError(
                f"job {cfg.job!r} ({cfg.scale}): data.lengths needs num_examples, mean_tokens "
                "and sample (a conf/data block of the same format) to project the bill"
            )
        sample = measured(sample_block(st.sample))
        return rescaled(
            sample, st.mean_tokens, cfg.data.max_seq_len, st.num_examples, st.kind,
            f"{st.source} (shape: {st.sample}, measured here)",
        )  # fmt: skip
    if cfg.data.format == "text":
        raise ConfigError("pretraining streams fixed-length rows: no length distribution")
    return measured(cfg.data)


def passes(
    lengths: list[int],
    *,
    mode: str,
    world: int,
    micro_batch_size: int,
    tokens_per_micro_batch: int | None,
    max_seq_len: int,
    varlen: bool,
) -> list[list[Pass]]:
    """The passes of each rank for one step whose examples have `lengths`, as the planner
    makes them (`pad_to_max`: every example padded to `max_seq_len`, FastChat's way). `varlen`:
    packed examples attend only within themselves (flash varlen) and pay no row padding."""
    longest = max(lengths)
    if mode == "pad_to_max":
        plans = plan_step(lengths, mode="pad", world=world, micro_batch_size=micro_batch_size,
                          tokens_per_micro_batch=micro_batch_size * max_seq_len,
                          pack_len=max_seq_len)  # fmt: skip
    else:
        budget = tokens_per_micro_batch or default_budget(micro_batch_size, longest)
        pack = max(longest, min(max_seq_len, budget))
        plans = plan_step(lengths, mode=mode, world=world, micro_batch_size=micro_batch_size,
                          tokens_per_micro_batch=max(budget, pack), pack_len=pack)  # fmt: skip
    out = []
    for rank in plans:
        row_passes = []
        for mb in rank:
            rows = [[lengths[i] for i in r] for r in mb.rows]
            if not rows:
                row_passes.append(Pass(0, 0.0, 0, 0.0))
                continue
            real = sum(sum(r) for r in rows)
            real_sq = float(sum(x * x for r in rows for x in r))
            width = max_seq_len if mode == "pad_to_max" else max(sum(r) for r in rows)
            if mb.packed and varlen:  # one flat row: each example attends to itself only
                slots, attn_sq = real, real_sq
            else:
                slots, attn_sq = len(rows) * width, float(len(rows) * width * width)
            row_passes.append(Pass(slots, attn_sq, real, real_sq))
        out.append(row_passes)
    return out


def sample_steps(
    lengths: Lengths,
    *,
    steps: int,
    global_batch: int,
    seed: int = 0,
    **plan,
) -> list[list[list[Pass]]]:
    """`steps` steps of `global_batch` examples drawn from the distribution (seeded), planned."""
    rng = random.Random(seed)
    values = list(lengths.values)
    return [passes([rng.choice(values) for _ in range(global_batch)], **plan) for _ in range(steps)]
