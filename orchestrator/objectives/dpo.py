"""train.objective=dpo: direct preference optimisation (orchestrator/rl/recipes.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError
from orchestrator.fields import choice as _choice
from orchestrator.fields import positive as _positive
from orchestrator.objectives.common import dtype_bytes, whole_model_stage
from orchestrator.objectives.reward import REPLIES_PER_GROUP
from orchestrator.objectives.spec import ObjectiveSpec, ObjectiveWork, Settings

if TYPE_CHECKING:
    from orchestrator.config.schema import JobConfig


@dataclass
class DpoSettings:
    """train.objective=dpo (Rafailov et al. 2023)."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    """> 0: conservative DPO (cDPO): the preference labels are flipped with this probability."""
    reference: str = "auto"
    """The frozen reference's log-probs: adapter (LoRA: the same model with its adapter
    disabled, no extra memory), copy (a frozen copy of the starting model: one more model in
    memory for the whole stage), cached (computed once at the start by a temporary copy, kept in
    the run's durable folder: no extra memory while training, one forward per reply), auto
    (adapter for lora, copy for full)."""

    def __post_init__(self) -> None:
        _positive("dpo.beta", self.beta)
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"dpo.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
        _choice("dpo.reference", self.reference, ("auto", "adapter", "copy", "cached"))


SETTINGS = Settings("dpo", DpoSettings)
"""Its section of the job config (`dpo:`), read as SETTINGS.of(cfg)."""


def work(cfg: JobConfig, shape, dev, mean_len: float) -> ObjectiveWork:
    """The policy's training pass over chosen and rejected, plus the reference's forward over
    both (1/3 of a pass of the full model; with a frozen base the policy's pass costs ~2/3 of a
    full one, so the reference adds 1/2 of it); a cached reference runs once per run."""
    ref = 0.5 if cfg.train.method != "full" else 1.0 / 3.0
    if SETTINGS.of(cfg).reference == "cached":  # one forward per reply per run, not per epoch
        ref /= max(1.0, cfg.train.epochs)
    k = REPLIES_PER_GROUP
    return ObjectiveWork(train_passes=k * (1.0 + ref), tokens=k)


def extra_models_bytes(cfg: JobConfig, n_params: int) -> float:
    """A full fine-tune's frozen reference copy (LoRA disables its adapter; cached: none)."""
    full = cfg.train.method == "full"
    return (
        float(dtype_bytes(cfg) * n_params)
        if full and SETTINGS.of(cfg).reference in ("auto", "copy")
        else 0.0
    )


SPEC = ObjectiveSpec(
    name="dpo",
    data_kinds=("preference",),
    recipe="orchestrator.rl.recipes:DpoObjective",
    summary="direct preference optimisation against a frozen reference",
    work=work,
    settings=SETTINGS,
    examples_per_item=REPLIES_PER_GROUP,
    sequences_per_item=REPLIES_PER_GROUP,
    from_trained=True,
    check=whole_model_stage,
    extra_models_bytes=extra_models_bytes,
)
