"""train.objective=ppo: RL from a reward model (orchestrator/rl/recipes.py, rl/ppo.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError
from orchestrator.fields import choice as _choice
from orchestrator.fields import positive as _positive
from orchestrator.objectives.common import (
    dtype_bytes,
    trained_state_bytes,
    whole_model_stage,
)
from orchestrator.objectives.reward import REPLIES_PER_GROUP
from orchestrator.objectives.spec import ObjectiveSpec, ObjectiveWork, Settings

if TYPE_CHECKING:
    from orchestrator.config.schema import JobConfig


@dataclass
class PpoSettings:
    """train.objective=ppo: one iteration (a step) = generate replies to train.global_batch_size
    prompts, score them, then `epochs` passes of clipped PPO updates in mini-batches of
    train.micro_batch_size per worker. The switches cover both originals (docs/rl.md)."""

    reward: str = "reward_model"
    """reward_model: a trained reward model scores each reply; countdown, math, format: a
    verifiable reward (orchestrator/rl/rewards.py) checks it against the prompt's answer
    (data.kind=prompts), as TinyZero's PPO did."""
    format_score: float = 0.1
    """reward=countdown: the reward of a well-formed but wrong answer."""
    reward_model: str | None = None
    """The reward model's folder or durable URL (a pipeline sets it from its reward stage)."""
    reward_pooling: str = "last"
    """As reward.pooling of the stage that trained it."""
    reward_baseline: float = 0.0
    """Subtracted from every score (StackLLaMA's --reward_baseline); no normalisation."""
    epochs: int = 4
    """PPO epochs over each rollout batch."""
    kl: str = "adaptive"
    """adaptive (Ziegler et al.: kl_coef moves toward kl_target) or fixed."""
    kl_coef: float = 0.2
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    kl_estimator: str = "k1"
    """k1: log p - log ref (StackLLaMA); k3: (e^d - 1) - d (ColossalChat)."""
    kl_placement: str = "token"
    """token: -kl_coef * KL at every reply token, score added at the last (StackLLaMA);
    sequence: one reward score - kl_coef * mean KL over the reply (ColossalChat)."""
    advantage: str = "gae"
    """gae (gamma, lam; whitened) or reward_minus_value (one scalar per reply, ColossalChat)."""
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    value_model: str = "head"
    """head: a linear value head on the policy's last hidden state (StackLLaMA, TRL's
    ValueHead); critic: a separate network initialised from the reward model (ColossalChat),
    or from the starting policy with a verifiable reward (TinyZero's veRL critic)."""
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    critic_lr_scale: float = 1.0
    """The value model's learning rate as a multiple of optim.lr."""
    ptx_coef: float = 0.0
    """ColossalChat's pretraining mix: actor loss = ptx_coef * ptx + (1 - ptx_coef) * policy,
    ptx = next-token loss on the best-ranked replies of the stage's data."""
    target_kl: float | None = None
    """Stop an iteration's PPO epochs early once the policy's KL from the rollout policy exceeds
    1.5 x target_kl (TRL's early_stopping)."""
    max_new_tokens: int = 32
    min_new_tokens: int | None = None
    """When set, each iteration's reply length is drawn uniformly in [min, max] (StackLLaMA's
    LengthSampler), seeded by the step."""
    stop_at_eos: bool = True
    """False: every reply is exactly the drawn length (StackLLaMA generated with eos_token_id
    100000, a token that does not exist); True: a reply ends at EOS (ColossalChat)."""
    max_prompt_tokens: int = 96
    """Prompts are cut to their last this many tokens."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        _choice("ppo.reward", self.reward, ("reward_model", "countdown", "math", "format"))
        _positive("ppo.format_score", self.format_score, allow_zero=True)
        _choice("ppo.reward_pooling", self.reward_pooling, ("last", "mean"))
        _choice("ppo.kl", self.kl, ("adaptive", "fixed"))
        _choice("ppo.kl_estimator", self.kl_estimator, ("k1", "k3"))
        _choice("ppo.kl_placement", self.kl_placement, ("token", "sequence"))
        _choice("ppo.advantage", self.advantage, ("gae", "reward_minus_value"))
        _choice("ppo.value_model", self.value_model, ("head", "critic"))
        for key in ("epochs", "max_new_tokens", "max_prompt_tokens", "min_new_tokens",
                    "kl_target", "kl_horizon", "temperature", "cliprange", "cliprange_value",
                    "critic_lr_scale", "target_kl"):  # fmt: skip
            _positive(f"ppo.{key}", getattr(self, key))
        for key in ("kl_coef", "vf_coef", "top_k"):
            _positive(f"ppo.{key}", getattr(self, key), allow_zero=True)
        if not 0.0 <= self.ptx_coef < 1.0:
            raise ConfigError(f"ppo.ptx_coef={self.ptx_coef} must be in [0, 1)")
        if not 0.0 < self.top_p <= 1.0 or not 0.0 <= self.lam <= 1.0 or not 0 < self.gamma <= 1:
            raise ConfigError("ppo.top_p must be in (0, 1], ppo.lam in [0, 1], ppo.gamma in (0, 1]")
        if self.min_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"ppo.min_new_tokens={self.min_new_tokens} exceeds ppo.max_new_tokens="
                f"{self.max_new_tokens}"
            )


SETTINGS = Settings("ppo", PpoSettings)
"""Its section of the job config (`ppo:`), read as SETTINGS.of(cfg)."""


def mean_reply_tokens(max_new: int, min_new: int | None, stop_at_eos: bool) -> float:
    """The mean sampled reply length: uniform in [min, max] when drawn; replies that stop at
    EOS end, on average, halfway (assumed)."""
    reply = max_new if min_new is None else (min_new + max_new) / 2
    return reply / 2.0 if stop_at_eos else float(reply)


def work(cfg: JobConfig, shape, dev, mean_len: float) -> ObjectiveWork:
    """Per iteration: generation of the replies (decode steps, batch = prompts per worker),
    scoring (forwards of the policy + value, the reference and the reward model: 3 x 1/3 pass,
    plus the critic's if any), then `ppo.epochs` training passes (x 2 with a separate critic,
    + a ptx pass each epoch). Sequences are prompt + reply long: the planned pass (over
    prompts) scales by (prompt + reply) / prompt."""
    p = SETTINGS.of(cfg)
    reply = mean_reply_tokens(p.max_new_tokens, p.min_new_tokens, p.stop_at_eos)
    prompt = max(1.0, min(mean_len, float(p.max_prompt_tokens)))
    grow = (prompt + reply) / prompt
    critic = 2.0 if p.value_model == "critic" else 1.0
    models = 2.0 + (p.reward == "reward_model") + (p.value_model == "critic")
    forwards = models / 3.0  # policy + value, reference, reward model, critic
    passes = grow * (forwards + p.epochs * critic) + (p.epochs if p.ptx_coef > 0 else 0.0)
    per_worker = max(1, cfg.train.global_batch_size // max(1, dev.world))
    return ObjectiveWork(
        train_passes=passes,
        tokens=grow,
        decode_tokens=reply,
        decode_batch=per_worker,
        decode_context=int(prompt + reply / 2),
    )


def extra_models_bytes(cfg: JobConfig, n_params: int) -> float:
    """A full fine-tune's frozen reference copy, the frozen reward model, and a critic trained
    in full."""
    out = float(dtype_bytes(cfg) * n_params) if cfg.train.method == "full" else 0.0
    if SETTINGS.of(cfg).reward == "reward_model":
        out += dtype_bytes(cfg) * n_params  # the reward model, frozen
    if SETTINGS.of(cfg).value_model == "critic":
        out += trained_state_bytes(cfg, n_params)
    return out


def check(cfg: JobConfig) -> None:
    whole_model_stage(cfg)
    p = SETTINGS.of(cfg)
    if p.reward != "reward_model" and cfg.data.kind != "prompts":
        raise ConfigError(
            f"ppo.reward={p.reward} checks replies against answers: it reads data.kind=prompts "
            f"(got {cfg.data.kind!r}); preference data needs ppo.reward=reward_model"
        )
    if p.ptx_coef > 0 and cfg.data.kind == "prompts":
        raise ConfigError(
            "ppo.ptx_coef > 0 imitates the data's best replies; prompt data has none: set "
            "ppo.ptx_coef=0 or use data.kind=preference"
        )
    if SETTINGS.of(cfg).advantage == "gae" and SETTINGS.of(cfg).value_model != "head":
        raise ConfigError(
            "ppo.advantage=gae needs per-token values: ppo.value_model=head (a critic gives "
            "one value per reply: use ppo.advantage=reward_minus_value)"
        )


SPEC = ObjectiveSpec(
    name="ppo",
    data_kinds=("preference", "prompts"),
    recipe="orchestrator.rl.recipes:PpoObjective",
    summary="PPO from a reward model (value head or critic)",
    work=work,
    settings=SETTINGS,
    input_keys=("ppo.reward_model",),
    examples_per_item=REPLIES_PER_GROUP,
    from_trained=True,
    check=check,
    extra_models_bytes=extra_models_bytes,
)
