"""The training objectives, one module each (see spec.py). Registering one is one line here."""

from __future__ import annotations

from orchestrator.errors import ConfigError
from orchestrator.objectives import dpo, eval, grpo, ppo, reward, sft
from orchestrator.objectives.spec import DATA_KINDS, ObjectiveSpec, ObjectiveWork, config_value

OBJECTIVES: dict[str, ObjectiveSpec] = {
    m.SPEC.name: m.SPEC for m in (sft, reward, dpo, ppo, grpo, eval)
}


def spec(name: str) -> ObjectiveSpec:
    """The spec of objective `name`, or a ConfigError naming the registered ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(
            f"train.objective={name!r} is not registered; choose one of {list(OBJECTIVES)} "
            "(orchestrator/objectives/)"
        ) from None


def input_keys() -> tuple[str, ...]:
    """Every config key a pipeline stage's `input` may set: model.pretrained and each
    objective's own model inputs."""
    return ("model.pretrained", *(k for s in OBJECTIVES.values() for k in s.input_keys))


__all__ = [
    "DATA_KINDS", "OBJECTIVES", "ObjectiveSpec", "ObjectiveWork", "config_value", "input_keys",
    "spec",
]  # fmt: skip
