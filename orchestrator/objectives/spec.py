"""What the rest of the project needs to know about a training objective, in one place.

An objective (sft, reward, dpo, ppo, grpo, ...) is one module in this package that defines its
settings dataclass and a `SPEC`, plus one line in `orchestrator/objectives/__init__.py`. The
schema checks a job against the spec (the data kind it reads, its own checks), the estimator
prices a step with its work model, the fit check adds its extra models, the pipeline accepts its
input keys, and the worker entry point imports its recipe lazily. An objective without a work
model is refused by the estimator: it is never priced as another one.

This module and the objective modules import nothing heavy (no torch, no transformers): the
schema imports them to validate a config.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    from orchestrator.config.schema import JobConfig

DATA_KINDS = ("sft", "preference", "prompts")
"""sft: conversations and text; preference: a prompt with ranked replies; prompts: a prompt with
the answer a verifiable reward checks (orchestrator/data/prompt_tasks.py)."""


@dataclass(frozen=True)
class ObjectiveWork:
    """What one step of an objective costs beyond one training pass over the step's planned
    sequences (which the batch planner prices): multiples of that pass, plus decode seconds."""

    train_passes: float
    """Training-pass equivalents (forward + backward = 1; a forward alone = 1/3)."""
    tokens: float
    """Tokens processed per planned token (generation: prompt + reply per prompt)."""
    decode_tokens: float = 0.0
    """Generation: tokens sampled one after another per step (each a decode step, memory-
    bandwidth bound: the estimator prices it with steptime.decode_step_s)."""
    decode_batch: int = 0
    """Sequences decoded together per worker."""
    decode_context: int = 0
    """Their mean context length (the KV cache read per token)."""


S = TypeVar("S")


@dataclass(frozen=True)
class Settings(Generic[S]):
    """An objective's own settings: their dataclass and their key in the job config (`ppo:`).

    The schema adds one field per registered objective's settings to JobConfig (config/
    schema.py, `objective_sections`), so a new objective touches no central file; code reads
    them typed through `of(cfg)` (mypy sees no `cfg.ppo` attribute)."""

    key: str
    cls: type[S]

    def of(self, cfg: Any) -> S:
        return cast(S, getattr(cfg, self.key))


def _no_check(cfg: JobConfig) -> None:
    return None


def _no_extra(cfg: JobConfig, n_params: int) -> float:
    return 0.0


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    data_kinds: tuple[str, ...]
    """The data kinds it reads (DATA_KINDS)."""
    recipe: str
    """`module:Class` of its recipe, imported only on a worker (`recipe_class`)."""
    summary: str
    work: Callable[[JobConfig, Any, Any, float], ObjectiveWork] | None
    """(cfg, model shape, device, mean planned sequence length) -> the step's work; None for
    an objective whose step is exactly the planned pass (sft)."""
    settings: Settings[Any] | None = None
    """Its settings and their key in the job config (`ppo:`), None when it has none."""
    input_keys: tuple[str, ...] = ()
    """Config keys naming a model it reads besides model.pretrained (a pipeline stage's
    `input` may set them to an earlier stage's export; the launcher records their digests)."""
    examples_per_item: int = 1
    """On preference data: examples per unit its batch sizes count (a ranked group is
    projected as 2 replies). Prompt data has one example per prompt."""
    sequences_per_item: int = 1
    """Sequences in a micro-batch per unit of train.micro_batch_size (reward/DPO: 2 replies)."""
    micro_counts_items: bool = True
    """train.micro_batch_size counts the same units as global_batch_size (so the global batch
    is a multiple of micro x workers); False: it counts what a step makes of them (GRPO:
    completions), and the global batch need only split evenly over the workers."""
    extra_usd: Callable[[JobConfig], dict[str, float]] | None = None
    """Costs beyond node time the estimate adds as their own lines (the eval stage's judge)."""
    elastic: bool = False
    """Its steps can run on a worker count that changes between tries (hardware.nodes): every
    step's examples depend only on (seed, step) and its loss is normalised by the global count,
    whatever the world size. Rollout objectives size their per-worker work by the count."""
    trains: bool = True
    """False: it evaluates a model and trains nothing (the trainer takes no step; the estimator
    prices its `work` as one step)."""
    launcher: str | None = None
    """A module whose `preflight(cfg)` a pipeline calls before its first stage, and whose
    `before_run(cfg, storage)` and `after_run(cfg, storage, uri, run_id, budget_left)` the
    launcher calls around the workers (the eval stage: its checks, the question set, the
    judge)."""
    from_trained: bool = False
    """It starts from a trained model: model.pretrained must be set."""
    check: Callable[[JobConfig], None] = field(default=_no_check)
    """Its own cross-field checks (raise ConfigError)."""
    extra_models_bytes: Callable[[JobConfig, int], float] = field(default=_no_extra)
    """Bytes per GPU it holds besides the trained model and its training state (the fit check):
    other models (PPO's reference, reward model), an evaluation's KV cache."""
    micro_tokens: Callable[[JobConfig], int] | None = None
    """The most tokens of one micro-batch; None: micro_batch_size x data.max_seq_len x
    sequences_per_item."""

    def recipe_class(self) -> type:
        module, name = self.recipe.split(":")
        return getattr(importlib.import_module(module), name)


def config_value(cfg: Any, key: str) -> Any:
    """The value of a dotted config key (`ppo.reward_model`) of a JobConfig."""
    out = cfg
    for part in key.split("."):
        out = getattr(out, part)
    return out
