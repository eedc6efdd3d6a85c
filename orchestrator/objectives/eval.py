"""train.objective=eval: evaluate a trained model, training nothing (docs/evaluation.md).

A pipeline's `eval` stage (or `make eval`) reads the export of an earlier stage
(`model.pretrained`, verified as every stage input is), and reports:
- the held-out loss over the job's own held-out split (`eval.loss`);
- answers to a question set in MT-bench's format (`eval.questions`), generated on the workers
  with the recipe's own template and stop text and FastChat's per-category temperatures;
- the judge's grades of those answers, asked by the launcher after the workers are done (the
  judge's API key stays on the launcher's machine), as `eval/*` metrics of the stage's MLflow
  run; the judge's tokens are a line of the bill.

The recipe is orchestrator/evaluation/objective.py; the judge client, the question sets and the
local rubric judge are in orchestrator/evaluation/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError
from orchestrator.fields import positive as _positive
from orchestrator.objectives.spec import ObjectiveSpec, ObjectiveWork, Settings

if TYPE_CHECKING:
    from orchestrator.config.schema import JobConfig

LOCAL_JUDGE = "local"
"""eval.judge.url=local: the launcher starts the rubric judge on 127.0.0.1 (local scale,
tests): its scores check the plumbing, not quality."""


@dataclass
class JudgeSettings:
    """The judge: any OpenAI-compatible chat-completions endpoint (eval.judge)."""

    url: str = LOCAL_JUDGE
    """Its base URL (https://api.openai.com/v1, a vLLM or TGI server's /v1), or `local`."""
    model: str = "local-rubric"
    """The judge model's name; every score is shown with it (scores compare only under the
    same judge)."""
    api_key_env: str | None = None
    """The name of the environment variable holding its API key, on the launcher's machine
    (never the key: it is not logged, stored or sent to the workers)."""
    usd_per_1m_input_tokens: float = 0.0
    usd_per_1m_output_tokens: float = 0.0
    """Its prices (the bill's judge line; the estimate assumes `tokens_per_call`)."""
    price_source: str = "local rubric server: free"
    prompt_tokens_per_call: int = 900
    completion_tokens_per_call: int = 250
    """Tokens of one judgment, for the estimate before any call."""
    max_concurrency: int = 4
    requests_per_s: float = 2.0
    max_retries: int = 4
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("eval.judge.url is empty: give a base URL or `local`")
        for key in ("usd_per_1m_input_tokens", "usd_per_1m_output_tokens", "requests_per_s"):
            _positive(f"eval.judge.{key}", getattr(self, key), allow_zero=True)
        for key in ("max_concurrency", "timeout_s"):
            _positive(f"eval.judge.{key}", getattr(self, key))
        _positive("eval.judge.max_retries", self.max_retries, allow_zero=True)


@dataclass
class EvalSettings:
    """train.objective=eval (docs/evaluation.md)."""

    questions: str = "sample"
    """sample: the local set in MT-bench's format (data/eval/questions_sample.jsonl); mt_bench:
    FastChat's 80 questions, downloaded from a pinned commit and checked; or a JSON-lines file."""
    max_new_tokens: int = 1024
    """Per answer (FastChat's default)."""
    loss: bool = True
    """Also report the held-out loss over the job's held-out split."""
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    expected_questions: int = 80
    """For the estimate before the set is read: MT-bench has 80."""

    def __post_init__(self) -> None:
        _positive("eval.max_new_tokens", self.max_new_tokens)
        _positive("eval.expected_questions", self.expected_questions)


SETTINGS = Settings("eval", EvalSettings)
"""Its section of the job config (`eval:`), read as SETTINGS.of(cfg)."""

TURNS = 2


def work(cfg: JobConfig, shape, dev, mean_len: float) -> ObjectiveWork:
    """The whole evaluation is priced as one step (the estimator's total_steps is 1 for an
    objective that trains nothing): each worker decodes its share of the questions' two
    turns, one batch per turn, `max_new_tokens` decode steps each."""
    e = SETTINGS.of(cfg)
    per_worker = -(-e.expected_questions // max(1, cfg.hardware.num_workers))
    return ObjectiveWork(
        train_passes=0.0,
        tokens=0.0,
        decode_tokens=TURNS * e.max_new_tokens,
        decode_batch=per_worker,
        decode_context=int(mean_len) + e.max_new_tokens,
    )


def judge_usd(cfg: JobConfig, calls: int | None = None, tokens: tuple[int, int] | None = None):
    """The judge's price for `tokens` (prompt, completion), or for the expected calls."""
    j = SETTINGS.of(cfg).judge
    if tokens is None:
        n = calls if calls is not None else SETTINGS.of(cfg).expected_questions * TURNS
        tokens = (n * j.prompt_tokens_per_call, n * j.completion_tokens_per_call)
    return (tokens[0] * j.usd_per_1m_input_tokens + tokens[1] * j.usd_per_1m_output_tokens) / 1e6


def check(cfg: JobConfig) -> None:
    if cfg.train.method != "full":
        raise ConfigError(
            f"train.objective=eval trains nothing: train.method must be full (got "
            f"{cfg.train.method!r}); an adapter export is merged into its base when loaded"
        )
    if cfg.train.strategy != "ddp":
        raise ConfigError(
            f"train.objective=eval generates on every worker independently: train.strategy must "
            f"be ddp (got {cfg.train.strategy!r}; a sharded model's forwards are collective)"
        )
    j = SETTINGS.of(cfg).judge
    if j.url != LOCAL_JUDGE and not j.url.startswith(("http://", "https://")):
        raise ConfigError(f"eval.judge.url={j.url!r}: use an http(s) base URL or `local`")


SPEC = ObjectiveSpec(
    name="eval",
    data_kinds=("sft",),
    recipe="orchestrator.evaluation.objective:EvalObjective",
    summary="evaluate an export: held-out loss, answers to a question set, a judge's grades",
    work=work,
    settings=SETTINGS,
    from_trained=True,
    extra_usd=lambda cfg: {"judge_api": judge_usd(cfg)},
    trains=False,
    launcher="orchestrator.evaluation.stage",
    check=check,
)
