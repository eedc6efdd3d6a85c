"""train.objective=reward: a scalar head ranking replies (orchestrator/rl/recipes.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.fields import choice as _choice
from orchestrator.fields import positive as _positive
from orchestrator.objectives.common import whole_model_stage
from orchestrator.objectives.spec import ObjectiveSpec, ObjectiveWork, Settings

if TYPE_CHECKING:
    from orchestrator.config.schema import JobConfig

REPLIES_PER_GROUP = 2
"""Preference data is projected as pairs (OpenAssistant's ranked groups hold 2-5 replies:
their steps cost more, which the measured local runs show)."""


@dataclass
class RewardSettings:
    """train.objective=reward: a scalar head on the model scores each reply (docs/rl.md)."""

    loss: str = "pairwise"
    """pairwise: -logsigmoid(r_best - r_other) over the pairs of a group (StackLLaMA,
    ColossalChat); ranking: OpenAssistant's K-wise loss over every ordered pair of a group plus
    l2 * 0.5 * (s_i^2 + s_j^2)."""
    l2: float = 0.001
    """ranking only: OpenAssistant's score_l2_reg."""
    pooling: str = "last"
    """How per-token head outputs become a reply's score: last (the last real token: TRL's
    sequence classifier, OpenAssistant) or mean (over every position but the last, padding
    included: ColossalChat as of April 2023)."""

    def __post_init__(self) -> None:
        _choice("reward.loss", self.loss, ("pairwise", "ranking"))
        _choice("reward.pooling", self.pooling, ("last", "mean"))
        _positive("reward.l2", self.l2, allow_zero=True)


SETTINGS = Settings("reward", RewardSettings)
"""Its section of the job config (`reward:`), read as SETTINGS.of(cfg)."""


def work(cfg: JobConfig, shape, dev, mean_len: float) -> ObjectiveWork:
    """Every reply of a group through the model: one training pass per reply (a step of G
    groups is planned as G single replies, so x REPLIES_PER_GROUP)."""
    return ObjectiveWork(train_passes=REPLIES_PER_GROUP, tokens=REPLIES_PER_GROUP)


SPEC = ObjectiveSpec(
    name="reward",
    data_kinds=("preference",),
    recipe="orchestrator.rl.recipes:RewardObjective",
    summary="a reward model on ranked replies",
    work=work,
    settings=SETTINGS,
    examples_per_item=REPLIES_PER_GROUP,
    sequences_per_item=REPLIES_PER_GROUP,
    from_trained=True,
    check=whole_model_stage,
)
