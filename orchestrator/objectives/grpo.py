"""train.objective=grpo: group relative policy optimisation (Shao et al. 2024, DeepSeekMath),
with the Dr. GRPO (Liu et al. 2025) and DAPO (Yu et al. 2025) switches. The recipe is
orchestrator/rl/grpo.py; the maths, pure, is orchestrator/rl/grpo_loss.py.

One step: `train.global_batch_size` prompts, each sampled `group_size` times on the rank that
holds it; every completion scored by a verifiable reward (orchestrator/rl/rewards.py) or a
reward model; advantages are the reward minus its group's mean (divided by the group's std
unless `scale_rewards: false`); then `iterations` optimizer steps over the step's completions
with the clipped ratio, plus `beta` x the k3 KL to the frozen reference. No critic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError
from orchestrator.fields import choice as _choice
from orchestrator.fields import positive as _positive
from orchestrator.objectives.common import dtype_bytes, whole_model_stage
from orchestrator.objectives.ppo import mean_reply_tokens
from orchestrator.objectives.spec import ObjectiveSpec, ObjectiveWork, Settings

if TYPE_CHECKING:
    from orchestrator.config.schema import JobConfig

REWARDS = ("countdown", "math", "format", "reward_model")
"""countdown: TinyZero's equation reward (1 if the <answer> equation uses the numbers once each
and equals the target, `format_score` if an answer is given but wrong, else 0); math: exact
match of the <answer> (or the last number) with the reference answer; format: 1 for
`... </think> <answer> ... </answer>`; reward_model: a trained reward model's score."""
LOSSES = ("grpo", "dapo", "dr_grpo")
ENGINES = ("hf", "vllm")


@dataclass
class GrpoSettings:
    """train.objective=grpo (docs/rl.md#grpo). `train.micro_batch_size` counts completions per
    forward in the updates; `train.global_batch_size` counts prompts."""

    group_size: int = 8
    """G: completions sampled per prompt (all on the prompt's rank: its advantages compare them)."""
    reward: str = "countdown"
    format_score: float = 0.1
    """countdown: the reward of a well-formed but wrong answer (TinyZero's format_score)."""
    reward_model: str | None = None
    """reward=reward_model: its folder or durable URL (a pipeline sets it from a reward stage)."""
    reward_pooling: str = "last"
    loss: str = "grpo"
    """grpo: each completion's token mean, then the mean over completions (the paper); dapo:
    the mean over every token of the step (token-level); dr_grpo: the sum over tokens divided
    by completions x max_new_tokens (no length bias)."""
    scale_rewards: bool = True
    """Divide advantages by the group's std (false: Dr. GRPO's unbiased advantages)."""
    beta: float = 0.04
    """The k3 KL to the frozen reference, per token; 0: no reference model is held."""
    epsilon: float = 0.2
    """Clip range below 1 (and above, unless epsilon_high)."""
    epsilon_high: float | None = None
    """DAPO's clip-higher: the upper clip 1 + epsilon_high (e.g. 0.28); None = epsilon."""
    iterations: int = 1
    """Optimizer steps per generated batch (mu); > 1 makes the ratio and its clip matter."""
    max_new_tokens: int = 256
    max_prompt_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_at_eos: bool = True
    engine: str = "hf"
    """hf: transformers `generate` with the KV cache (everywhere); vllm: vLLM on GPUs (the
    optional extra; see docs/rl.md#rollout-engines)."""
    vllm_memory_fraction: float = 0.2
    """engine=vllm: the share of each GPU's memory vLLM takes for its weights and KV cache
    (its gpu_memory_utilization), next to training's; the fit check counts it."""

    def __post_init__(self) -> None:
        _choice("grpo.reward", self.reward, REWARDS)
        _choice("grpo.reward_pooling", self.reward_pooling, ("last", "mean"))
        _choice("grpo.loss", self.loss, LOSSES)
        _choice("grpo.engine", self.engine, ENGINES)
        for key in ("group_size", "iterations", "max_new_tokens", "max_prompt_tokens",
                    "temperature", "epsilon", "epsilon_high"):  # fmt: skip
            _positive(f"grpo.{key}", getattr(self, key))
        for key in ("beta", "top_k", "format_score"):
            _positive(f"grpo.{key}", getattr(self, key), allow_zero=True)
        if self.group_size < 2:
            raise ConfigError(
                f"grpo.group_size={self.group_size}: advantages compare completions of one "
                "prompt, so at least 2"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"grpo.top_p={self.top_p} must be in (0, 1]")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ConfigError(
                f"grpo.epsilon_high={self.epsilon_high} is below grpo.epsilon={self.epsilon}: "
                "clip-higher widens the upper range"
            )


SETTINGS = Settings("grpo", GrpoSettings)
"""Its section of the job config (`grpo:`), read as SETTINGS.of(cfg)."""


def _reply(cfg: JobConfig) -> float:
    g = SETTINGS.of(cfg)
    return mean_reply_tokens(g.max_new_tokens, None, g.stop_at_eos)


def work(cfg: JobConfig, shape, dev, mean_len: float) -> ObjectiveWork:
    """Per step: decode G completions per prompt (batch = prompts per worker x G), then
    forwards of the reference (beta > 0), of the rollout policy (iterations > 1: the old
    log-probs) and of a reward model (1/3 pass each), then `iterations` training passes; all
    over G sequences per planned prompt, prompt + reply long."""
    g = SETTINGS.of(cfg)
    reply = _reply(cfg)
    prompt = max(1.0, min(mean_len, float(g.max_prompt_tokens)))
    per_seq = (prompt + reply) / prompt
    forwards = sum((g.beta > 0, g.iterations > 1, g.reward == "reward_model")) / 3.0
    passes = g.group_size * per_seq * (forwards + g.iterations)
    per_worker = max(1, cfg.train.global_batch_size // max(1, dev.world)) * g.group_size
    return ObjectiveWork(
        train_passes=passes,
        tokens=g.group_size * per_seq,
        decode_tokens=reply,
        decode_batch=per_worker,
        decode_context=int(prompt + reply / 2),
    )


def extra_models_bytes(cfg: JobConfig, n_params: int) -> float:
    """The frozen reference of a full fine-tune with beta > 0 (LoRA disables its adapter), a
    reward model when the reward is one, and vLLM's share of the GPU with engine=vllm."""
    g = SETTINGS.of(cfg)
    out = 0.0
    gpu = cfg.cost.gpus.get(cfg.hardware.accelerator)
    if g.engine == "vllm" and gpu is not None and gpu.memory_gib:
        out += g.vllm_memory_fraction * gpu.memory_gib * 2**30
    if cfg.train.method == "full" and g.beta > 0:
        out += dtype_bytes(cfg) * n_params
    if g.reward == "reward_model":
        out += dtype_bytes(cfg) * n_params
    return out


def micro_tokens(cfg: JobConfig) -> int:
    """The most tokens of an update micro-batch: completions of prompt + reply."""
    g = SETTINGS.of(cfg)
    return cfg.train.micro_batch_size * (g.max_prompt_tokens + g.max_new_tokens)


def check(cfg: JobConfig) -> None:
    whole_model_stage(cfg)
    g = SETTINGS.of(cfg)
    if (g.reward == "reward_model") != (g.reward_model is not None):
        raise ConfigError(
            "grpo.reward=reward_model needs grpo.reward_model (a folder, a durable URL, or a "
            "pipeline input), and grpo.reward_model is read only with grpo.reward=reward_model; "
            f"got reward={g.reward!r}, reward_model={g.reward_model!r}"
        )
    if g.engine == "vllm" and cfg.hardware.accelerator == "cpu":
        raise ConfigError("grpo.engine=vllm needs CUDA GPUs; on CPU workers use grpo.engine=hf")
    if g.max_prompt_tokens + g.max_new_tokens > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"grpo.max_prompt_tokens + grpo.max_new_tokens = "
            f"{g.max_prompt_tokens + g.max_new_tokens} exceeds model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}"
        )


SPEC = ObjectiveSpec(
    name="grpo",
    data_kinds=("prompts",),
    recipe="orchestrator.rl.grpo:GrpoObjective",
    summary="GRPO (Dr. GRPO, DAPO switches) with verifiable rewards or a reward model",
    work=work,
    settings=SETTINGS,
    input_keys=("grpo.reward_model",),
    micro_counts_items=False,
    from_trained=True,
    check=check,
    extra_models_bytes=extra_models_bytes,
    micro_tokens=micro_tokens,
)
